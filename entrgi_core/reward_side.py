"""The reward side of one generation: built once, by either loop (our sampler, or a guide inside
another library's loop), and carried by every ``GuidanceStep``.

``RewardSide`` holds the generation's reward (any adapter: a differentiable model, a composite of
weighted terms, or a text-only reward), its selector, each row's prompt, the ids that end a
response and a decoder of response tokens. ``parts`` are the reward's differentiable terms, one
``RewardPart`` each with its own context for the R rows (cached chat prefix/suffix), the
vocabulary alignment of the generating model's tokenizer to that term's reward model, the
template tokens each row's input carries besides the response, and ``RewardWork``, the counters
of that model's passes, added to where the passes happen.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

WORK_FIELDS = ("rm_forwards", "rm_forward_tokens", "rm_backwards", "rm_backward_tokens", "rm_flops")


@dataclass
class RewardWork:
    """Passes of reward models over R rows, counted on the rows' device (no host sync)."""

    forwards: Tensor          # (R,) int64 forward passes
    forward_tokens: Tensor    # (R,) int64 tokens they read
    backwards: Tensor         # (R,) int64 backward passes (to the inputs)
    backward_tokens: Tensor   # (R,) int64 tokens they went through
    flops: Tensor             # (R,) int64 2 x parameters x tokens of every pass
    parameters: int = 0       # of the model whose passes these are, unless a pass says otherwise
    index: Tensor | None = None   # (n,) when these counters are those of some rows of a larger set

    @classmethod
    def zeros(cls, rows: int, device=None, parameters: int = 0) -> "RewardWork":
        z = lambda: torch.zeros(rows, dtype=torch.long, device=device)  # noqa: E731
        return cls(z(), z(), z(), z(), z(), parameters)

    def add_forward(self, tokens: Tensor, parameters: int | None = None) -> None:
        """One forward of every row, reading ``tokens`` (R,) tokens each."""
        self._add(self.forwards, self.forward_tokens, tokens, parameters)

    def add_backward(self, tokens: Tensor, parameters: int | None = None) -> None:
        """One backward of every row, through ``tokens`` (R,) tokens each."""
        self._add(self.backwards, self.backward_tokens, tokens, parameters)

    def _add(self, passes: Tensor, counted: Tensor, tokens: Tensor, parameters: int | None) -> None:
        flops = 2 * (self.parameters if parameters is None else parameters) * tokens
        for target, value in ((passes, torch.ones_like(tokens)), (counted, tokens), (self.flops, flops)):
            if self.index is None:
                target += value
            else:
                target.index_add_(0, self.index, value)

    def rows(self, idx: Tensor) -> "RewardWork":
        """The counters of rows ``idx`` (n,): passes added to them count in these (R,) counters."""
        return replace(self, index=idx if self.index is None else self.index[idx])

    def to(self, device) -> "RewardWork":
        moved = (t.to(device) for t in (self.forwards, self.forward_tokens, self.backwards, self.backward_tokens,
                                        self.flops))
        return RewardWork(*moved, self.parameters)

    def per_prompt(self, samples: int) -> list[dict[str, int]]:
        """Sums over each prompt's ``samples`` consecutive rows: one dict per prompt, keyed by
        ``WORK_FIELDS``."""
        table = torch.stack([self.forwards, self.forward_tokens, self.backwards, self.backward_tokens, self.flops], 1)
        return [dict(zip(WORK_FIELDS, row)) for row in table.view(-1, samples, 5).sum(1).tolist()]


def add_work(*dicts: dict) -> dict:
    """Field-wise sums of per-prompt work dicts."""
    return {key: sum(d.get(key, 0) for d in dicts) for key in WORK_FIELDS}


