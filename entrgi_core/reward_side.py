"""The reward side of one generation: built once, by either loop (our sampler, or a guide inside
another library's loop), and carried by every ``GuidanceStep``.

``RewardSide`` holds the reward adapter, its context for the R rows (cached chat prefix/suffix),
the vocabulary alignment of the generating model's tokenizer, the ids that end a response, the
template tokens each row's reward-model input carries besides the response, and ``RewardWork``,
the counters of reward-model passes, added to where the passes happen.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

WORK_FIELDS = ("rm_forwards", "rm_forward_tokens", "rm_backwards", "rm_backward_tokens")


@dataclass
class RewardWork:
    """Reward-model passes of R rows during guidance, counted on the rows' device (no host sync)."""

    forwards: Tensor          # (R,) int64 forward passes
    forward_tokens: Tensor    # (R,) int64 tokens they read
    backwards: Tensor         # (R,) int64 backward passes (to the inputs)
    backward_tokens: Tensor   # (R,) int64 tokens they went through
    index: Tensor | None = None   # (n,) when these counters are those of some rows of a larger set

    @classmethod
    def zeros(cls, rows: int, device=None) -> "RewardWork":
        z = lambda: torch.zeros(rows, dtype=torch.long, device=device)  # noqa: E731
        return cls(z(), z(), z(), z())

    def add_forward(self, tokens: Tensor) -> None:
        """One forward of every row, reading ``tokens`` (R,) tokens each."""
        self._add(self.forwards, self.forward_tokens, tokens)

    def add_backward(self, tokens: Tensor) -> None:
        """One backward of every row, through ``tokens`` (R,) tokens each."""
        self._add(self.backwards, self.backward_tokens, tokens)

    def _add(self, passes: Tensor, counted: Tensor, tokens: Tensor) -> None:
        if self.index is None:
            passes += 1
            counted += tokens
        else:
            passes.index_add_(0, self.index, torch.ones_like(tokens))
            counted.index_add_(0, self.index, tokens)

    def rows(self, idx: Tensor) -> "RewardWork":
        """The counters of rows ``idx`` (n,): passes added to them count in these (R,) counters."""
        return replace(self, index=idx if self.index is None else self.index[idx])

    def to(self, device) -> "RewardWork":
        return RewardWork(*(t.to(device) for t in (self.forwards, self.forward_tokens, self.backwards,
                                                   self.backward_tokens)))

    def per_prompt(self, samples: int) -> list[dict[str, int]]:
        """Sums over each prompt's ``samples`` consecutive rows: one dict per prompt, keyed by
        ``WORK_FIELDS``."""
        table = torch.stack([self.forwards, self.forward_tokens, self.backwards, self.backward_tokens], 1)
        return [dict(zip(WORK_FIELDS, row)) for row in table.view(-1, samples, 4).sum(1).tolist()]


@dataclass
class RewardSide:
    """What a guided step reads besides the canvas, for R rows (see the module docstring)."""

    reward: object            # a RewardAdapter
    context: object           # its RewardContext for the R rows
    vocab: object             # AlignedVocab: the generating model's tokens as reward-model inputs
    stop_ids: Tensor          # (S,) int64 ids that end a response
    template_tokens: Tensor   # (R,) int64 reward-model tokens besides the response (template, prompt)
    work: RewardWork

    @classmethod
    def build(cls, reward, prompts: list[str], *, tokenizer, vocab_size: int, stop_ids, device) -> "RewardSide":
        """The reward side for rows whose prompts are ``prompts`` (one per row), generated with
        ``tokenizer`` (``vocab_size`` logits) and ending at ``stop_ids``."""
        template = torch.tensor([reward.template_length(p) for p in prompts], dtype=torch.long, device=device)
        return cls(reward=reward, context=reward.prepare(list(prompts)),
                   vocab=reward.aligned(tokenizer, vocab_size),
                   stop_ids=torch.as_tensor(list(stop_ids), dtype=torch.long, device=device),
                   template_tokens=template, work=RewardWork.zeros(len(prompts), device))

    def rows(self, idx: Tensor) -> "RewardSide":
        """The reward side of rows ``idx`` (n,) only (their context, template tokens and counters)."""
        return replace(self, context=self.context.rows(idx), template_tokens=self.template_tokens[idx],
                       work=self.work.rows(idx))

    def for_prompts(self, prompts: list[str]) -> "RewardSide":
        """The same reward model, alignment and stops for other rows (one prompt per row), with
        fresh work counters."""
        device = self.template_tokens.device
        template = torch.tensor([self.reward.template_length(p) for p in prompts], dtype=torch.long, device=device)
        return replace(self, context=self.reward.prepare(list(prompts)), template_tokens=template,
                       work=RewardWork.zeros(len(prompts), device))

    def tokens_read(self, keep: Tensor) -> Tensor:
        """(R,) reward-model tokens of an input whose response part is ``keep`` (R, L')."""
        return keep.sum(1) + self.template_tokens
