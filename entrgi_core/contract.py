"""The contract between a denoising loop and its guidance strategies.

Each step the loop builds a ``GuidanceStep`` (the canvas, the masked positions, the sampling
settings and the generation's ``RewardSide``), asks the strategy ``guides(step, phi)`` and, when it
does, calls ``refine(phi, step)``, which returns a ``GuidanceOutput``. Particle strategies
(``particles = True``, e.g. ``guidance.SMC``) also get ``begin`` once and ``observe(state, step,
update)`` after every commit, and may return ancestors to reorder rows within each prompt. The
step carries the loop's own temperature, top-p and top-k (one source of truth); ``step.read`` and
``step.score`` run the reward model on relaxed inputs and count the work. ``AlignedVocab`` is how
the generating model's tokens enter the reward model. Strategies live in ``guidance/`` and build
on this module; nothing in the core imports ``guidance/`` or ``rewards/``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor, nn

from entrgi_core import rng
from entrgi_core.draws import sample_tokens
from entrgi_core.errors import ScoreError
from entrgi_core.ops import relax_embeddings
from entrgi_core.reward_side import RewardPart, RewardSide


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

    base: Tensor         # (R, L', D) committed tokens' RM embeddings; relaxed slots are zero
    offsets: Tensor      # (R, L + 1) first RM position of each canvas position; last = row length
    slots: Tensor        # (N,) RM position of each masked canvas position


def pack_response(vocab: AlignedVocab, tokens: Tensor, rows: Tensor, cols: Tensor) -> PackedResponse:
    """Lay the canvas ``tokens`` (R, L), whose masked positions are ``(rows, cols)`` (N,), out in RM
    positions: committed tokens as their pieces, masked positions one slot each. One host sync
    (the packed length)."""
    r, length = tokens.shape
    committed = vocab.counts[tokens].index_put((rows, cols), torch.zeros_like(rows))  # (R, L) pieces
    count = committed.index_put((rows, cols), torch.ones_like(rows))      # and a relaxed slot each
    ends = count.cumsum(1)                                                # (R, L)
    offsets = torch.cat([torch.zeros_like(ends[:, :1]), ends], dim=1)     # (R, L + 1)
    width = max(1, int(ends[:, -1].max())) if length else 1               # the one sync
    k = torch.arange(vocab.max_pieces, device=tokens.device)
    slot = offsets[:, :-1, None] + k                                      # (R, L, P)
    slot = torch.where(k < committed[..., None], slot, width)             # unused pieces -> a spare slot
    ids = vocab.pieces[tokens]                                            # (R, L, P)
    dim = vocab.rm_table.shape[1]
    base = vocab.rm_table.new_zeros(r, width + 1, dim)
    row = torch.arange(r, device=tokens.device)[:, None, None].expand_as(slot)
    base = base.index_put((row, slot), vocab.rm_table[ids])[:, :width]    # (R, L', D)
    return PackedResponse(base.detach(), offsets, offsets[rows, cols])


@dataclass(frozen=True)
class Sampling:
    """The distribution a loop draws tokens from: logits / temperature (0 = greedy), then top-p
    and top-k, renormalised (``entrgi_core.draws``)."""

    temperature: float
    top_p: float = 1.0
    top_k: int | None = None


class Relaxation(NamedTuple):
    """How a strategy relaxes masked positions for the reward model (``ops.relax_embeddings``)."""

    gate: str                     # "entropy" (EntRGi), "ste" (APS) or "soft" (Expectation)
    temperature: float            # tau of q = softmax(phi / tau) and of the hard samples
    top_p: float                  # nucleus of the hard samples
    entropy_temperature: float    # tau_H of the entropy gate


def default_relaxation(step: "GuidanceStep") -> Relaxation:
    """EntRGi's gate at the loop's own sampling settings (tau_H = 1)."""
    return Relaxation("entropy", step.temperature, step.top_p, 1.0)


class Reading(NamedTuple):
    """One reading of the reward over R rows: their rewards, and the tokens each row's input had in
    each differentiable reward model (one entry per ``side.parts``)."""

    rewards: Tensor                 # (R,)
    tokens: tuple[Tensor, ...]      # per part: (R,) int64 reward-model tokens of each row's input


def _field(owner: str, name: str, doc: str | None = None) -> property:
    """A read-only attribute of the step that is ``step.<owner>.<name>``."""
    return property(lambda self: getattr(getattr(self, owner), name), doc=doc or f"``{owner}.{name}``")


@dataclass(frozen=True, kw_only=True)
class GuidanceStep:
    """What a strategy sees at denoising step ``index`` of at most ``total`` (R = B*K rows, L
    response positions, N masked positions over all rows)."""

    index: int                    # steps taken before this one
    total: int                    # T, the loop's (maximum) number of steps
    side: RewardSide | None       # the reward side of the generation (None: no reward model is read)
    tokens: Tensor                # (R, L) response canvas; masked positions hold the mask id
    rows: Tensor                  # (N,) row of each masked position
    cols: Tensor                  # (N,) column of each masked position
    keys: Tensor                  # (R,) per-row random keys
    samples: int                  # K: rows b*K .. b*K + K - 1 are prompt b's samples
    sampling: Sampling            # the loop's own temperature, top-p and top-k (one source of truth)
    diagnose: bool = False        # also report diagnostics that cost compute (reward after)

    # --- the reward side's and the sampling settings' fields, by name
    @property
    def reward(self):
        return self.side.reward if self.side is not None else None

    @property
    def part(self) -> RewardPart:
        """The one differentiable reward model (``side.only``)."""
        return self.side.only

    context = _field("part", "context")
    vocab = _field("part", "vocab", "AlignedVocab: the generating model's tokens as reward-model inputs")
    work = _field("part", "work", "the reward model's RewardWork counters")
    stop_ids = _field("side", "stop_ids", "(S,) ids that end a response")
    temperature = _field("sampling", "temperature")
    top_p = _field("sampling", "top_p")
    top_k = _field("sampling", "top_k")

    @property
    def table(self) -> Tensor:
        """(V, D) stand-in embeddings of the relaxation."""
        return self.part.vocab.table

    # --- random draws
    @cached_property
    def packed(self) -> PackedResponse:
        return self._packs[0]

    @cached_property
    def _packs(self) -> list[PackedResponse]:
        return [pack_response(part.vocab, self.tokens, self.rows, self.cols) for part in self.side.parts]

    def uniforms(self, inner: int) -> Tensor:
        """(N,) uniforms for the hard samples of inner step ``inner``."""
        return rng.uniform(rng.derive(self.keys[self.rows], rng.HARD, self.index, inner, self.cols))

    def hard_tokens(self, phi: Tensor, inner: int, *, temperature: float, top_p: float) -> Tensor:
        """(N,) hard samples of ``phi`` (N, V) at inner step ``inner``, filtered by the sampler's top-k."""
        with torch.no_grad():
            return sample_tokens(phi.detach(), self.uniforms(inner), temperature=temperature, top_p=top_p,
                                 top_k=self.top_k)[0]

    # --- the reward model
    def reward_inputs(self, relaxed: Tensor, phi: Tensor, part: int = 0) -> tuple[Tensor, Tensor]:
        """Inputs (R, L', D) of reward model ``part`` with the masked positions' ``relaxed``
        embeddings (N, D), and the (R, L') prefix mask of the response: up to its first stop token,
        reading masked positions as ``argmax(phi)``."""
        pk = self._packs[part]
        embeds = pk.base.to(relaxed.dtype).index_put((self.rows, pk.slots), relaxed)
        cand = self.tokens.index_put((self.rows, self.cols), phi.detach().argmax(-1))
        stop = torch.isin(cand, self.stop_ids)                                      # (R, L)
        length = cand.shape[1]
        first = torch.where(stop.any(1), stop.int().argmax(1), torch.full_like(stop[:, 0], length, dtype=torch.long))
        end = pk.offsets.gather(1, first[:, None])                                  # (R, 1)
        keep = torch.arange(embeds.shape[1], device=embeds.device)[None, :] < end
        return embeds, keep

    def read(self, relaxed: Tensor, phi: Tensor) -> Reading:
        """One forward of the (one) reward model on the canvas with the masked positions relaxed to
        ``relaxed`` (N, D), counted in ``work``; count a backward where it runs
        (``step.count_backward(reading)``)."""
        return self._read_part(0, relaxed, phi)

    def _read_part(self, i: int, relaxed: Tensor, phi: Tensor) -> Reading:
        part = self.side.parts[i]
        embeds, keep = self.reward_inputs(relaxed, phi, i)
        rewards = part.reward.score_embeds(part.context, embeds, keep)
        tokens = part.tokens_read(keep)
        part.work.add_forward(tokens)
        return Reading(rewards, (tokens,))

    def read_relaxed(self, phi: Tensor, hard: Tensor, relaxation: Relaxation) -> tuple[Reading, Tensor]:
        """The reward (R,) of the canvas with every masked position relaxed from ``phi`` (N, V) with
        hard samples ``hard`` (N,): the weighted sum over the reward's differentiable terms, each
        relaxed in its own model's embeddings (gradients flow through every term); and the gate
        weights (N,). One forward of each model, counted."""
        total, tokens, weight = 0.0, [], None
        for i, part in enumerate(self.side.parts):
            out = relax_embeddings(phi, part.vocab.table, hard, gate=relaxation.gate, temperature=relaxation.temperature,
                                   entropy_temperature=relaxation.entropy_temperature, validate=False)
            reading = self._read_part(i, out.embeds, phi)
            total = total + part.weight * reading.rewards
            tokens.append(reading.tokens[0])
            weight = out.weight if weight is None else weight
        return Reading(total, tuple(tokens)), weight

    def count_backward(self, reading: Reading) -> None:
        """One backward through every model of ``reading``."""
        for part, tokens in zip(self.side.parts, reading.tokens):
            part.work.add_backward(tokens)

    def score(self, relaxed: Tensor, phi: Tensor) -> Tensor:
        """Rewards (R,) of the canvas with the masked positions relaxed to ``relaxed`` (N, D)."""
        return self.read(relaxed, phi).rewards

    def read_text(self, tokens: Tensor, scorer=None) -> Tensor:
        """Rewards (R,) of the rows' responses ``tokens`` (R, L) as text, by ``scorer`` (default: the
        generation's reward), counted as text readings. One host sync (the decoding)."""
        scorer = scorer if scorer is not None else self.side.reward
        texts = [self.side.decode(row) for row in tokens.tolist()]
        names = self.side.prompt_ids if self.side.prompt_ids is not None else self.side.prompts
        try:
            rewards = torch.as_tensor(scorer.score_text(self.side.prompts, texts), dtype=torch.float32)
        except ScoreError as exc:
            rows = exc.rows or range(len(texts))
            raise ScoreError(f"{scorer.name!r} could not score the partial responses of prompt id(s) "
                             f"{list(dict.fromkeys(names[r] for r in rows))}: {exc}", rows=exc.rows) from exc
        bad = (~torch.isfinite(rewards)).nonzero()[:, 0].tolist()
        if bad:
            raise ScoreError(f"{scorer.name!r} returned a non-finite score for the partial responses of prompt id(s) "
                             f"{list(dict.fromkeys(names[r] for r in bad))}", rows=bad)
        rewards = rewards.to(tokens.device)
        read = [scorer.text_tokens(p, t) for p, t in zip(self.side.prompts, texts)]
        self.side.text_work.add_forward(torch.tensor(read, dtype=torch.long, device=tokens.device),
                                        parameters=getattr(scorer, "num_parameters", 0))
        return rewards


