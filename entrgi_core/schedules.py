"""Which masked positions are committed at each denoising step.

A **schedule** says how many (per row), a **confidence rule** (``DenoiseConfig.alg``) says which:

- ``DreamSchedule`` (Dream's sampler; the default for Dream and masked LMs): at local step s of a
  block of S steps, commit ``int(n_masked * (1 - s'/s))`` of the block's still-masked positions,
  with ``(s, s')`` consecutive points of ``linspace(1, eps, S + 1)``; everything at the last step.
- ``LLaDASchedule`` (LLaDA's ``generate``; the default for ``LLaDALM``): the block's masked count
  at its first step, split evenly over its S steps, the remainder to the first steps
  (``n // S``, plus one for the first ``n % S`` steps).

These two run every row in lockstep: block b gets exactly S = T / blocks steps. The **parallel**
schedules commit as many of the current block's masked positions as their rule accepts, at
least one, so that ``steps`` is a maximum (S per block, the last of which commits the rest of the
block) and the loop ends when nothing is masked; each row moves to its next block as soon as its
current one is full. They rank the block's positions by a statistic read from the logits the
tokens are sampled from (the guided ones when guided), at the sampler's temperature, top-p and
top-k, and accept the longest prefix of the ranking whose members pass:

- ``ThresholdSchedule`` (Fast-dLLM's ``get_transfer_index``): confidence c (the probability of
  the sampled token), ranked high to low; accept while ``c >= threshold``;
- ``FactorSchedule`` (Fast-dLLM's factor rule): the same ranking; accept the n-th while
  ``(n + 1) (1 - c_(n)) < factor``;
- ``EntropyBoundSchedule`` (the EB sampler, arXiv 2505.24857): entropy H, ranked low to high;
  accept while ``sum(H) - max(H) <= gamma`` over the accepted ones.

With ``deprioritize_eos`` a sampled EOS ranks after every other position, so EOS positions commit
only together with, or after, the rest of their row's block (without it the rules are exactly
the published ones). The parallel schedules own their statistic: ``alg`` must be one of Dream's
rules that read the sampling distribution (``entropy``, ``maskgit_plus``), which then changes
nothing, and ``alg_temp`` must be 0.

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
    parallel = False       # True: commits what its rule accepts (``accept``), steps are a maximum
    statistic = None       # a parallel schedule's: "confidence" or "entropy"

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


class ParallelSchedule(CommitSchedule):
    """Commits the longest accepted prefix of the current block's ranking (at least one position)."""

    parallel = True
    statistic = "confidence"   # "confidence" (ranked high to low) or "entropy" (low to high)

    def accept(self, ranked: Tensor) -> Tensor:
        """(R, L) bool: whether the n-th ranked position (column n - 1) passes, given the ranked
        statistic (R, L) (positions outside the block hold 0)."""
        raise NotImplementedError


class ThresholdSchedule(ParallelSchedule):
    name = "threshold"

    def __init__(self, threshold: float = 0.9):
        self.threshold = float(threshold)

    def accept(self, ranked: Tensor) -> Tensor:
        return ranked >= self.threshold

    def __repr__(self) -> str:
        return f"ThresholdSchedule(threshold={self.threshold})"


class FactorSchedule(ParallelSchedule):
    name = "factor"

    def __init__(self, factor: float = 1.0):
        self.factor = float(factor)

    def accept(self, ranked: Tensor) -> Tensor:
        n = torch.arange(1, ranked.shape[1] + 1, device=ranked.device, dtype=ranked.dtype)
        return (n + 1) * (1 - ranked) < self.factor

    def __repr__(self) -> str:
        return f"FactorSchedule(factor={self.factor})"


class EntropyBoundSchedule(ParallelSchedule):
    name = "entropy_bound"
    statistic = "entropy"

    def __init__(self, entropy_bound: float = 0.1):
        self.entropy_bound = float(entropy_bound)

    def accept(self, ranked: Tensor) -> Tensor:
        return ranked.cumsum(1) - ranked.cummax(1).values <= self.entropy_bound

    def __repr__(self) -> str:
        return f"EntropyBoundSchedule(entropy_bound={self.entropy_bound})"


SCHEDULES = {"dream": DreamSchedule, "llada": LLaDASchedule, "threshold": ThresholdSchedule,
             "factor": FactorSchedule, "entropy_bound": EntropyBoundSchedule}
PARALLEL_ALGS = ("entropy", "maskgit_plus")   # the rules a parallel schedule accepts (they read its distribution)


def make_schedule(name: str, config=None) -> CommitSchedule:
    """The schedule ``name``, with its parameter from ``config`` (a DenoiseConfig) when it has one."""
    if name not in SCHEDULES:
        raise InputError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    cls = SCHEDULES[name]
    if config is not None and issubclass(cls, ParallelSchedule):
        return cls(getattr(config, name))
    return cls()


def check_rule(alg: str, schedule: CommitSchedule, alg_temp: float = 0.0) -> None:
    if alg == "origin" and not schedule.has_shares:
        raise InputError(f"alg='origin' commits each position with Dream's probability 1 - s/t; it needs "
                         f"schedule='dream', not {schedule.name!r} (use alg='random' for random order)")
    if schedule.parallel and (alg not in PARALLEL_ALGS or alg_temp > 0):
        raise InputError(f"schedule={schedule.name!r} ranks positions by its own statistic ("
                         f"{'entropy' if schedule.statistic == 'entropy' else 'the probability of the sampled token'}"
                         f"), so it needs alg in {PARALLEL_ALGS} and alg_temp=0, not alg={alg!r}, alg_temp={alg_temp}")


def parallel_commit(schedule: ParallelSchedule, *, stat: Tensor, x0: Tensor, rows: Tensor, cols: Tensor,
                    eligible: Tensor, last: Tensor, stop_ids: Tensor, deprioritize_eos: bool) -> Tensor:
    """(R, L) positions a parallel schedule commits: ``stat`` (N,) is its statistic at the N masked
    positions ``(rows, cols)`` (sampled tokens ``x0``), ``eligible`` (R, L) the current block's
    masked positions, ``last`` (R,) the rows at their block's last allowed step (all commit)."""
    key = torch.full(eligible.shape, float("-inf"), device=eligible.device)
    value = stat.float() if schedule.statistic == "confidence" else -stat.float()
    if deprioritize_eos:
        value = torch.where(torch.isin(x0, stop_ids), value - EOS_PENALTY, value)
    key[rows, cols] = value
    key = torch.where(eligible, key, torch.full_like(key, float("-inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices           # (R, L) ranking
    grid = torch.zeros(eligible.shape, device=eligible.device)
    grid[rows, cols] = stat.float()
    inside = eligible.gather(1, order)                                            # (R, L)
    ranked = torch.where(inside, grid.gather(1, order), torch.zeros_like(grid))
    ok = schedule.accept(ranked) & inside
    ok[:, 0] = True                                                               # at least one
    take = ok.cummin(1).values | last[:, None]                                   # the accepted prefix
    return torch.zeros_like(eligible).scatter(1, order, take) & eligible


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
