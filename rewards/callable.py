"""CallableReward: wrap any differentiable function of response embeddings as a reward."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rewards.base import RewardAdapter, RewardContext, pad_token_ids


class CallableReward(RewardAdapter):
    """``fn(embeds (B, L, D), keep (B, L) bool) -> rewards (B,)`` over rows of ``embedding_table``
    (V, D) indexed by ``tokenizer``'s ids. The prompt is not seen; subclass ``RewardAdapter``
    when it matters."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], embedding_table: Tensor, tokenizer,
                 *, min_coverage: float = 0.95):
        super().__init__()
        self.fn = fn
        self.tokenizer = tokenizer
        self.min_coverage = min_coverage
        self.register_buffer("_table", embedding_table.detach())

    @property
    def embedding_table(self) -> Tensor:
        return self._table

    def prepare(self, prompts: list[str]) -> RewardContext:
        return RewardContext(list(prompts))

    def score_embeds(self, ctx: RewardContext, embeds: Tensor, keep: Tensor) -> Tensor:
        return self.fn(embeds, keep)

    @torch.no_grad()
    def score_text(self, prompts: list[str], responses: list[str]) -> Tensor:
        ids, keep = pad_token_ids([self.tokenizer(r, add_special_tokens=False)["input_ids"] if r else []
                                   for r in responses], self._table.device)
        return self.fn(self._table[ids], keep)