@dataclass
class RewardPart:
    """One differentiable reward model of the generation, weighted (the reward itself, or a term
    of a composite), for R rows."""

    weight: float
    reward: object            # a differentiable RewardAdapter
    context: object           # its RewardContext for the R rows
    vocab: object             # AlignedVocab: the generating model's tokens as this model's inputs
    template_tokens: Tensor   # (R,) int64 tokens besides the response (chat template, prompt)
    work: RewardWork

    @classmethod
    def build(cls, weight: float, reward, prompts: list[str], *, tokenizer, vocab_size: int, device) -> "RewardPart":
        template = torch.tensor([reward.template_length(p) for p in prompts], dtype=torch.long, device=device)
        return cls(weight=float(weight), reward=reward, context=reward.prepare(list(prompts)),
                   vocab=reward.aligned(tokenizer, vocab_size), template_tokens=template,
                   work=RewardWork.zeros(len(prompts), device, reward.num_parameters))

    def rows(self, idx: Tensor) -> "RewardPart":
        return replace(self, context=self.context.rows(idx), template_tokens=self.template_tokens[idx],
                       work=self.work.rows(idx))

    def for_prompts(self, prompts: list[str]) -> "RewardPart":
        device = self.template_tokens.device
        template = torch.tensor([self.reward.template_length(p) for p in prompts], dtype=torch.long, device=device)
        return replace(self, context=self.reward.prepare(list(prompts)), template_tokens=template,
                       work=RewardWork.zeros(len(prompts), device, self.work.parameters))

    def tokens_read(self, keep: Tensor) -> Tensor:
        """(R,) tokens of an input whose response part is ``keep`` (R, L')."""
        return keep.sum(1) + self.template_tokens


@dataclass
class RewardSide:
    """What a guided step reads besides the canvas, for R rows (see the module docstring)."""

    reward: object                   # the generation's reward adapter (model, composite or text-only)
    parts: list[RewardPart]          # its differentiable terms (none for a text-only reward)
    stop_ids: Tensor                 # (S,) int64 ids that end a response
    prompts: list[str]               # each row's prompt
    decode: Callable | None = None   # a row's token ids -> its response text (the model's stop rule)
    select: object | None = None     # the generation's selector of Top@1 (None: the reward)
    text_work: RewardWork | None = None   # text readings (SMC's potential from a text reward)
    prompt_ids: list | None = None   # each row's prompt id (named when a text reward fails)

    @classmethod
    def build(cls, reward, prompts: list[str], *, tokenizer, vocab_size: int, stop_ids, device,
              decode: Callable | None = None, select=None, prompt_ids: list | None = None) -> "RewardSide":
        """The reward side for rows whose prompts are ``prompts`` (one per row), generated with
        ``tokenizer`` (``vocab_size`` logits), ending at ``stop_ids``."""
        parts = [RewardPart.build(w, term, prompts, tokenizer=tokenizer, vocab_size=vocab_size, device=device)
                 for w, term in reward.parts()]
        return cls(reward=reward, parts=parts, stop_ids=torch.as_tensor(list(stop_ids), dtype=torch.long, device=device),
                   prompts=list(prompts), decode=decode, select=select,
                   text_work=RewardWork.zeros(len(prompts), device),
                   prompt_ids=list(prompt_ids) if prompt_ids is not None else None)

    @property
    def only(self) -> RewardPart:
        """The one differentiable reward model (a composite has one per term: read through
        ``GuidanceStep.read_relaxed``)."""
        if len(self.parts) != 1:
            raise ValueError(f"the reward {type(self.reward).__name__} has {len(self.parts)} differentiable terms, "
                             "not one; read it through GuidanceStep.read_relaxed")
        return self.parts[0]

    def rows(self, idx: Tensor) -> "RewardSide":
        """The reward side of rows ``idx`` (n,) only (their contexts, template tokens and counters)."""
        keep = idx.tolist()
        return replace(self, parts=[p.rows(idx) for p in self.parts], prompts=[self.prompts[i] for i in keep],
                       text_work=self.text_work.rows(idx),
                       prompt_ids=[self.prompt_ids[i] for i in keep] if self.prompt_ids is not None else None)

    def for_prompts(self, prompts: list[str]) -> "RewardSide":
        """The same reward models, alignments and stops for other rows (one prompt per row), with
        fresh work counters."""
        device = self.stop_ids.device
        return replace(self, parts=[p.for_prompts(prompts) for p in self.parts], prompts=list(prompts),
                       text_work=RewardWork.zeros(len(prompts), device), prompt_ids=None)

    def per_prompt(self, samples: int) -> list[dict]:
        """Every model's work per prompt (sums over its ``samples`` rows), added up."""
        works = [p.work.per_prompt(samples) for p in self.parts] + [self.text_work.per_prompt(samples)]
        return [add_work(*prompt) for prompt in zip(*works)]
