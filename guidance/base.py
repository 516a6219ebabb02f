"""The gradient loop shared by the gated strategies (DESIGN.md §1 step 3).

``GatedGuidance`` runs M steps of Adam (fresh state every denoising step) on ``-sum(rewards)``,
where the reward model sees committed tokens as their own RM tokens and each masked token as the
gated relaxation of its logits, with a fresh hard sample (the sampler's top-k) at every inner
step. Its subclasses differ only in the gate: ``EntRGi`` ("entropy"), ``StraightThrough``
("ste"), ``Expectation`` ("soft"). The abstract ``Guidance`` and the step contract live in the
core (``entrgi_core.contract``); ``NoGuidance`` (``guidance/none.py``) carries none of this.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from entrgi_core import checks
from entrgi_core.contract import Guidance, GuidanceOutput, GuidanceStep, Reading, Relaxation
from entrgi_core.draws import neg_entropy
from entrgi_core.errors import InputError
from guidance.strength import Constant, StrengthSchedule
from guidance.trust_region import base_log_probs, reverse_kl_

__all__ = ["Guidance", "GuidanceOutput", "GuidanceStep", "GatedGuidance"]


class GatedGuidance(Guidance):
    """Reward-gradient guidance through the gated relaxation (``gate`` set by the subclass).

    Args:
        steps: M inner optimisation steps per denoising step (paper: 3); 0 disables guidance.
        lr: eta, the optimiser's learning rate on the logits (paper: 0.5); 0 disables guidance.
        optimizer: "adam" (paper) or "sgd".
        entropy_temperature: tau_H of the entropy gate (1, as in the authors' code).
        start, stop: guide only denoising steps with start <= step / T < stop.
        every: guide only every k-th denoising step taken (steps 0, k, 2k, ...).
        min_entropy: guide a step only when the mean normalised entropy H(softmax(phi / tau_H)) / log V
            of its masked positions is at least this (0 = always); reading it costs one host sync
            per denoising step, outside the inner steps.
        Steps a schedule leaves out are exactly unguided (``refine`` returns ``phi`` itself).
        kl: beta of the trust region: adds ``beta * sum_i KL(softmax(phi_i / tau) || softmax(phi0_i / tau))``
            over the masked positions to the minimised loss, phi0 the step's unguided logits
            (``guidance/trust_region.py``); 0 (default) is the paper's guidance, bit for bit.
        strength: a ``guidance.strength`` schedule, the factor on ``lr`` at each denoising step
            (None: ``Constant(1.0)``, the paper's); a factor of 0 leaves that step unguided.
        temperature, top_p: None (default) uses the sampler's (``DenoiseConfig``) for the
            relaxation ``q = softmax(phi / tau)`` and the hard samples. Set them only to decouple
            guidance from sampling on purpose; with a greedy sampler (temperature 0) a temperature
            must be given here. The hard samples always use the sampler's top-k.
    """

    gate: str = "entropy"
    name: str = "guided"

    def __init__(self, steps: int = 3, lr: float = 0.5, optimizer: str = "adam", entropy_temperature: float = 1.0,
                 start: float = 0.0, stop: float = 1.0, every: int = 1, min_entropy: float = 0.0,
                 temperature: float | None = None, top_p: float | None = None, kl: float = 0.0,
                 strength: StrengthSchedule | None = None):
        super().__init__()
        who = type(self).__name__
        steps = checks.integer(steps, who=who, name="steps (M)", minimum=0)
        lr = checks.real(lr, who=who, name="lr (eta)", rule="be a finite number >= 0", ok=lambda v: v >= 0)
        checks.one_of(optimizer, ("adam", "sgd"), who=who, name="optimizer")
        entropy_temperature = checks.temperature(entropy_temperature, who=who, name="entropy_temperature")
        temperature = checks.temperature(temperature, who=who, none_means="the sampler's")
        top_p = checks.top_p(top_p, who=who, none_means="the sampler's")
        start, stop = (checks.fraction(v, who=who, name=n) for v, n in ((start, "start"), (stop, "stop")))
        if start > stop:
            raise InputError(f"{who}: need 0 <= start <= stop <= 1, got start={start!r}, stop={stop!r}")
        every = checks.integer(every, who=who, name="every", minimum=1)
        min_entropy = checks.fraction(min_entropy, who=who, name="min_entropy")
        kl = checks.real(kl, who=who, name="kl (beta)", rule="be a finite number >= 0", ok=lambda v: v >= 0)
        if strength is None:
            strength = Constant(1.0)
        elif not isinstance(strength, StrengthSchedule):
            raise InputError(f"{who}: strength must be a guidance.strength schedule (Constant, LinearDecay, "
                             f"MaskedShare) or None, got {type(strength).__name__}")
        self.kl, self.strength = float(kl), strength
        self.every, self.min_entropy = every, float(min_entropy)
        self.steps, self.lr, self.optimizer = steps, float(lr), optimizer
        self.entropy_temperature = float(entropy_temperature)
        self.start, self.stop = float(start), float(stop)
        self.temperature = None if temperature is None else float(temperature)
        self.top_p = None if top_p is None else float(top_p)

    @property
    def needs_reward(self) -> bool:
        return self.steps > 0 and self.lr > 0 and not self.strength.is_zero()

    def active(self, index: int, total: int) -> bool:
        return self.needs_reward and self.start <= index / total < self.stop and index % self.every == 0

    def guides(self, step: GuidanceStep, phi: Tensor) -> bool:
        return super().guides(step, phi) and self.entropy_ok(phi)

    @property
    def uses_total(self) -> bool:
        return self.start > 0 or self.stop < 1 or self.strength.uses_total

    def relaxation(self, step: GuidanceStep) -> Relaxation:
        tau, top_p = self.sampling(step.temperature, step.top_p)
        return Relaxation(self.gate, tau, top_p, self.entropy_temperature)

    def entropy_ok(self, phi: Tensor) -> bool:
        """Whether the mean normalised entropy of ``phi`` (N, V) reaches ``min_entropy``."""
        if self.min_entropy <= 0:
            return True
        h = -neg_entropy(phi, temperature=self.entropy_temperature) / math.log(phi.shape[1])   # (N,)
        return bool(h.mean() >= self.min_entropy)

    def sampling(self, temperature: float, top_p: float) -> tuple[float, float]:
        """The (temperature, top_p) guidance uses, given the sampler's. Raises when neither is usable."""
        tau = self.temperature if self.temperature is not None else temperature
        if not tau > 0:
            raise InputError(f"{type(self).__name__}: the sampler is greedy (temperature 0), and the relaxation "
                             f"softmax(phi / tau) needs tau > 0: give the strategy one explicitly, e.g. "
                             f"{type(self).__name__}(temperature=0.7)")
        return tau, self.top_p if self.top_p is not None else top_p

    def check(self, temperature: float, top_p: float) -> None:
        self.sampling(temperature, top_p)

    def _make_optimizer(self, params):
        if self.optimizer == "adam":            # fused: one pass over phi (N, V) instead of a dozen (CPU, CUDA)
            fused = all(p.device.type in ("cpu", "cuda") for p in params)
            return torch.optim.Adam(params, lr=self.lr, fused=fused)
        return torch.optim.SGD(params, lr=self.lr)

    def relaxed_reading(self, phi: Tensor, step: GuidanceStep, inner: int) -> Reading:
        """The reward-model reading (rewards (R,), tokens, gate weights (N,)) of the input relaxed
        from ``phi`` (N, V) by this strategy's gate, with inner step ``inner``'s hard sample."""
        return step.read(phi, self.relaxation(step), inner=inner)

    def relaxed_reward(self, phi: Tensor, step: GuidanceStep, inner: int) -> tuple[Tensor, Tensor]:
        """Rewards (R,) of the relaxed input and the gate weights (N,) (see ``relaxed_reading``)."""
        reading = self.relaxed_reading(phi, step, inner)
        return reading.rewards, reading.weight

    def refine(self, phi: Tensor, step: GuidanceStep) -> GuidanceOutput:
        """M optimiser steps on ``-sum(rewards)`` from ``phi`` (N, V); the loop calls it only where
        ``guides`` says so."""
        factor = self.strength(step.index / step.total, step.rows.numel() / max(step.tokens.numel(), 1))
        if factor == 0:
            return GuidanceOutput(phi)                                  # exactly unguided at this step
        var = phi.detach().float().clone().requires_grad_(True)
        opt = self._make_optimizer([var])
        if factor != 1:
            for group in opt.param_groups:
                group["lr"] = self.lr * factor
        tau = self.relaxation(step).temperature
        log_p = base_log_probs(phi, tau) if self.kl > 0 else None      # (N, V) the step's unguided distribution
        weight = before = None
        with torch.enable_grad():
            for m in range(self.steps):
                reading = self.relaxed_reading(var, step, m)       # counts its forward, and its backward below
                if m == 0:
                    weight, before = reading.weight.detach(), reading.rewards.detach()
                opt.zero_grad(set_to_none=True)
                (-reading.rewards.sum()).backward()
                if log_p is not None:                              # + beta * KL(q || p): its gradient, in place
                    if var.grad is None:
                        var.grad = torch.zeros_like(var)
                    reverse_kl_(var.detach(), log_p, tau, self.kl, var.grad)
                opt.step()
        after = None
        if step.diagnose:
            with torch.no_grad():
                after = self.relaxed_reward(var, step, self.steps)[0]
        return GuidanceOutput(var.detach(), weight=weight, reward_before=before, reward_after=after)

    def settings(self) -> dict:
        """As every strategy's, but the trust region and the strength schedule are recorded only when
        set: a run written before they existed is the same run as one with their defaults."""
        out = super().settings()
        if self.kl == 0:
            del out["kl"]
        if self.strength == Constant(1.0):
            del out["strength"]
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "class")
