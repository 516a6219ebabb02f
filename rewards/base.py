"""RewardAdapter: what the sampler needs from a differentiable reward model.

A reward adapter scores (prompt, response) pairs two ways that must agree:
``score_text`` on discrete text, and ``score_embeds`` on response *embeddings* (rows of
``embedding_table``), which is what guidance differentiates. Write your own by subclassing and
implementing ``prepare``, ``score_embeds`` and ``score_text`` (see ``CallableReward`` for the
smallest complete example).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from entrgi_core.reward_side import AlignedVocab
from rewards.vocab import VocabAlignment, align_vocab


@dataclass
class RewardContext:
    """Per-row state prepared once per batch (e.g. cached prompt prefix / suffix embeddings):
    ``data`` holds tensors whose first dimension is the row (or lists and tuples of them)."""

    prompts: list[str]
    data: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def rows(self, idx: Tensor) -> "RewardContext":
        """The context of rows ``idx`` (n,) only, without preparing anything again."""
        n = len(self.prompts)

        def take(value):
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
                return value[idx.to(value.device)]
            if isinstance(value, (list, tuple)):
                return type(value)(take(v) for v in value)
            return value

        return RewardContext([self.prompts[i] for i in idx.tolist()], {k: take(v) for k, v in self.data.items()})


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
    """Abstract base. Subclasses provide ``tokenizer`` and ``embedding_table`` (V_R, D).

    The roles a reward plays: a differentiable one (``differentiable``) can guide (its
    ``score_embeds``), any one can select Top@1 and judge (its ``score_text``). ``parts()`` are the
    differentiable models guidance reads, with their weights (a composite has several)."""

    tokenizer = None
    min_coverage: float = 0.95
    max_positions: int | None = None     # the RM's position limit (None: unstated)
    differentiable: bool = True          # has ``score_embeds`` (guidance); False: text only

    @property
    def name(self) -> str:
        return self.__dict__.get("_name") or type(self).__name__

    @name.setter
    def name(self, value: str | None) -> None:
        self.__dict__["_name"] = value

    def identity(self) -> dict:
        """What identifies this reward in ``run.json`` (a rerun with another one is not a resume)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "name": self.name}

    def parts(self) -> list[tuple[float, "RewardAdapter"]]:
        """The differentiable reward models guidance reads, each with its weight."""
        return [(1.0, self)] if self.differentiable else []

    def text_flops(self, prompt: str, response: str) -> int:
        """FLOPs of scoring ``response`` as text (compute accounting): 2 x parameters x tokens."""
        return 2 * self.num_parameters * self.text_tokens(prompt, response)

    def __init__(self):
        super().__init__()
        # per dLLM tokenizer object (weakly held, so a freed tokenizer's entry goes with it)
        self._aligned = weakref.WeakKeyDictionary()

    @property
    def embedding_table(self) -> Tensor:  # (V_R, D)
        raise NotImplementedError

    def alignment(self, dlm_tokenizer, vocab_size: int | None = None) -> VocabAlignment:
        """How the dLLM tokenizer's tokens map to this RM's tokens (exact / split / missing)."""
        per_tok = self._aligned.setdefault(dlm_tokenizer, {})
        if ("alignment", vocab_size) not in per_tok:
            per_tok[("alignment", vocab_size)] = align_vocab(dlm_tokenizer, self.tokenizer, vocab_size=vocab_size,
                                                            min_coverage=self.min_coverage)
        return per_tok[("alignment", vocab_size)]

    def aligned(self, dlm_tokenizer, vocab_size: int | None = None) -> AlignedVocab:
        """dLLM tokens as this RM's inputs: pieces per token and the (V_dlm, D) stand-in table whose
        row v is the mean RM embedding of v's pieces (built once per tokenizer, device and dtype)."""
        al = self.alignment(dlm_tokenizer, vocab_size)
        table = self.embedding_table.detach()
        key = ("aligned", vocab_size, str(table.device), table.dtype)
        per_tok = self._aligned[dlm_tokenizer]
        if key not in per_tok:
            pieces, counts = al.pieces.to(table.device), al.counts.to(table.device)
            stand_in = table[al.index.to(table.device)].clone()          # (V, D): tokens without pieces
            for rows in torch.arange(len(counts), device=table.device).split(1 << 14):
                c = counts[rows]                                                          # (n,)
                summed = torch.zeros(len(rows), table.shape[1], device=table.device)      # (n, D) float32
                for k in range(pieces.shape[1]):
                    summed += table[pieces[rows, k]].float() * (k < c)[:, None]
                mean = (summed / c.clamp(min=1)[:, None]).to(table.dtype)
                stand_in[rows] = torch.where((c > 0)[:, None], mean, stand_in[rows])
            per_tok[key] = AlignedVocab(table=stand_in, pieces=pieces, counts=counts, rm_table=table)
        return per_tok[key]

    def aligned_table(self, dlm_tokenizer, vocab_size: int | None = None) -> Tensor:
        """(V_dlm, D): the stand-in RM embedding of each dLLM token (see ``aligned``)."""
        return self.aligned(dlm_tokenizer, vocab_size).table

    def template_length(self, prompt: str) -> int:
        """RM tokens the reward model reads besides the response (chat template and prompt)."""
        return 0

    def text_tokens(self, prompt: str, response: str) -> int:
        """RM tokens read when scoring ``response`` as text (compute accounting)."""
        n = 0
        if self.tokenizer is not None and response:
            n = len(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        return self.template_length(prompt) + n

    @property
    def num_parameters(self) -> int:
        """The parameters a forward multiplies by, for the compute account (2 x this x tokens): all of
        them but the embedding tables it only looks up (input, position, token type), unless a
        table is also an output layer's weight."""
        multiplied = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        looked_up = {id(m.weight): m.weight.numel() for m in self.modules()
                     if isinstance(m, nn.Embedding) and id(m.weight) not in multiplied}
        return sum(p.numel() for p in self.parameters()) - sum(looked_up.values())

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
