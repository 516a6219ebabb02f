"""Which masked positions are committed at each denoising step.

A **schedule** says how many (per row), a **confidence rule** (``DenoiseConfig.alg``) says which:

- ``DreamSchedule`` (Dream's sampler; the default for Dream and masked LMs): at local step s of a
  block of S steps, commit ``int(n_masked * (1 - s'/s))`` of the block's still-masked positions,
  with ``(s, s')`` consecutive points of ``linspace(1, eps, S + 1)``; everything at the last step.
- ``LLaDASchedule`` (LLaDA's ``generate``; the default for ``LLaDALM``): the block's masked count
  at its first step, split evenly over its S steps, the remainder to the first steps
  (``n // S``, plus one for the first ``n % S`` steps).

Confidence rules, named as the reference samplers name them: Dream's ``maskgit_plus`` (probability
of the sampled token), ``topk_margin``, ``entropy`` (``sum p log p``) and ``origin`` (each masked
position commits with probability ``1 - s'/s``: Dream's schedule only); LLaDA's ``low_confidence``
(untempered probability of the sampled token) and ``random`` (uniform scores).
"""
from __future__ import annotations

import torch
from torch import Tensor
from entrgi_core.errors import InputError

EOS_PENALTY = 1e4   # a sampled EOS ranks below every other masked position, above committed ones


class CommitSchedule:
    """How many masked positions each row commits at a local step of its block."""

    name = "schedule"
    has_shares = False     # whether share() is defined (the ``origin`` rule needs it)

    def counts(self, masked: Tensor, at_block_start: Tensor, local: int, steps: int) -> Tensor:
        """(R,) int64 commit counts from the block's masked count now (R,) and at its first step
        (R,), at local step ``local`` of ``steps`` steps per block."""
        raise NotImplementedError

    def share(self, local: int, steps: int) -> float:
        """The share of masked positions committed at this step (for the ``origin`` rule)."""
        raise NotImplementedError(f"the {self.name!r} schedule has counts, not shares")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DreamSchedule(CommitSchedule):
    name = "dream"
    has_shares = True

    def __init__(self, eps: float = 1e-3):
        if not 0 < eps < 1:
            raise InputError(f"DreamSchedule: eps must lie in (0, 1), got {eps!r}")
        self.eps = float(eps)

    def share(self, local: int, steps: int) -> float:
        if local == steps - 1:
            return 1.0
        ts = torch.linspace(1.0, self.eps, steps + 1, dtype=torch.float64)  # Dream's t, s points
        t, s = ts[local].item(), ts[local + 1].item()
        return 1.0 - s / t

    def counts(self, masked: Tensor, at_block_start: Tensor, local: int, steps: int) -> Tensor:
        return (masked.double() * self.share(local, steps)).long()

    def __repr__(self) -> str:
        return f"DreamSchedule(eps={self.eps})"


class LLaDASchedule(CommitSchedule):
    name = "llada"

    def counts(self, masked: Tensor, at_block_start: Tensor, local: int, steps: int) -> Tensor:
        base, rest = at_block_start // steps, at_block_start % steps
        return base + (local < rest).long()


SCHEDULES = {"dream": DreamSchedule, "llada": LLaDASchedule}


def make_schedule(name: str) -> CommitSchedule:
    if name not in SCHEDULES:
        raise InputError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    return SCHEDULES[name]()


def check_rule(alg: str, schedule: CommitSchedule) -> None:
    if alg == "origin" and not schedule.has_shares:
        raise InputError(f"alg='origin' commits each position with Dream's probability 1 - s/t; it needs "
                         f"schedule='dream', not {schedule.name!r} (use alg='random' for random order)")


def commit_mask(alg: str, schedule: CommitSchedule, *, conf: Tensor | None, x0: Tensor, rows: Tensor, cols: Tensor,
                eligible: Tensor, at_block_start: Tensor, local: int, steps: int, order_u: Tensor,
                stop_ids: Tensor, deprioritize_eos: bool, alg_temp: float) -> Tensor:
    """(R, L) positions to commit this step.

    ``conf`` (N,) are the confidences of the N masked positions ``(rows, cols)`` whose sampled
    tokens are ``x0`` (N,); ``eligible`` (R, L) marks the masked positions of the current block;
    ``order_u`` (R, L) are this step's uniforms for random order (``origin``, ``random``, Gumbel).
    """
    if alg == "origin":                                  # each position commits w.p. share
        share = schedule.share(local, steps)
        return eligible & (order_u < share) if share < 1.0 else eligible
    if alg == "random":
        conf = order_u[rows, cols].float()
    if deprioritize_eos:
        conf = torch.where(torch.isin(x0, stop_ids), conf - EOS_PENALTY, conf)
    score = torch.full(eligible.shape, float("-inf"), device=eligible.device)
    score[rows, cols] = conf.float()
    if alg_temp > 0:                                     # Gumbel-top-k = sampling without replacement
        score = score / alg_temp - torch.log(-torch.log(order_u.float()))
    score = torch.where(eligible, score, torch.full_like(score, float("-inf")))
    n = schedule.counts(eligible.sum(1), at_block_start, local, steps)          # (R,)
    ranked = torch.sort(score, dim=1, descending=True, stable=True).indices       # (R, L)
    col = torch.arange(eligible.shape[1], device=eligible.device)
    chosen = col[None, :] < n[:, None]                                           # first n of each row
    return torch.zeros_like(eligible).scatter(1, ranked, chosen) & eligible
