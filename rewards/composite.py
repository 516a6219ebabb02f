"""Sum: a weighted sum of rewards, ``sum_i w_i r_i``.

    Sum([(1.0, HFRewardModel(path)), (0.5, HFRewardModel(other)), (0.2, TextReward(length_penalty))])

Differentiable terms guide: each term's reward model reads the canvas relaxed in its own
embeddings (its own vocabulary alignment), so the gradient of the sum is the weighted sum of the
terms' gradients (tested). Text terms (``TextReward``) count where the sum is read on text: the
final scores, selection, judging, and SMC's potential on text. Records carry each term's score
of every response (``reward_terms``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from entrgi_core.errors import InputError
from rewards.base import RewardAdapter


class Sum(RewardAdapter):
    """``terms``: (weight, reward) pairs; a term may itself be a ``Sum``."""

    def __init__(self, terms: list[tuple[float, RewardAdapter]], name: str | None = None):
        super().__init__()
        if not isinstance(terms, (list, tuple)) or not terms:
            raise InputError("Sum: terms must be a non-empty list of (weight, reward) pairs")
        weights, rewards = [], []
        for i, term in enumerate(terms):
            if not (isinstance(term, (list, tuple)) and len(term) == 2 and isinstance(term[1], RewardAdapter)):
                raise InputError(f"Sum: term {i} must be a (weight, reward adapter) pair, got {term!r}")
            weight = term[0]
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
                raise InputError(f"Sum: the weight of term {i} must be a number, got {weight!r}")
            weights.append(float(weight))
            rewards.append(term[1])
        self.weights = weights
        self.terms = nn.ModuleList(rewards)
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise InputError(f"Sum: terms need distinct names (records are keyed by them), got {names}")
        self.name = name or "sum(" + ", ".join(f"{w:g} {n}" for w, n in zip(weights, names)) + ")"

    @property
    def differentiable(self) -> bool:
        return any(r.differentiable for r in self.terms)

    def parts(self) -> list[tuple[float, RewardAdapter]]:
        return [(w * inner_w, part) for w, r in zip(self.weights, self.terms) for inner_w, part in r.parts()]

    def score_text(self, prompts: list[str], responses: list[str]) -> Tensor:
        return self.combine(self.term_scores(prompts, responses))

    def term_scores(self, prompts: list[str], responses: list[str]) -> dict[str, Tensor]:
        """Each term's (unweighted) text score of each response, by the term's name."""
        return {r.name: r.score_text(prompts, responses).float().cpu() for r in self.terms}

    def identity(self) -> dict:
        return {**super().identity(), "terms": [[w, r.identity()] for w, r in zip(self.weights, self.terms)]}

    @property
    def term_names(self) -> list[str]:
        return [r.name for r in self.terms]

    def combine(self, terms: dict[str, Tensor]) -> Tensor:
        """The weighted sum of the terms' scores ``terms`` (by name)."""
        return sum(w * terms[r.name] for w, r in zip(self.weights, self.terms))

    def text_tokens(self, prompt: str, response: str) -> int:
        return sum(r.text_tokens(prompt, response) for r in self.terms)

    def text_flops(self, prompt: str, response: str) -> int:
        return sum(r.text_flops(prompt, response) for r in self.terms)

    @property
    def num_parameters(self) -> int:
        return sum(r.num_parameters for r in self.terms)

    def aligned(self, *args, **kwargs):
        raise InputError(f"{self.name}: a composite has one vocabulary alignment per term (reward.parts())")

    def prepare(self, prompts):
        raise InputError(f"{self.name}: a composite is prepared term by term (reward.parts())")

    def score_embeds(self, ctx, embeds, keep):
        raise InputError(f"{self.name}: a composite reads embeddings term by term (GuidanceStep.read)")

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))
