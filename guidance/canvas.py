"""Guidance for canvases that another library's generation loop owns (the base of
``GuidanceLogitsProcessor`` for transformers' DiffusionGemma and ``DreamGuidanceHook`` for Dream's
``diffusion_generate``).

``CanvasGuide`` holds what a guided step needs besides the canvas: the reward model and its
context for the prompts, the vocabulary alignment of the generating model's tokenizer, the
strategy, the sampling temperature / top-p the loop uses, per-row random keys and the reward-model
work done so far. ``refine(tokens, rows, cols, phi, index, total)`` is one guided step: the
reward model sees ``[chat prefix | tokens, with (rows, cols) relaxed from phi | suffix]``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from entrgi_core import rng
from entrgi_core.contract import Guidance, GuidanceStep


class CanvasGuide:
    """Args:
        reward: a ``RewardAdapter`` (e.g. ``HFRewardModel``).
        strategy: a guidance strategy that guides each sample on its own (EntRGi, Expectation,
            StraightThrough); particle methods (SMC) need a sampler that can resample rows.
        tokenizer: the generating model's tokenizer (for the vocabulary alignment and stop ids).
        prompts: the prompt text of each row of the batch, in order (the reward model's context).
        temperature, top_p: the distribution the loop samples from, used by the relaxation.
        seed: seeds the hard samples of the relaxation (row i uses key (seed, i)).
        stop_ids: ids that end a response (default: the tokenizer's EOS and pad).
    """

    who = "CanvasGuide"

    def __init__(self, reward, strategy: Guidance, *, tokenizer, prompts: list[str], temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, stop_ids: list[int] | None = None):
        who = self.who
        if not isinstance(strategy, Guidance):
            raise ValueError(f"{who}: strategy must be a guidance strategy (e.g. guidance.EntRGi()), "
                             f"got {type(strategy).__name__}")
        if strategy.begin(1, 1, "cpu") is not None:
            raise ValueError(f"{who}: {type(strategy).__name__} acts on a prompt's samples together and needs a "
                             "sampler that resamples rows; inside another library's loop use a per-sample strategy "
                             "(EntRGi, Expectation, StraightThrough), or run it with entrgi's own sampler")
        if reward is None or not hasattr(reward, "aligned"):
            raise ValueError(f"{who}: reward must be a reward adapter (e.g. rewards.HFRewardModel), got "
                             f"{type(reward).__name__}")
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise ValueError(f"{who}: the generating model's tokenizer is needed (tokenizer=...) to align its "
                             f"vocabulary with the reward model's; got {type(tokenizer).__name__}")
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts or \
                not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{who}: prompts must be a non-empty list of the batch's prompt texts, one per row")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"{who}: temperature must be > 0, got {temperature!r}")
        if isinstance(top_p, bool) or not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"{who}: top_p must lie in (0, 1], got {top_p!r}")
        if strategy.needs_reward:                  # else (e.g. steps=0) the scores pass through unchanged
            strategy.check(float(temperature), float(top_p))
        self.reward, self.strategy, self.tokenizer = reward, strategy, tokenizer
        self.prompts = list(prompts)
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        if stop_ids is None:
            stop_ids = [t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None]
        self.stop_list = sorted(set(int(t) for t in stop_ids))
        self._state = None          # per device: (context, template tokens, keys, stop ids, vocab)
        self.usage = None           # (R, 4) RM forwards, their tokens, backwards, their tokens
        self.calls = 0              # guided steps taken

    def _prepare(self, rows: int, vocab_size: int, device) -> tuple:
        if rows != len(self.prompts):
            raise ValueError(f"{self.who}: the batch has {rows} rows but {len(self.prompts)} prompts were given; "
                             "pass one prompt per row (repeat a prompt for several samples)")
        if self._state is None or self._state[2].device != torch.device(device):
            vocab = self.reward.aligned(self.tokenizer, vocab_size)
            context = self.reward.prepare(self.prompts)
            template = torch.tensor([self.reward.template_length(p) for p in self.prompts], device=device)
            keys = rng.row_keys(self.seed, list(range(rows)), 1, device=device)
            stops = torch.tensor(self.stop_list, dtype=torch.long, device=device)
            self._state = (context, template, keys, stops, vocab)
            self.usage = torch.zeros(rows, 4, dtype=torch.long, device=device) if self.usage is None \
                else self.usage.to(device)
        return self._state

    def refine(self, tokens: Tensor, rows: Tensor, cols: Tensor, phi: Tensor, index: int, total: int) -> Tensor:
        """Refined logits (N, V) for the positions ``(rows, cols)`` (N,) of the response canvas
        ``tokens`` (R, L), from the loop's logits ``phi`` (N, V); other positions enter the reward
        model as the tokens they hold."""
        if torch.compiler.is_compiling():
            raise RuntimeError(f"{self.who} cannot run inside torch.compile: it differentiates the reward model. "
                               "Compile the model's forward (transformers does), not the logits processor")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(f"{self.who}: guidance differentiates the reward model, which torch.inference_mode "
                               "forbids; call generate() under torch.no_grad() (its default) instead")
        context, template, keys, stops, vocab = self._prepare(tokens.shape[0], phi.shape[-1], tokens.device)
        self.calls += 1
        if rows.numel() == 0 or not self.strategy.needs_reward or not self.strategy.active(index, total):
            return phi
        step = GuidanceStep(index=index, total=total, reward=self.reward, context=context, vocab=vocab,
                            tokens=tokens, rows=rows, cols=cols, stop_ids=stops, keys=keys, samples=1,
                            temperature=self.temperature, top_p=self.top_p, top_k=None, template_tokens=template,
                            usage=self.usage)
        return self.strategy.refine(phi.float(), step).logits.to(phi.dtype)

    def reward_work(self) -> dict:
        """Per row: reward-model forwards, their tokens, backwards and their tokens so far."""
        keys = ("rm_forwards", "rm_forward_tokens", "rm_backwards", "rm_backward_tokens")
        if self.usage is None:
            return {k: [0] * len(self.prompts) for k in keys}
        return {k: v for k, v in zip(keys, self.usage.cpu().T.tolist())}
