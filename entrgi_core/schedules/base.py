"""The commit-schedule contract: which masked positions a denoising step commits.

A schedule is an object injected like a strategy (``DenoiseConfig(schedule=Threshold(0.9))``; in
YAML ``class_path`` + ``init_args``). It owns its parameters (constructor arguments, checked
there), its compatibility with the sampler's settings (``check``, called once by ``Plan.check``),
the statistic it ranks positions by (``statistic``) and its commit rule (``commit``). The
per-row block state it reads is ``entrgi_core.schedules.blocks.Blocks``, owned by the sampler.

Two families share the rule's plumbing:

- ``FixedSchedule``: every row takes exactly ``steps / blocks`` steps per block, in lockstep; a
  subclass says how many positions each row commits (``counts``), the confidence rule
  ``DenoiseConfig.alg`` says which; everything left in the block commits at its last step.
- ``ParallelSchedule``: a row commits the longest prefix of its block's ranking that ``accept``
  passes (at least one position), so ``steps`` is a maximum and a row moves to its next block as
  soon as its current one is full.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from entrgi_core import rng
from entrgi_core.errors import InputError
from entrgi_core.schedules.blocks import Blocks
from entrgi_core.settings import Recorded

EOS_PENALTY = 1e4   # a sampled EOS ranks below every other masked position, above committed ones
PARALLEL_ALGS = ("entropy", "maskgit_plus")   # the rules a parallel schedule accepts (they read its distribution)
STATISTICS = ("alg", "probability", "entropy")


@dataclass(frozen=True)
class CommitView:
    """What a schedule sees at one step: R rows, L response positions, N masked positions."""

    config: object          # the sampler's DenoiseConfig (alg, alg_temp, deprioritize_eos)
    stat: Tensor | None     # (N,) the schedule's statistic at each masked position (None: the rule has none)
    sampled: Tensor         # (N,) the token drawn at each masked position
    rows: Tensor            # (N,) row of each masked position
    cols: Tensor            # (N,) column of each masked position
    eligible: Tensor        # (R, L) bool: the masked positions of each row's current block
    last: Tensor            # (R,) bool: rows at their block's last allowed step (they commit all of it)
    blocks: Blocks          # the rows' block state (entered for this step)
    index: int              # denoising steps taken before this one
    keys: Tensor            # (R,) per-row random keys
    stop_ids: Tensor        # (S,) ids that end a response

    @property
    def at_block_start(self) -> Tensor:
        """(R,) masked positions of each row's current block at its first step."""
        return self.blocks.at_block_start

    @property
    def block_steps(self) -> int:
        """Steps per block (the most a block may take)."""
        return self.blocks.steps

    @property
    def local(self) -> int:
        """Steps taken in the current block, in lockstep."""
        return self.index % self.blocks.steps

    @cached_property
    def order_uniforms(self) -> Tensor:
        """(R, L) this step's uniforms for random commit orders (``origin``, ``random``, Gumbel)."""
        col = torch.arange(self.eligible.shape[1], device=self.eligible.device)
        return rng.uniform(rng.derive(self.keys[:, None], rng.ORDER, self.index, col[None, :]))

    def eos_last(self, value: Tensor) -> Tensor:
        """``value`` (N,) with sampled stop tokens ranked last, when the sampler deprioritises EOS."""
        if not self.config.deprioritize_eos:
            return value
        return torch.where(torch.isin(self.sampled, self.stop_ids), value - EOS_PENALTY, value)

    def grid(self, value: Tensor, fill: float = float("-inf")) -> Tensor:
        """(R, L) ``value`` (N,) at the masked positions, ``fill`` elsewhere."""
        out = torch.full(self.eligible.shape, fill, device=self.eligible.device)
        out[self.rows, self.cols] = value.float()
        return out


class CommitSchedule(Recorded):
    """A commit schedule (see the module docstring). Subclasses implement ``commit``."""

    statistic: str = "alg"   # what ``CommitView.stat`` holds: "alg" (DenoiseConfig.alg's confidence),
                             # "probability" (of the sampled token) or "entropy" (of the distribution drawn from)
    lockstep: bool = True    # True: exactly steps / blocks steps per block; False: steps are a maximum

    def check(self, config) -> None:
        """Raise ``InputError`` when this schedule cannot work with ``config`` (a DenoiseConfig)."""

    def commit(self, view: CommitView) -> Tensor:
        """(R, L) bool: the positions to commit at this step (a subset of ``view.eligible``)."""
        raise NotImplementedError


