"""The contract between a denoising loop and its guidance strategies.

Each step the loop builds a ``GuidanceStep`` (the canvas, the masked positions, the sampling
settings and the generation's ``RewardSide``), asks the strategy ``guides(step, phi)`` and, when it
does, calls ``refine(phi, step)``, which returns a ``GuidanceOutput``. Particle strategies
(``particles = True``, e.g. ``guidance.SMC``) also get ``begin`` once and ``observe(state, step,
update)`` after every commit, and may return ancestors to reorder rows within each prompt. The
step carries the loop's own temperature, top-p and top-k (one source of truth); ``step.read`` (the
reward of relaxed inputs) and ``step.read_text`` are the one way to read the reward, and each
reading counts its own work (``entrgi_core.reward_side``). Strategies live in ``guidance/`` and build
on this module; nothing in the core imports ``guidance/`` or ``rewards/``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from entrgi_core import rng
from entrgi_core.draws import sample_tokens
from entrgi_core.reward_side import AlignedVocab, Reading, Relaxation, ResponseCanvas, RewardSide
from entrgi_core.settings import settings

__all__ = ["AlignedVocab", "Reading", "Relaxation", "Sampling", "GuidanceStep", "GuidanceOutput", "StepUpdate",
           "Guidance", "default_relaxation"]


@dataclass(frozen=True)
class Sampling:
    """The distribution a loop draws tokens from: logits / temperature (0 = greedy), then top-p
    and top-k, renormalised (``entrgi_core.draws``)."""

    temperature: float
    top_p: float = 1.0
    top_k: int | None = None


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

    stop_ids = _field("side", "stop_ids", "(S,) ids that end a response")
    temperature = _field("sampling", "temperature")
    top_p = _field("sampling", "top_p")
    top_k = _field("sampling", "top_k")

    @cached_property
    def canvas(self) -> ResponseCanvas:
        """The response canvas and its masked positions, as the reward side reads them."""
        return ResponseCanvas(self.tokens, self.rows, self.cols)

    # --- random draws
    def uniforms(self, inner: int) -> Tensor:
        """(N,) uniforms for the hard samples of inner step ``inner``."""
        return rng.uniform(rng.derive(self.keys[self.rows], rng.HARD, self.index, inner, self.cols))

    def hard_tokens(self, phi: Tensor, inner: int, *, temperature: float, top_p: float) -> Tensor:
        """(N,) hard samples of ``phi`` (N, V) at inner step ``inner``, filtered by the sampler's top-k."""
        with torch.no_grad():
            return sample_tokens(phi.detach(), self.uniforms(inner), temperature=temperature, top_p=top_p,
                                 top_k=self.top_k)[0]

    # --- the reward (one API: ``RewardSide.read`` / ``read_text``, which count their own work)
    def read(self, phi: Tensor, relaxation: Relaxation | None = None, *, inner: int = 0,
             hard: Tensor | None = None) -> Reading:
        """The reward (R,) of the canvas with every masked position relaxed from ``phi`` (N, V) by
        ``relaxation`` (default: EntRGi's gate at the loop's sampling settings), with inner step
        ``inner``'s hard samples (or ``hard`` (N,)); every term of a composite reward is read, and
        every pass is counted, a backward when it runs."""
        rel = relaxation if relaxation is not None else default_relaxation(self)
        if hard is None and rel.reads_hard:
            hard = self.hard_tokens(phi, inner, temperature=rel.temperature, top_p=rel.top_p)
        elif hard is None:                                                # never read: not drawn
            hard = torch.zeros(phi.shape[0], dtype=torch.long, device=phi.device)
        return self.side.read(self.canvas, phi, hard, rel)

    def read_text(self, tokens: Tensor, scorer=None) -> Tensor:
        """Rewards (R,) of the rows' responses ``tokens`` (R, L) as text (``RewardSide.read_text``)."""
        return self.side.read_text(tokens, scorer)


def default_relaxation(step: GuidanceStep) -> Relaxation:
    """EntRGi's gate at the loop's own sampling settings (tau_H = 1)."""
    return Relaxation("entropy", step.temperature, step.top_p, 1.0)


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
        """What determines this strategy's behaviour (for run records and the resume check): its
        class and constructor arguments (``entrgi_core.settings``)."""
        return settings(self)
