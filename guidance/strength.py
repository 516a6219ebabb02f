"""Guidance strength over denoising time, as objects (``GatedGuidance(strength=...)``).

A schedule maps the step's position in denoising, ``t = index / total`` in [0, 1), and the share
of the response's positions the step refines (its masked positions, N / (R L): known on the host,
no sync), to a factor on the step size ``lr`` of that step's inner
optimisation (Adam is invariant to a rescaled loss, so strength acts on the step, not on the
reward). A factor of 0 leaves the step exactly unguided (no reward-model work).

    Constant(1.0)                 the paper's guidance, every step alike (the default)
    LinearDecay(start=1, end=0)   falls linearly with t: strong while the canvas is empty
    MaskedShare(power=1)          the share of the response still masked, to a power: falls as
                                  the canvas fills, whatever the schedule commits per step

Why not the damping rule of arXiv 2606.02884 ("Are we really tilting?"): its closed form corrects
the bias of a finite-particle plug-in estimate of the Doob h-function along a Gaussian
(stochastic-interpolant) path, derived for Gaussian and Gaussian-mixture targets with quadratic
rewards; its scale depends on that path's noise schedule and the reward's curvature. Our gradient
strategies estimate no h-function (they take M optimiser steps on the logits through a
relaxation), and a masked canvas has no Gaussian path or quadratic reward to take the constants
from. What carries over is its direction: strength that falls as the state becomes more
determined, which ``LinearDecay`` and ``MaskedShare`` implement and docs/guidance-safety.md measures.
"""
from __future__ import annotations

import abc

from entrgi_core import checks
from entrgi_core.settings import Recorded


class StrengthSchedule(Recorded, abc.ABC):
    """The factor on ``lr`` at one denoising step."""

    @abc.abstractmethod
    def __call__(self, t: float, masked_share: float) -> float:
        """Factor >= 0 at ``t = index / total`` with ``masked_share`` of the response still masked."""

    def is_zero(self) -> bool:
        """Whether the factor is 0 at every step (the strategy then never guides)."""
        return False

    @property
    def uses_total(self) -> bool:
        """Whether the factor reads ``t = index / total`` (a loop must then know its total)."""
        return False


class Constant(StrengthSchedule):
    def __init__(self, value: float = 1.0):
        self.value = checks.real(value, who="Constant", name="value", rule="be a finite number >= 0",
                                 ok=lambda v: v >= 0)

    def __call__(self, t: float, masked_share: float) -> float:
        return self.value

    def is_zero(self) -> bool:
        return self.value == 0


class LinearDecay(StrengthSchedule):
    def __init__(self, start: float = 1.0, end: float = 0.0):
        who = "LinearDecay"
        self.start = checks.real(start, who=who, name="start", rule="be a finite number >= 0", ok=lambda v: v >= 0)
        self.end = checks.real(end, who=who, name="end", rule="be a finite number >= 0", ok=lambda v: v >= 0)

    def __call__(self, t: float, masked_share: float) -> float:
        return self.start + (self.end - self.start) * t

    def is_zero(self) -> bool:
        return self.start == 0 and self.end == 0

    @property
    def uses_total(self) -> bool:
        return self.start != self.end


class MaskedShare(StrengthSchedule):
    def __init__(self, power: float = 1.0):
        self.power = checks.real(power, who="MaskedShare", name="power", rule="be a finite number > 0",
                                 ok=lambda v: v > 0)

    def __call__(self, t: float, masked_share: float) -> float:
        return masked_share ** self.power


STRENGTHS = (Constant, LinearDecay, MaskedShare)
