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

from entrgi_core.contract import Guidance, GuidanceOutput, GuidanceStep
from entrgi_core.ops import relax_embeddings
from entrgi_core.sampling import neg_entropy

__all__ = ["Guidance", "GuidanceOutput", "GuidanceStep", "GatedGuidance"]


class GatedGuidance(Guidance):
    """Reward-gradient guidance through the gated relaxation (``gate`` set by the subclass).

    Args:
        steps: M inner optimisation steps per denoising step (paper: 3); 0 disables guidance.
        lr: eta, the optimiser's learning rate on the logits (paper: 0.5); 0 disables guidance.
        optimizer: "adam" (paper) or "sgd".
        entropy_temperature: tau_H of the entropy gate (1, as in the authors' code).
        start, stop: guide only denoising steps with start <= step / T < stop.
        every: guide only every k-th denoising step (steps 0, k, 2k, ...).
        min_entropy: guide a step only when the mean normalised entropy H(softmax(phi / tau_H)) / log V
            of its masked positions is at least this (0 = always); reading it costs one host sync
            per denoising step, outside the inner steps.
        Steps a schedule leaves out are exactly unguided (``refine`` returns ``phi`` itself).
        temperature, top_p: None (default) uses the sampler's (``DenoiseConfig``) for the
            relaxation ``q = softmax(phi / tau)`` and the hard samples. Set them only to decouple
            guidance from sampling on purpose; with a greedy sampler (temperature 0) a temperature
            must be given here. The hard samples always use the sampler's top-k.
    """

    gate: str = "entropy"
    name: str = "guided"

    def __init__(self, steps: int = 3, lr: float = 0.5, optimizer: str = "adam", entropy_temperature: float = 1.0,
                 start: float = 0.0, stop: float = 1.0, every: int = 1, min_entropy: float = 0.0,
                 temperature: float | None = None, top_p: float | None = None):
        super().__init__()
        who = type(self).__name__
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise ValueError(f"{who}: steps (M) must be an integer >= 0, got {steps!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"{who}: lr (eta) must be a finite number >= 0, got {lr!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"{who}: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not (isinstance(entropy_temperature, (int, float)) and entropy_temperature > 0):
            raise ValueError(f"{who}: entropy_temperature must be > 0, got {entropy_temperature!r}")
        if temperature is not None and not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                            and temperature > 0):
            raise ValueError(f"{who}: temperature must be None (the sampler's) or > 0, got {temperature!r}")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"{who}: top_p must be None (the sampler's) or lie in (0, 1], got {top_p!r}")
        if not (isinstance(start, (int, float)) and isinstance(stop, (int, float)) and 0 <= start <= stop <= 1):
            raise ValueError(f"{who}: need 0 <= start <= stop <= 1, got start={start!r}, stop={stop!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"{who}: every must be an integer >= 1, got {every!r}")
        if not (isinstance(min_entropy, (int, float)) and 0 <= min_entropy <= 1):
            raise ValueError(f"{who}: min_entropy must lie in [0, 1], got {min_entropy!r}")
        self.every, self.min_entropy = every, float(min_entropy)
        self.steps, self.lr, self.optimizer = steps, float(lr), optimizer
        self.entropy_temperature = float(entropy_temperature)
        self.start, self.stop = float(start), float(stop)
        self.temperature = None if temperature is None else float(temperature)
        self.top_p = None if top_p is None else float(top_p)

    @property
    def needs_reward(self) -> bool:
        return self.steps > 0 and self.lr > 0

    def active(self, index: int, total: int) -> bool:
        return self.needs_reward and self.start <= index / total < self.stop and index % self.every == 0

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
            raise ValueError(f"{type(self).__name__}: the sampler is greedy (temperature 0), and the relaxation "
                             f"softmax(phi / tau) needs tau > 0: give the strategy one explicitly, e.g. "
                             f"{type(self).__name__}(temperature=0.7)")
        return tau, self.top_p if self.top_p is not None else top_p

    def check(self, temperature: float, top_p: float) -> None:
        self.sampling(temperature, top_p)

    def settings(self) -> dict:
        return {**super().settings(), "gate": self.gate, "steps": self.steps, "lr": self.lr,
                "optimizer": self.optimizer, "entropy_temperature": self.entropy_temperature,
                "start": self.start, "stop": self.stop, "every": self.every, "min_entropy": self.min_entropy,
                "temperature": self.temperature, "top_p": self.top_p}

    def _make_optimizer(self, params):
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr)

    def relaxed_reward(self, phi: Tensor, step: GuidanceStep, inner: int) -> tuple[Tensor, Tensor]:
        """Rewards (R,) of the input relaxed from ``phi`` (N, V) with inner step ``inner``'s hard
        sample, and the gate weights (N,)."""
        tau, top_p = self.sampling(step.temperature, step.top_p)
        hard = step.hard_tokens(phi, inner, temperature=tau, top_p=top_p)
        out = relax_embeddings(phi, step.table, hard, gate=self.gate, temperature=tau,
                               entropy_temperature=self.entropy_temperature, validate=False)
        return step.score(out.embeds, phi), out.weight

    def refine(self, phi: Tensor, step: GuidanceStep) -> GuidanceOutput:
        if not self.active(step.index, step.total) or phi.shape[0] == 0 or not self.entropy_ok(phi):
            return GuidanceOutput(phi)
        var = phi.detach().float().clone().requires_grad_(True)
        opt = self._make_optimizer([var])
        weight = before = None
        with torch.enable_grad():
            for m in range(self.steps):
                rewards, w = self.relaxed_reward(var, step, m)
                if m == 0:
                    weight, before = w.detach(), rewards.detach()
                opt.zero_grad(set_to_none=True)
                (-rewards.sum()).backward()
                opt.step()
        after = None
        if step.diagnose:
            with torch.no_grad():
                after = self.relaxed_reward(var, step, self.steps)[0]
        return GuidanceOutput(var.detach(), weight=weight, reward_before=before, reward_after=after)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "class")
