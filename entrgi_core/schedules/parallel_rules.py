"""Parallel commit schedules: a row commits as many of its current block's masked positions as the
rule accepts (at least one), so ``steps`` is a maximum (S per block, the last of which commits the
rest of the block) and the loop ends when nothing is masked.

They rank the block's positions by a statistic read from the logits the tokens are sampled from
(the guided ones when guided), at the sampler's temperature, top-p and top-k, and accept the
longest prefix of the ranking whose members pass:

- ``Threshold`` (Fast-dLLM's ``get_transfer_index``): confidence c (the probability of the sampled
  token), ranked high to low; accept while ``c >= threshold``;
- ``Factor`` (Fast-dLLM's factor rule): the same ranking; accept the n-th while
  ``(n + 1) (1 - c_(n)) < factor``;
- ``EntropyBound`` (the EB sampler, arXiv 2505.24857): entropy H, ranked low to high; accept while
  ``sum(H) - max(H) <= bound`` over the accepted ones.

With ``deprioritize_eos`` a sampled EOS ranks after every other position, so EOS positions commit
only together with, or after, the rest of their row's block (without it the rules are exactly the
published ones). ``alg`` must be one of Dream's rules that read the sampling distribution
(``entropy``, ``maskgit_plus``), which then changes nothing, and ``alg_temp`` must be 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from entrgi_core import checks
from entrgi_core.schedules.base import ParallelSchedule


class Threshold(ParallelSchedule):
    """Commit every position whose sampled token has probability >= ``threshold`` (Fast-dLLM)."""

    def __init__(self, threshold: float = 0.9):
        self.threshold = checks.real(threshold, who="Threshold", name="threshold", rule="lie in (0, 1]",
                                     ok=lambda v: 0 < v <= 1)

    def accept(self, ranked: Tensor) -> Tensor:
        return ranked >= self.threshold


class Factor(ParallelSchedule):
    """Commit the n-th most confident position while ``(n + 1)(1 - c_(n)) < factor`` (Fast-dLLM)."""

    def __init__(self, factor: float = 1.0):
        self.factor = checks.real(factor, who="Factor", name="factor", rule="be > 0", ok=lambda v: v > 0)

    def accept(self, ranked: Tensor) -> Tensor:
        n = torch.arange(1, ranked.shape[1] + 1, device=ranked.device, dtype=ranked.dtype)
        return (n + 1) * (1 - ranked) < self.factor


class EntropyBound(ParallelSchedule):
    """Commit the lowest-entropy positions while ``sum(H) - max(H) <= bound`` (the EB sampler)."""

    statistic = "entropy"

    def __init__(self, bound: float = 0.1):
        self.bound = checks.real(bound, who="EntropyBound", name="bound", rule="be >= 0", ok=lambda v: v >= 0)

    def accept(self, ranked: Tensor) -> Tensor:
        return ranked.cumsum(1) - ranked.cummax(1).values <= self.bound
