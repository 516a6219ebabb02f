"""Blocks: the per-row block state of one generation (LLaDA-style semi-autoregressive blocks).

The L response positions of each of R rows fall into ``count`` blocks of ``length`` positions; a
row commits only inside its current block. A lockstep schedule keeps every row in block
``index // steps`` (``steps`` per block); otherwise a row moves on as soon as its block is full
and its block's ``steps`` are a maximum. The sampler asks ``enter`` once per step, counts the step
with ``taken``; the block KV cache reads ``block`` and ``local``; particle resampling reorders
the rows with ``reorder``; ``done`` tells a particle strategy how many blocks each row has filled.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Blocks:
    """Block state of R rows (see the module docstring)."""

    def __init__(self, rows: int, length: int, count: int, steps: int, device=None):
        self.count = count                 # blocks per row
        self.length = length // count      # positions per block
        self.steps = steps                 # steps per block (a maximum unless lockstep)
        zeros = torch.zeros(rows, dtype=torch.long, device=device)
        self.block = zeros - 1             # (R,) each row's current block (-1: none yet)
        self.local = zeros.clone()         # (R,) steps each row has taken in its current block
        self.at_block_start = zeros.clone()   # (R,) masked positions of the current block at its first step

    def done(self, masked: Tensor) -> Tensor:
        """(R,) leading blocks each row has fully committed, given its masked positions (R, L)."""
        left = masked.view(masked.shape[0], self.count, self.length).any(2)          # (R, blocks)
        return torch.where(left.any(1), left.int().argmax(1), torch.full_like(self.block, self.count))

    def enter(self, masked: Tensor, index: int, lockstep: bool) -> tuple[Tensor, Tensor]:
        """Step ``index``: (R, L) the masked positions of each row's current block, and (R,) the
        rows at their block's last allowed step."""
        block = torch.full_like(self.block, index // self.steps) if lockstep else self.done(masked)
        moved = block != self.block
        self.local = torch.where(moved, torch.zeros_like(self.local), self.local)
        self.block = block
        col = torch.arange(masked.shape[1], device=masked.device)
        eligible = masked & (col[None, :] // self.length == block[:, None])
        self.at_block_start = torch.where(moved, eligible.sum(1), self.at_block_start)
        return eligible, self.local >= self.steps - 1

    def taken(self, masked: Tensor) -> None:
        """A step was taken by the rows that had masked positions (R, L) before it."""
        self.local += masked.any(1)

    def reorder(self, ancestors: Tensor) -> None:
        """Rows take their ancestors' block state (particle resampling), ``ancestors`` (R,)."""
        self.block, self.local, self.at_block_start = (t[ancestors] for t in (self.block, self.local,
                                                                                self.at_block_start))
