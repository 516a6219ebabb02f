"""Guidance for canvases that another library's generation loop owns (the base of
``GuidanceLogitsProcessor`` for transformers' DiffusionGemma and ``DreamGuidanceHook`` for Dream's
``diffusion_generate``).

``CanvasGuide`` holds what a guided step needs besides the canvas: the strategy, the sampling
temperature / top-p the loop uses, per-row random keys, and the generation's ``RewardSide`` (the
reward model and its context for the prompts, the vocabulary alignment of the generating model's
tokenizer, the stop ids, the reward-model work done so far), built at the first call on the
canvas's device. ``refine(tokens, rows, cols, phi, index, total)`` is one step: the reward model
sees ``[chat prefix | tokens, with (rows, cols) relaxed from phi | suffix]``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from entrgi_core import checks, rng
from entrgi_core.contract import Guidance, GuidanceStep, Sampling
from entrgi_core.errors import InputError, require_finite
from entrgi_core.reward_side import WORK_FIELDS, RewardSide
from entrgi_core.stops import stop_ids as stop_rule


class CanvasGuide:
    """Args:
        reward: a ``RewardAdapter`` (e.g. ``HFRewardModel``).
        strategy: a guidance strategy that guides each sample on its own (EntRGi, Expectation,
            StraightThrough); particle methods (SMC) need a sampler that can resample rows.
        tokenizer: the generating model's tokenizer (for the vocabulary alignment and stop ids).
        prompts: the prompt text of each row of the batch, in order (the reward model's context).
        temperature, top_p: the distribution the loop samples from, used by the relaxation.
        seed: seeds the hard samples of the relaxation (row i uses key (seed, i)).
        generation_config: the model's generation config (its EOS ids end a response too).
        stop_ids: ids that end a response (default: the stop rule of ``entrgi_core.stops``, the same
            as the model adapters').
    """

    who = "CanvasGuide"

    def __init__(self, reward, strategy: Guidance, *, tokenizer, prompts: list[str], temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, generation_config=None, stop_ids: list[int] | None = None,
                 mask_id: int | None = None):
        who = self.who
        if not isinstance(strategy, Guidance):
            raise InputError(f"{who}: strategy must be a guidance strategy (e.g. guidance.EntRGi()), "
                             f"got {type(strategy).__name__}")
        if strategy.particles:
            raise InputError(f"{who}: {type(strategy).__name__} acts on a prompt's samples together and needs a "
                             "sampler that resamples rows; inside another library's loop use a per-sample strategy "
                             "(EntRGi, Expectation, StraightThrough), or run it with entrgi's own sampler")
        if reward is None or not callable(getattr(reward, "parts", None)):
            raise InputError(f"{who}: reward must be a reward adapter (e.g. rewards.HFRewardModel), got "
                             f"{type(reward).__name__}")
        if strategy.needs_reward and strategy.reads_embeddings and not reward.parts():
            raise InputError(f"{who}: {type(strategy).__name__} differentiates its reward, and {reward.name!r} scores "
                             "text only; give it a differentiable reward adapter (e.g. rewards.HFRewardModel)")
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise InputError(f"{who}: the generating model's tokenizer is needed (tokenizer=...) to align its "
                             f"vocabulary with the reward model's; got {type(tokenizer).__name__}")
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts or \
                not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InputError(f"{who}: prompts must be a non-empty list of the batch's prompt texts, one per row")
        temperature = checks.temperature(temperature, who=who)
        top_p = checks.top_p(top_p, who=who)
        if strategy.needs_reward:                  # else (e.g. steps=0) the scores pass through unchanged
            strategy.check(temperature, top_p)
        self.reward, self.strategy, self.tokenizer = reward, strategy, tokenizer
        self.prompts = list(prompts)
        self.temperature, self.top_p, self.seed = temperature, top_p, int(seed)
        if stop_ids is None:
            stop_ids = stop_rule(tokenizer, generation_config, mask_id=mask_id)
        self.stop_list = sorted({int(t) for t in stop_ids} - {mask_id})
        self.side: RewardSide | None = None        # built at the first call, on the canvas's device
        self.keys: Tensor | None = None            # (R,) per-row random keys
        self.calls = 0                             # steps seen

    def _prepare(self, rows: int, vocab_size: int, device) -> None:
        if rows != len(self.prompts):
            raise InputError(f"{self.who}: the batch has {rows} rows but {len(self.prompts)} prompts were given; "
                             "pass one prompt per row (repeat a prompt for several samples)")
        if self.side is not None and self.keys.device == torch.device(device):
            return
        before = self.side
        self.side = RewardSide.build(self.reward, self.prompts, tokenizer=self.tokenizer, vocab_size=vocab_size,
                                     stop_ids=self.stop_list, device=device)
        if before is not None:                                         # the counters follow the canvas
            for part, old in zip(self.side.parts, before.parts):
                part.work = old.work.to(device)
        self.keys = rng.row_keys(self.seed, list(range(rows)), 1, device=device)

    def refine(self, tokens: Tensor, rows: Tensor, cols: Tensor, phi: Tensor, index: int, total: int) -> Tensor:
        """Refined logits (N, V) for the positions ``(rows, cols)`` (N,) of the response canvas
        ``tokens`` (R, L), from the loop's logits ``phi`` (N, V); other positions enter the reward
        model as the tokens they hold."""
        if torch.compiler.is_compiling():
            raise InputError(f"{self.who} cannot run inside torch.compile: it differentiates the reward model. "
                             "Compile the model's forward (transformers does), not the logits processor")
        if torch.is_inference_mode_enabled():
            raise InputError(f"{self.who}: guidance differentiates the reward model, which torch.inference_mode "
                             "forbids; call generate() under torch.no_grad() (its default) instead")
        self._prepare(tokens.shape[0], phi.shape[-1], tokens.device)
        self.calls += 1
        if rows.numel() == 0 or not self.strategy.needs_reward:
            return phi
        require_finite(phi, f"{self.who}: the model at step {index}")
        step = GuidanceStep(index=index, total=total, side=self.side, tokens=tokens, rows=rows, cols=cols,
                            keys=self.keys, samples=1, sampling=Sampling(self.temperature, self.top_p))
        if not self.strategy.guides(step, phi):
            return phi
        out = self.strategy.refine(phi.float(), step).logits
        require_finite(out, f"{self.who}: guidance ({type(self.strategy).__name__}) at step {index}")
        return out.to(phi.dtype)

    def reward_work(self) -> dict:
        """Per row: reward-model forwards, their tokens, backwards, their tokens and FLOPs so far."""
        if self.side is None:
            return {k: [0] * len(self.prompts) for k in WORK_FIELDS}
        rows = self.side.per_prompt(1)
        return {k: [r[k] for r in rows] for k in WORK_FIELDS}
