"""dLLM -> reward-model vocabulary alignment by token string.

Token strings are compared after normalising the word-boundary markers of the common schemes:
byte-level BPE (``Ġ`` = space, ``Ċ`` = newline), SentencePiece (``▁`` = space) and WordPiece
(``##`` = continuation, no leading space). A dLLM token matches the RM token with the same
normalised string, else the same string with / without one leading space. Unmapped tokens go to
a fallback id. Construction fails when too few ordinary tokens map.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def normalize_token(token: str) -> str:
    if token.startswith("##") and len(token) > 2:
        return token[2:]
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")


@dataclass
class VocabAlignment:
    index: Tensor                     # (V_dlm,) int64: RM token id of each dLLM token id
    coverage: float                   # share of ordinary (non-special) dLLM tokens mapped
    unmapped: list[str] = field(default_factory=list)  # some dLLM tokens that fell back

    def summary(self) -> str:
        return f"coverage {self.coverage:.1%} ({len(self.unmapped)} unmapped)"


def _name(tok) -> str:
    return getattr(tok, "name_or_path", None) or type(tok).__name__


def align_vocab(dlm_tokenizer, rm_tokenizer, *, vocab_size: int | None = None, min_coverage: float = 0.95,
                fallback_id: int | None = None) -> VocabAlignment:
    """Map every dLLM token id (``vocab_size`` rows, default the tokenizer's length) to an RM id."""
    rm_vocab = rm_tokenizer.get_vocab()
    lookup: dict[str, int] = {}
    for tok, i in sorted(rm_vocab.items(), key=lambda kv: kv[1]):
        lookup.setdefault(normalize_token(tok), i)
    if fallback_id is None:
        for cand in (rm_tokenizer.unk_token_id, rm_tokenizer.eos_token_id, rm_tokenizer.pad_token_id, 0):
            if cand is not None:
                fallback_id = int(cand)
                break
    rm_eos = rm_tokenizer.eos_token_id if rm_tokenizer.eos_token_id is not None else fallback_id

    dlm_vocab = dlm_tokenizer.get_vocab()
    v = max(vocab_size or 0, len(dlm_tokenizer), max(dlm_vocab.values()) + 1)
    index = torch.full((v,), int(fallback_id), dtype=torch.long)
    special = set(dlm_tokenizer.all_special_ids)
    ends = {dlm_tokenizer.eos_token_id, dlm_tokenizer.pad_token_id, dlm_tokenizer.sep_token_id} - {None}
    ordinary = mapped = 0
    unmapped = []
    for tok, i in dlm_vocab.items():
        if i in special:
            if i in ends:
                index[i] = int(rm_eos)
            elif tok in rm_vocab:
                index[i] = rm_vocab[tok]
            continue
        ordinary += 1
        norm = normalize_token(tok)
        for cand in (norm, " " + norm if not norm.startswith(" ") else norm.lstrip(" ")):
            if cand in lookup:
                index[i] = lookup[cand]
                mapped += 1
                break
        else:
            unmapped.append(tok)
    coverage = mapped / max(ordinary, 1)
    if coverage < min_coverage:
        raise ValueError(
            f"vocabulary alignment: only {coverage:.1%} of the {ordinary} ordinary tokens of the dLLM tokenizer "
            f"{_name(dlm_tokenizer)!r} have a token with the same string in the reward tokenizer "
            f"{_name(rm_tokenizer)!r} (threshold {min_coverage:.0%}; unmapped e.g. {sorted(unmapped)[:8]}). "
            "Use a reward model whose tokenizer shares the dLLM's vocabulary, or lower min_coverage."
        )
    return VocabAlignment(index=index, coverage=coverage, unmapped=sorted(unmapped))
