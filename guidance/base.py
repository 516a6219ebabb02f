"""Guidance: refine the masked positions' logits with gradients of a reward model.

Every strategy runs the same loop (DESIGN.md §1 step 3): M steps of Adam (fresh state each
denoising step) on ``-sum(rewards)``, where the reward model sees committed tokens as their
embeddings and each masked token as the gated relaxation of its logits, with a fresh hard sample
at every inner step. Strategies differ only in the gate: ``EntRGi`` ("entropy"),
``StraightThrough`` ("ste"), ``Expectation`` ("soft"). ``NoGuidance`` leaves the logits alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from entrgi_core import rng
from entrgi_core.ops import relax_embeddings
from entrgi_core.sampling import sample_tokens


@dataclass
class GuidanceStep:
    """What a strategy sees at denoising step ``index`` of ``total`` (R = B*K rows, L positions,
    N masked positions over all rows)."""

    index: int
    total: int
    reward: "object"            # RewardAdapter
    context: "object"           # RewardContext for the R rows
    table: Tensor               # (V, D) RM embeddings re-indexed to the dLLM vocabulary
    tokens: Tensor              # (R, L) response canvas; masked positions hold the mask id
    rows: Tensor                # (N,) row of each masked position
    cols: Tensor                # (N,) column of each masked position
    stop_ids: Tensor            # (S,) ids that end a response
    keys: Tensor                # (R,) per-row random keys
    trace: dict | None = None   # per-step diagnostics, filled when not None

    def base_embeds(self) -> Tensor:
        """(R, L, D) embeddings of the canvas; masked positions are overwritten by ``inputs``."""
        return self.table[self.tokens]

    def inputs(self, base: Tensor, relaxed: Tensor) -> Tensor:
        """(R, L, D): ``base`` with the masked positions replaced by ``relaxed`` (N, D)."""
        return base.index_put((self.rows, self.cols), relaxed)

    def keep(self, phi: Tensor) -> Tensor:
        """(R, L) prefix mask: positions before the first stop token, reading masked positions as
        argmax(phi)."""
        cand = self.tokens.index_put((self.rows, self.cols), phi.argmax(-1))
        stop = torch.isin(cand, self.stop_ids)
        length = torch.where(stop.any(1), stop.int().argmax(1), torch.full_like(stop[:, 0], stop.shape[1], dtype=torch.long))
        return torch.arange(stop.shape[1], device=stop.device)[None, :] < length[:, None]

    def uniforms(self, inner: int) -> Tensor:
        """(N,) uniforms for the hard samples of inner step ``inner``."""
        return rng.uniform(rng.derive(self.keys[self.rows], rng.HARD, self.index, inner, self.cols))


class Guidance(nn.Module):
    """Base strategy. ``gate`` is "entropy", "ste" or "soft" (see ``entrgi_core.ops``).

    Args:
        steps: M inner optimisation steps per denoising step (paper: 3); 0 disables guidance.
        lr: eta, the optimiser's learning rate on the logits (paper: 0.5).
        optimizer: "adam" (paper) or "sgd".
        temperature: tau of the relaxation q = softmax(phi / tau) and of the hard samples (0.7).
        top_p: nucleus of the hard samples (0.95).
        entropy_temperature: tau_H of the entropy gate (1, as in the authors' code).
        start, stop: guide only denoising steps with start <= step / T < stop.
    """

    gate: str = "entropy"
    name: str = "guided"

    def __init__(self, steps: int = 3, lr: float = 0.5, optimizer: str = "adam", temperature: float = 0.7,
                 top_p: float = 0.95, entropy_temperature: float = 1.0, start: float = 0.0, stop: float = 1.0):
        super().__init__()
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"{type(self).__name__}: steps (M) must be an integer >= 0, got {steps!r}")
        if not lr >= 0:
            raise ValueError(f"{type(self).__name__}: lr (eta) must be >= 0, got {lr!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"{type(self).__name__}: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not temperature > 0:
            raise ValueError(f"{type(self).__name__}: temperature must be > 0, got {temperature!r}")
        if not entropy_temperature > 0:
            raise ValueError(f"{type(self).__name__}: entropy_temperature must be > 0, got {entropy_temperature!r}")
        if not 0 < top_p <= 1:
            raise ValueError(f"{type(self).__name__}: top_p must lie in (0, 1], got {top_p!r}")
        if not 0 <= start <= stop <= 1:
            raise ValueError(f"{type(self).__name__}: need 0 <= start <= stop <= 1, got start={start}, stop={stop}")
        self.steps, self.lr, self.optimizer = steps, float(lr), optimizer
        self.temperature, self.top_p, self.entropy_temperature = float(temperature), float(top_p), float(entropy_temperature)
        self.start, self.stop = float(start), float(stop)

    @property
    def needs_reward(self) -> bool:
        return self.steps > 0 and self.lr > 0

    def active(self, index: int, total: int) -> bool:
        return self.needs_reward and self.start <= index / total < self.stop

    def _make_optimizer(self, params):
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr)

    def relax(self, phi: Tensor, hard: Tensor, step: GuidanceStep):
        return relax_embeddings(phi, step.table, hard, gate=self.gate, temperature=self.temperature,
                                entropy_temperature=self.entropy_temperature, validate=False)

    def reward_of(self, phi: Tensor, step: GuidanceStep, base: Tensor, inner: int):
        """Rewards (R,) of the relaxed input built from ``phi`` (N, V), and the gate weights (N,)."""
        with torch.no_grad():
            hard, _ = sample_tokens(phi.detach(), step.uniforms(inner), temperature=self.temperature, top_p=self.top_p)
        out = self.relax(phi, hard, step)
        embeds = step.inputs(base, out.embeds)                        # (R, L, D)
        return step.reward.score_embeds(step.context, embeds, step.keep(phi.detach())), out.weight

    def refine(self, phi: Tensor, step: GuidanceStep) -> Tensor:
        """Guided logits (N, V) float32 from the model's logits ``phi`` (N, V)."""
        if not self.active(step.index, step.total) or phi.shape[0] == 0:
            return phi
        base = step.base_embeds().detach()
        var = phi.detach().float().clone().requires_grad_(True)
        opt = self._make_optimizer([var])
        with torch.enable_grad():
            for m in range(self.steps):
                rewards, weight = self.reward_of(var, step, base, m)
                if step.trace is not None and m == 0:
                    step.trace["weight"].append(weight.mean().detach())
                    step.trace["reward_before"].append(rewards.mean().detach())
                opt.zero_grad(set_to_none=True)
                (-rewards.sum()).backward()
                opt.step()
        if step.trace is not None:
            with torch.no_grad():
                after, _ = self.reward_of(var, step, base, self.steps)
            step.trace["reward_after"].append(after.mean())
        return var.detach()

    def extra_repr(self) -> str:
        return (f"gate={self.gate!r}, steps={self.steps}, lr={self.lr}, optimizer={self.optimizer!r}, "
                f"temperature={self.temperature}, top_p={self.top_p}, entropy_temperature={self.entropy_temperature}, "
                f"start={self.start}, stop={self.stop}")
