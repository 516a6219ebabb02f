"""RewardAdapter: what the sampler needs from a differentiable reward model.

A reward adapter scores (prompt, response) pairs two ways that must agree:
``score_text`` on discrete text, and ``score_embeds`` on response *embeddings* (rows of
``embedding_table``), which is what guidance differentiates. Write your own by subclassing and
implementing ``prepare``, ``score_embeds`` and ``score_text`` (see ``CallableReward`` for the
smallest complete example).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rewards.vocab import VocabAlignment, align_vocab


@dataclass
class RewardContext:
    """Per-row state prepared once per batch (e.g. cached prompt prefix / suffix embeddings)."""

    prompts: list[str]
    data: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)


def pad_token_ids(rows: list[list[int]], device) -> tuple[Tensor, Tensor]:
    """Right-padded (B, L) ids (pad 0) and the (B, L) prefix mask of real tokens."""
    length = max(1, max((len(r) for r in rows), default=0))
    ids = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    keep = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        keep[i, : len(row)] = True
    return ids, keep


class RewardAdapter(nn.Module):
    """Abstract base. Subclasses provide ``tokenizer`` and ``embedding_table`` (V_R, D)."""

    tokenizer = None
    min_coverage: float = 0.95

    def __init__(self):
        super().__init__()
        self._aligned: dict[tuple, tuple[VocabAlignment, Tensor]] = {}

    @property
    def embedding_table(self) -> Tensor:  # (V_R, D)
        raise NotImplementedError

    def alignment(self, dlm_tokenizer, vocab_size: int | None = None) -> VocabAlignment:
        return self._align(dlm_tokenizer, vocab_size)[0]

    def aligned_table(self, dlm_tokenizer, vocab_size: int | None = None) -> Tensor:
        """(V_dlm, D): row v is the RM embedding of dLLM token v (built once per tokenizer)."""
        return self._align(dlm_tokenizer, vocab_size)[1]

    def _align(self, dlm_tokenizer, vocab_size):
        key = (id(dlm_tokenizer), vocab_size, str(self.embedding_table.device))
        if key not in self._aligned:
            al = align_vocab(dlm_tokenizer, self.tokenizer, vocab_size=vocab_size, min_coverage=self.min_coverage)
            table = self.embedding_table.detach()
            self._aligned[key] = (al, table[al.index.to(table.device)])
        return self._aligned[key]

    def prepare(self, prompts: list[str]) -> RewardContext:
        raise NotImplementedError

    def score_embeds(self, ctx: RewardContext, embeds: Tensor, keep: Tensor) -> Tensor:
        """Rewards (B,) of responses given as embeddings (B, L, D); ``keep`` (B, L) is a prefix
        mask: position j belongs to the response iff j < the response's length."""
        raise NotImplementedError

    def score_text(self, prompts: list[str], responses: list[str]) -> Tensor:
        """Rewards (B,) of text responses."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.embedding_table.device