class FixedSchedule(CommitSchedule):
    """Commits ``counts`` positions per row, picked by the confidence rule ``alg`` (with Gumbel
    noise at ``alg_temp``); the block's last step commits the rest."""

    has_shares = False   # whether ``share`` is defined (the ``origin`` rule needs it)

    def counts(self, masked: Tensor, at_block_start: Tensor, local: int, steps: int) -> Tensor:
        """(R,) int64 commit counts from the block's masked count now (R,) and at its first step
        (R,), at local step ``local`` of ``steps`` steps per block."""
        raise NotImplementedError

    def share(self, local: int, steps: int) -> float:
        """The share of masked positions committed at this step (for the ``origin`` rule)."""
        raise NotImplementedError(f"{type(self).__name__} has counts, not shares")

    def check(self, config) -> None:
        if config.alg == "origin" and not self.has_shares:
            raise InputError(f"alg='origin' commits each position with Dream's probability 1 - s/t; it needs "
                             f"Dream's schedule (entrgi_core.schedules.Dream), not {type(self).__name__} "
                             "(use alg='random' for random order)")

    def commit(self, view: CommitView) -> Tensor:
        eligible, cfg = view.eligible, view.config
        if cfg.alg == "origin":                          # each position commits with probability share
            share = self.share(view.local, view.block_steps)
            return eligible & (view.order_uniforms < share) if share < 1.0 else eligible
        conf = view.order_uniforms[view.rows, view.cols] if cfg.alg == "random" else view.stat
        score = view.grid(view.eos_last(conf.float()))
        if cfg.alg_temp > 0:                             # Gumbel-top-k = sampling without replacement
            score = score / cfg.alg_temp - torch.log(-torch.log(view.order_uniforms.float()))
        score = torch.where(eligible, score, torch.full_like(score, float("-inf")))
        masked = eligible.sum(1)
        n = torch.where(view.last, masked, self.counts(masked, view.at_block_start, view.local, view.block_steps))
        ranked = torch.sort(score, dim=1, descending=True, stable=True).indices       # (R, L)
        col = torch.arange(eligible.shape[1], device=eligible.device)
        chosen = col[None, :] < n[:, None]                                           # the first n of each row
        return torch.zeros_like(eligible).scatter(1, ranked, chosen) & eligible


class ParallelSchedule(CommitSchedule):
    """Commits the longest accepted prefix of the current block's ranking (at least one position):
    ``statistic`` "probability" ranks high to low, "entropy" low to high."""

    statistic = "probability"
    lockstep = False

    def accept(self, ranked: Tensor) -> Tensor:
        """(R, L) bool: whether the n-th ranked position (column n - 1) passes, given the ranked
        statistic (R, L) (positions outside the block hold 0)."""
        raise NotImplementedError

    def check(self, config) -> None:
        if config.alg not in PARALLEL_ALGS or config.alg_temp > 0:
            what = "entropy" if self.statistic == "entropy" else "the probability of the sampled token"
            raise InputError(f"{type(self).__name__} ranks positions by its own statistic ({what}), so it needs "
                             f"alg in {PARALLEL_ALGS} and alg_temp=0, not alg={config.alg!r}, "
                             f"alg_temp={config.alg_temp}")

    def commit(self, view: CommitView) -> Tensor:
        eligible, stat = view.eligible, view.stat.float()
        key = view.grid(view.eos_last(stat if self.statistic == "probability" else -stat))
        key = torch.where(eligible, key, torch.full_like(key, float("-inf")))
        order = torch.sort(key, dim=1, descending=True, stable=True).indices           # (R, L) ranking
        inside = eligible.gather(1, order)                                            # (R, L)
        ranked = torch.where(inside, view.grid(stat, 0.0).gather(1, order), torch.zeros_like(key))
        ok = self.accept(ranked) & inside
        ok[:, 0] = True                                                               # at least one
        take = ok.cummin(1).values | view.last[:, None]                               # the accepted prefix
        return torch.zeros_like(eligible).scatter(1, order, take) & eligible
