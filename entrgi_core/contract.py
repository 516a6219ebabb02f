"""The contract between the sampler and its guidance strategies.

Each denoising step the sampler builds a ``GuidanceStep`` (by keyword) and, when the strategy is
``active``, calls ``strategy.refine(phi, step)``, which returns a ``GuidanceOutput``. Strategies
that act on a prompt's K samples together (particle methods, ``guidance.SMC``) also return a
state from ``begin``; the sampler then calls ``observe(state, step, update)`` after every commit
and reorders its rows within each prompt by the ancestors it returns. The step
carries the sampler's own temperature, top-p and top-k (one source of truth) and everything a
strategy needs to score relaxed inputs with the reward model; ``AlignedVocab`` is how dLLM
tokens enter the reward model. Strategies live in ``guidance/`` and build on this module; the
sampler imports nothing from ``guidance/`` or ``rewards/``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from entrgi_core import rng
from entrgi_core.sampling import sample_tokens


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


@dataclass(frozen=True, kw_only=True)
class GuidanceStep:
    """What a strategy sees at denoising step ``index`` of ``total`` (R = B*K rows, L response
    positions, N masked positions over all rows)."""

    index: int
    total: int
    reward: object | None         # RewardAdapter (None only when the strategy reads no reward model)
    context: object | None        # its RewardContext for the R rows
    vocab: AlignedVocab | None
    tokens: Tensor                # (R, L) response canvas; masked positions hold the mask id
    rows: Tensor                  # (N,) row of each masked position
    cols: Tensor                  # (N,) column of each masked position
    stop_ids: Tensor              # (S,) ids that end a response
    keys: Tensor                  # (R,) per-row random keys
    samples: int                  # K: rows b*K .. b*K + K - 1 are prompt b's samples
    temperature: float            # the sampler's tau (0 = greedy)
    top_p: float                  # the sampler's nucleus
    top_k: int | None             # the sampler's top-k
    diagnose: bool = False        # also report diagnostics that cost compute (reward after)
    template_tokens: Tensor | None = None  # (R,) RM tokens besides the response (chat template, prompt)
    usage: Tensor | None = None   # (R, 4) int64 counters, added to in place: RM forwards, their tokens,
                                  # backwards, their tokens (see ``score``)

    @property
    def table(self) -> Tensor:
        """(V, D) stand-in embeddings of the relaxation."""
        return self.vocab.table

    @cached_property
    def packed(self) -> PackedResponse:
        return pack_response(self.vocab, self.tokens, self.rows, self.cols)

    def uniforms(self, inner: int) -> Tensor:
        """(N,) uniforms for the hard samples of inner step ``inner``."""
        return rng.uniform(rng.derive(self.keys[self.rows], rng.HARD, self.index, inner, self.cols))

    def hard_tokens(self, phi: Tensor, inner: int, *, temperature: float, top_p: float) -> Tensor:
        """(N,) hard samples of ``phi`` (N, V) at inner step ``inner``, filtered by the sampler's top-k."""
        with torch.no_grad():
            return sample_tokens(phi.detach(), self.uniforms(inner), temperature=temperature, top_p=top_p,
                                 top_k=self.top_k)[0]

    def reward_inputs(self, relaxed: Tensor, phi: Tensor) -> tuple[Tensor, Tensor]:
        """RM inputs (R, L', D) with the masked positions' ``relaxed`` embeddings (N, D), and the
        (R, L') prefix mask of the response: up to its first stop token, reading masked positions
        as ``argmax(phi)``."""
        pk = self.packed
        embeds = pk.base.to(relaxed.dtype).index_put((self.rows, pk.slots), relaxed)
        cand = self.tokens.index_put((self.rows, self.cols), phi.detach().argmax(-1))
        stop = torch.isin(cand, self.stop_ids)                                      # (R, L)
        length = cand.shape[1]
        first = torch.where(stop.any(1), stop.int().argmax(1), torch.full_like(stop[:, 0], length, dtype=torch.long))
        end = pk.offsets.gather(1, first[:, None])                                  # (R, 1)
        keep = torch.arange(embeds.shape[1], device=embeds.device)[None, :] < end
        return embeds, keep

    def score(self, relaxed: Tensor, phi: Tensor) -> Tensor:
        """Rewards (R,) of the canvas with the masked positions relaxed to ``relaxed`` (N, D)."""
        embeds, keep = self.reward_inputs(relaxed, phi)
        rewards = self.reward.score_embeds(self.context, embeds, keep)
        if self.usage is not None:                # on device: no host sync
            tokens = keep.sum(1) + (self.template_tokens if self.template_tokens is not None else 0)
            self.usage[:, 0] += 1
            self.usage[:, 1] += tokens
            if torch.is_grad_enabled() and rewards.requires_grad:   # a backward follows in the gradient loop
                self.usage[:, 2] += 1
                self.usage[:, 3] += tokens
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
    sampled: Tensor       # (N,) the token sampled at each masked position
    committed: Tensor     # (N,) bool: committed at this step (the others stay masked)
    tokens: Tensor        # (R, L) the response canvas after the commit


class Guidance(nn.Module, abc.ABC):
    """A guidance strategy: refines the masked positions' logits at a denoising step.

    Subclasses implement ``refine``; ``needs_reward`` says whether it reads the reward model (and
    so needs a vocabulary alignment); ``active`` says at which steps it runs (others are unguided).
    """

    name: str = "guidance"

    @property
    def needs_reward(self) -> bool:
        return True

    def active(self, index: int, total: int) -> bool:
        return self.needs_reward

    def check(self, temperature: float, top_p: float) -> None:
        """Called once before sampling with the sampler's settings: raise if they cannot work."""

    @abc.abstractmethod
    def refine(self, phi: Tensor, step: GuidanceStep) -> GuidanceOutput:
        """Refined logits (N, V) float32 from the model's logits ``phi`` (N, V), plus diagnostics."""

    def begin(self, prompts: int, samples: int, device) -> object | None:
        """Per-generation state for a strategy that acts on each prompt's K samples together (a
        particle method); None (the default) for strategies that guide each sample on its own."""
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