@dataclass(frozen=True)
class GuidanceOutput:
    """What ``refine`` returns: the refined logits and per-row diagnostics of this step."""

    logits: Tensor                        # (N, V) float32
    weight: Tensor | None = None          # (N,) gate weight w of each masked position (first inner step)
    reward_before: Tensor | None = None   # (R,) reward of the relaxed input before the update
    reward_after: Tensor | None = None    # (R,) after it (only when step.diagnose: one more RM forward)


@dataclass(frozen=True)
class StepUpdate:
    """What one denoising step did at its N masked positions (given to ``Guidance.observe``)."""

    base: Tensor          # (N, V) the model's logits, before guidance
    proposal: Tensor      # (N, V) the logits the tokens were sampled from (``base`` itself when unguided)
    sampled: Tensor       # (N,) the token drawn at each masked position of its row's current block (the mask
                          # id at the others, which cannot be committed at this step)
    committed: Tensor     # (N,) bool: committed at this step (the others stay masked)
    tokens: Tensor        # (R, L) the response canvas after the commit
    blocks_done: Tensor | None = None   # (R,) leading blocks each row has fully committed after the commit


class Guidance(nn.Module, abc.ABC):
    """A guidance strategy: refines the masked positions' logits at a denoising step.

    Subclasses implement ``refine``; ``needs_reward`` says whether it reads the reward model (and
    so needs a vocabulary alignment); ``active`` is its step schedule and ``guides`` the one answer
    to "is this step guided", asked once per step by every loop before ``refine`` (which is called
    only then). Steps are counted as taken: ``every=k`` always means steps 0, k, 2k, ...
    ``particles`` is True for strategies that act on a prompt's K samples together (``begin``
    returns their state, and the loop must be able to resample rows).
    """

    name: str = "guidance"
    particles: bool = False

    @property
    def needs_reward(self) -> bool:
        return True

    def active(self, index: int, total: int) -> bool:
        """Whether the step schedule includes step ``index`` of at most ``total``."""
        return self.needs_reward

    def guides(self, step: GuidanceStep, phi: Tensor) -> bool:
        """Whether ``refine`` runs at ``step`` on the masked positions' logits ``phi`` (N, V)."""
        return self.needs_reward and phi.shape[0] > 0 and self.active(step.index, step.total)

    @property
    def reads_embeddings(self) -> bool:
        """Whether it reads the reward on relaxed embeddings (and so needs a differentiable reward
        with a vocabulary alignment), rather than on text or not at all."""
        return self.needs_reward

    @property
    def uses_total(self) -> bool:
        """Whether ``active`` depends on the total number of steps (a loop that cannot say how many
        steps it takes must then be told)."""
        return False

    def relaxation(self, step: GuidanceStep) -> Relaxation:
        """How this strategy's reward model reads a masked position (default: EntRGi's gate)."""
        return default_relaxation(step)

    def check(self, temperature: float, top_p: float) -> None:
        """Called once before sampling with the sampler's settings: raise if they cannot work."""

    @abc.abstractmethod
    def refine(self, phi: Tensor, step: GuidanceStep) -> GuidanceOutput:
        """Refined logits (N, V) float32 from the model's logits ``phi`` (N, V), plus diagnostics."""

    def begin(self, prompts: int, samples: int, device) -> object | None:
        """Per-generation state of a particle strategy (``particles``); None for the others."""
        return None

    def observe(self, state, step: GuidanceStep, update: StepUpdate) -> Tensor | None:
        """Called after every commit when ``begin`` gave a state: (R,) ancestor row of each row (rows
        of the same prompt only) to resample the samples, or None to keep them. The sampler reorders
        the canvas by it; each row keeps its own random keys."""
        return None

    def report(self, state) -> dict[str, list]:
        """Per-prompt diagnostics of a generation (each value a list of B JSON-ready items)."""
        return {}

    def settings(self) -> dict:
        """What determines this strategy's behaviour (for run records and the resume check)."""
        return {"class": f"{type(self).__module__}.{type(self).__name__}"}
