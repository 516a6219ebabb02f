"""The reference samplers' fixed schedules: every row commits a set count per step, in lockstep.

- ``Dream`` (Dream's sampler; the default for Dream and masked LMs): at local step s of a block of
  S steps, commit ``int(n_masked * (1 - s'/s))`` of the block's still-masked positions, with
  ``(s, s')`` consecutive points of ``linspace(1, eps, S + 1)``; everything at the last step.
- ``LLaDA`` (LLaDA's ``generate``; the default for ``LLaDALM``): the block's masked count at its
  first step, split evenly over its S steps, the remainder to the first steps (``n // S``, plus
  one for the first ``n % S`` steps).

Which positions: the confidence rule ``DenoiseConfig.alg``, named as the reference samplers name
them: Dream's ``maskgit_plus`` (probability of the sampled token), ``topk_margin``, ``entropy``
(``sum p log p``) and ``origin`` (each masked position commits with probability ``1 - s'/s``:
Dream's schedule only); LLaDA's ``low_confidence`` (untempered probability of the sampled token)
and ``random`` (uniform scores).
"""
from __future__ import annotations

import torch
from torch import Tensor

from entrgi_core import checks
from entrgi_core.schedules.base import FixedSchedule


class Dream(FixedSchedule):
    """Dream's schedule: commit the share ``1 - s'/s`` of the block's masked positions."""

    has_shares = True

    def __init__(self, eps: float = 1e-3):
        self.eps = checks.real(eps, who="Dream", name="eps", rule="lie in (0, 1)", ok=lambda v: 0 < v < 1)

    def share(self, local: int, steps: int) -> float:
        if local == steps - 1:
            return 1.0
        ts = torch.linspace(1.0, self.eps, steps + 1, dtype=torch.float64)  # Dream's t, s points
        t, s = ts[local].item(), ts[local + 1].item()
        return 1.0 - s / t

    def counts(self, masked: Tensor, at_block_start: Tensor, local: int, steps: int) -> Tensor:
        return (masked.double() * self.share(local, steps)).long()


class LLaDA(FixedSchedule):
    """LLaDA's schedule: the block's masked count split evenly over its steps, remainder first."""

    def counts(self, masked: Tensor, at_block_start: Tensor, local: int, steps: int) -> Tensor:
        base, rest = at_block_start // steps, at_block_start % steps
        return base + (local < rest).long()


