"""The reward side of one generation, and the one way to read it: built once, by either loop (our
sampler, or a guide inside another library's loop), and carried by every ``GuidanceStep``.

``RewardSide`` holds the generation's reward (any adapter: a differentiable model, a composite of
weighted terms, or a text-only reward), its selector, each row's prompt, the ids that end a
response and a decoder of response tokens. ``parts`` are the reward's differentiable terms, one
``RewardPart`` each with its own context for the R rows (cached chat prefix/suffix), the
vocabulary alignment of the generating model's tokenizer to that term's reward model, the
template tokens each row's input carries besides the response, and ``RewardWork``, the counters
of that model's passes.

**Reading.** ``RewardSide.read(canvas, phi, hard, relaxation)`` scores a ``ResponseCanvas`` (the
response tokens and its masked positions) with every masked position relaxed from its logits
``phi``: the weighted sum over the differentiable terms, each in its own model's embeddings. A
reading counts its own work: one forward of each model at once, and one backward of each model
whenever a gradient flows back through that model's input (a hook on it), so a strategy can
neither forget to count a backward nor count one that did not run. ``read_text`` scores decoded
responses with a text reward (the generation's reward or any scorer), counted as text readings.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from entrgi_core.errors import ScoreError
from entrgi_core.ops import relax_embeddings

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


@dataclass(frozen=True)
class AlignedVocab:
    """dLLM tokens as reward-model inputs (built by ``RewardAdapter.aligned``).

    A committed dLLM token ``v`` enters the reward model as the RM's own tokens for its text,
    ``pieces[v, :counts[v]]`` (a token the RM splits, e.g. ``overpriced`` -> ``over ##priced``,
    takes two positions; a special token the decoded text drops takes none). A relaxed (masked)
    position takes one position, the gated mix of rows of ``table``, whose row ``v`` is the mean
    RM embedding of ``v``'s pieces (the stand-in for split tokens).
    """

    table: Tensor        # (V, D) stand-in embedding of each dLLM token, for the relaxation
    pieces: Tensor       # (V, P) int64 RM token ids of each dLLM token's text, right-padded
    counts: Tensor       # (V,) int64 number of pieces, 0..P
    rm_table: Tensor     # (V_R, D) the reward model's input embeddings

    @property
    def vocab_size(self) -> int:
        return self.table.shape[0]

    @property
    def max_pieces(self) -> int:
        return self.pieces.shape[1]


@dataclass(frozen=True)
class PackedResponse:
    """The response canvas of one denoising step laid out in reward-model positions."""

    base: Tensor         # (R, L' + 1, D) committed tokens' RM embeddings; relaxed slots are zero; the last
                         # column is a spare where what no reading reaches is put
    offsets: Tensor      # (R, L + 1) first RM position of each canvas position; last = row length
    slots: Tensor        # (N,) RM position of each masked canvas position


def pack_response(vocab: AlignedVocab, tokens: Tensor, rows: Tensor, cols: Tensor,
                  stop_ids: Tensor | None = None) -> PackedResponse:
    """Lay the canvas ``tokens`` (R, L), whose masked positions are ``(rows, cols)`` (N,), out in RM
    positions: committed tokens as their pieces, masked positions one slot each. With ``stop_ids``,
    nothing from a row's first committed stop token on is laid out (no reading can reach past it),
    so a batch whose responses have all ended runs the reward model over them only. One host sync
    (the packed length)."""
    r, length = tokens.shape
    committed = vocab.counts[tokens].index_put((rows, cols), torch.zeros_like(rows))  # (R, L) pieces
    count = committed.index_put((rows, cols), torch.ones_like(rows))      # and a relaxed slot each
    ends = count.cumsum(1)                                                # (R, L)
    offsets = torch.cat([torch.zeros_like(ends[:, :1]), ends], dim=1)     # (R, L + 1)
    last = offsets[:, -1]                                                 # (R,) each row's packed length
    if stop_ids is not None and length:                                   # ... up to its first committed stop
        stop = torch.isin(tokens, stop_ids).index_put((rows, cols), torch.zeros_like(rows, dtype=torch.bool))
        first = torch.where(stop.any(1), stop.int().argmax(1), torch.full_like(last, length))
        last = offsets.gather(1, first[:, None])[:, 0]
    width = max(1, int(last.max())) if length else 1                      # the one sync
    k = torch.arange(vocab.max_pieces, device=tokens.device)
    slot = offsets[:, :-1, None] + k                                      # (R, L, P)
    slot = torch.where((k < committed[..., None]) & (slot < width), slot, width)   # unused -> a spare slot
    ids = vocab.pieces[tokens]                                            # (R, L, P)
    dim = vocab.rm_table.shape[1]
    base = vocab.rm_table.new_zeros(r, width + 1, dim)
    row = torch.arange(r, device=tokens.device)[:, None, None].expand_as(slot)
    base = base.index_put((row, slot), vocab.rm_table[ids])               # (R, L' + 1, D): the spare last
    return PackedResponse(base.detach(), offsets.clamp(max=width), offsets[rows, cols].clamp(max=width))


class Relaxation(NamedTuple):
    """How masked positions enter the reward model (``ops.relax_embeddings``)."""

    gate: str | Tensor            # "entropy" (EntRGi), "ste" (APS), "soft" (Expectation), or weights (N,)
    temperature: float            # tau of q = softmax(phi / tau) and of the hard samples
    top_p: float                  # nucleus of the hard samples
    entropy_temperature: float    # tau_H of the entropy gate

    @property
    def reads_hard(self) -> bool:
        """Whether the hard samples enter the input (the soft gate's w = 0 never reads them)."""
        return not (isinstance(self.gate, str) and self.gate == "soft")


class Reading(NamedTuple):
    """One reading of the reward over R rows."""

    rewards: Tensor                 # (R,) the weighted sum over the reward's differentiable terms
    tokens: tuple[Tensor, ...]      # per part: (R,) int64 reward-model tokens of each row's input
    weight: Tensor | None = None    # (N,) gate weight of each masked position (the first part's)


@dataclass(frozen=True)
class ResponseCanvas:
    """The response canvas a reading is of: ``tokens`` (R, L), masked at ``(rows, cols)`` (N,). Its
    layouts in each reward model's positions are built once and kept (one host sync each)."""

    tokens: Tensor
    rows: Tensor
    cols: Tensor
    _packs: dict = field(default_factory=dict, compare=False, repr=False)

    def packed(self, vocab: AlignedVocab, stop_ids: Tensor | None = None) -> PackedResponse:
        key = id(vocab)
        if key not in self._packs:
            self._packs[key] = pack_response(vocab, self.tokens, self.rows, self.cols, stop_ids)
        return self._packs[key]

    def inputs(self, vocab: AlignedVocab, relaxed: Tensor, phi: Tensor, stop_ids: Tensor) -> tuple[Tensor, Tensor]:
        """A reward model's inputs (R, L', D) with the masked positions' ``relaxed`` embeddings (N, D),
        and the (R, L') prefix mask of the response: up to its first stop token, reading masked
        positions as ``argmax(phi)``."""
        pk = self.packed(vocab, stop_ids)
        embeds = pk.base.to(relaxed.dtype).index_put((self.rows, pk.slots), relaxed)[:, :-1]   # (R, L', D)
        cand = self.tokens.index_put((self.rows, self.cols), phi.detach().argmax(-1))
        stop = torch.isin(cand, stop_ids)                                          # (R, L)
        length = cand.shape[1]
        first = torch.where(stop.any(1), stop.int().argmax(1), torch.full_like(stop[:, 0], length, dtype=torch.long))
        end = pk.offsets.gather(1, first[:, None])                                 # (R, 1)
        keep = torch.arange(embeds.shape[1], device=embeds.device)[None, :] < end
        return embeds, keep


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

    def read(self, canvas: ResponseCanvas, phi: Tensor, hard: Tensor, relaxation: Relaxation) -> Reading:
        """The reward of ``canvas`` with its N masked positions relaxed from ``phi`` (N, V) with hard
        samples ``hard`` (N,): the weighted sum over the differentiable terms, each relaxed in its own
        model's embeddings (gradients reach ``phi`` through every term). Counts one forward of each
        model now, and one backward of each whenever a gradient flows back through it."""
        total, tokens, weight = 0.0, [], None
        for part in self.parts:
            out = relax_embeddings(phi, part.vocab.table, hard, gate=relaxation.gate,
                                   temperature=relaxation.temperature,
                                   entropy_temperature=relaxation.entropy_temperature, validate=False)
            embeds, keep = canvas.inputs(part.vocab, out.embeds, phi, self.stop_ids)
            read = part.tokens_read(keep)
            part.work.add_forward(read)
            if embeds.requires_grad:                       # the backward counts itself when it runs
                embeds.register_hook(_count_backward(part.work, read))
            total = total + part.weight * part.reward.score_embeds(part.context, embeds, keep)
            tokens.append(read)
            weight = out.weight if weight is None else weight
        return Reading(total, tuple(tokens), weight)

    def read_text(self, tokens: Tensor, scorer=None) -> Tensor:
        """Rewards (R,) of the rows' responses ``tokens`` (R, L) as text, by ``scorer`` (default: the
        generation's reward), counted as text readings. One host sync (the decoding)."""
        scorer = scorer if scorer is not None else self.reward
        texts = [self.decode(row) for row in tokens.tolist()]
        names = self.prompt_ids if self.prompt_ids is not None else self.prompts
        try:
            rewards = torch.as_tensor(scorer.score_text(self.prompts, texts), dtype=torch.float32)
        except ScoreError as exc:
            rows = exc.rows or range(len(texts))
            raise ScoreError(f"{scorer.name!r} could not score the partial responses of prompt id(s) "
                             f"{list(dict.fromkeys(names[r] for r in rows))}: {exc}", rows=exc.rows) from exc
        bad = (~torch.isfinite(rewards)).nonzero()[:, 0].tolist()
        if bad:
            raise ScoreError(f"{scorer.name!r} returned a non-finite score for the partial responses of prompt id(s) "
                             f"{list(dict.fromkeys(names[r] for r in bad))}", rows=bad)
        rewards = rewards.to(tokens.device)
        read = [scorer.text_tokens(p, t) for p, t in zip(self.prompts, texts)]
        self.text_work.add_forward(torch.tensor(read, dtype=torch.long, device=tokens.device),
                                   parameters=getattr(scorer, "num_parameters", 0))
        return rewards

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


def _count_backward(work: RewardWork, tokens: Tensor):
    """A gradient hook that counts one backward through ``tokens`` (R,) in ``work`` and leaves the
    gradient as it is."""
    def hook(grad: Tensor) -> None:
        work.add_backward(tokens)
    return hook
