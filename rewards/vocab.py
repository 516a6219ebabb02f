"""dLLM -> reward-model vocabulary alignment.

Each dLLM token gets the RM tokens its text becomes (its **pieces**), so that a committed token
enters the reward model exactly as the decoded text would:

- **exact**: the RM has the same token string, or tokenises the token's text to one token;
- **split**: the RM tokenises the text to several tokens (``overpriced`` -> ``over ##priced``);
- **missing**: the RM's tokenisation holds its unknown token (or nothing): the token is scored as
  the RM scores that text, but carries no meaning for it.

Special tokens (dropped from decoded text) have no pieces. Text is read from the token string
with the word-boundary markers of the common schemes normalised: byte-level BPE (``Ġ`` = space,
``Ċ`` = newline), SentencePiece (``▁`` = space) and WordPiece (``##`` = continuation). The text of
a continuation piece is tokenised as if it started a word: close, not exact, for WordPiece dLLMs.
Construction fails when exact + split cover too few of the ordinary dLLM tokens.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from entrgi_core.errors import InputError


def normalize_token(token: str) -> str:
    if token.startswith("##") and len(token) > 2:
        return token[2:]
    return token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")


@dataclass
class VocabAlignment:
    index: Tensor                     # (V_dlm,) int64: one RM id per dLLM token (its first piece, or the fallback)
    pieces: Tensor                    # (V_dlm, P) int64: RM ids of each dLLM token's text, right-padded with 0
    counts: Tensor                    # (V_dlm,) int64: number of pieces
    exact: int                        # ordinary dLLM tokens that are one RM token
    split: int                        # ... that are several RM tokens
    missing: int                      # ... whose RM tokens hold the unknown token (or none)
    unmapped: list[str] = field(default_factory=list)  # the missing tokens
    split_tokens: list[str] = field(default_factory=list)

    @property
    def ordinary(self) -> int:
        return self.exact + self.split + self.missing

    @property
    def coverage(self) -> float:
        """Share of ordinary (non-special) dLLM tokens the RM represents (exact or split)."""
        return (self.exact + self.split) / max(self.ordinary, 1)

    def words(self, tokens: list[str], n: int = 10) -> list[str]:
        """Up to ``n`` of ``tokens`` as the text they stand for (``Ġover`` -> ``' over'``)."""
        return [normalize_token(t) for t in tokens[:n]]

    def summary(self) -> str:
        """Counts, then up to ten of the words the reward model lacks and ten it splits."""
        text = (f"coverage {self.coverage:.1%} of {self.ordinary} ordinary tokens: {self.exact} exact, "
                f"{self.split} split into several RM tokens, {self.missing} missing")
        if self.unmapped:
            text += f"; missing {self.words(self.unmapped)}"
        if self.split_tokens:
            text += f"; split {self.words(self.split_tokens)}"
        return text

    def report(self) -> dict:
        return {"coverage": self.coverage, "ordinary": self.ordinary, "exact": self.exact, "split": self.split,
                "missing": self.missing, "missing_words": self.words(self.unmapped),
                "split_words": self.words(self.split_tokens)}


def _name(tok) -> str:
    return getattr(tok, "name_or_path", None) or type(tok).__name__


def _text(dlm_tokenizer, token: str) -> str:
    """The text a dLLM token stands for, with a leading space when it starts a word."""
    if token.startswith("##") and len(token) > 2:
        return token[2:]
    text = dlm_tokenizer.convert_tokens_to_string([token])
    if normalize_token(token).startswith(" ") and not text.startswith(" "):
        text = " " + text
    return text


def align_vocab(dlm_tokenizer, rm_tokenizer, *, vocab_size: int | None = None, min_coverage: float = 0.95,
                fallback_id: int | None = None) -> VocabAlignment:
    """Pieces of every dLLM token id (``vocab_size`` rows, default the tokenizer's length)."""
    rm_vocab = rm_tokenizer.get_vocab()
    if fallback_id is None:
        for cand in (rm_tokenizer.unk_token_id, rm_tokenizer.eos_token_id, rm_tokenizer.pad_token_id, 0):
            if cand is not None:
                fallback_id = int(cand)
                break
    rm_eos = rm_tokenizer.eos_token_id if rm_tokenizer.eos_token_id is not None else fallback_id
    unk = rm_tokenizer.unk_token_id

    dlm_vocab = dlm_tokenizer.get_vocab()
    v = max(vocab_size or 0, len(dlm_tokenizer), max(dlm_vocab.values()) + 1)
    index = torch.full((v,), int(fallback_id), dtype=torch.long)
    pieces: dict[int, list[int]] = {}
    special = set(dlm_tokenizer.all_special_ids)
    ends = {dlm_tokenizer.eos_token_id, dlm_tokenizer.pad_token_id, dlm_tokenizer.sep_token_id} - {None}
    to_tokenize: list[tuple[str, int]] = []
    for tok, i in dlm_vocab.items():
        if i in special:                     # no pieces: decoded text drops it; the stand-in is for relaxation
            if i in ends:
                index[i] = int(rm_eos)
            elif tok in rm_vocab:
                index[i] = rm_vocab[tok]
        elif tok in rm_vocab:
            pieces[i] = [rm_vocab[tok]]
        else:
            to_tokenize.append((tok, i))
    if to_tokenize:
        texts = [_text(dlm_tokenizer, tok) for tok, _ in to_tokenize]
        for (tok, i), ids in zip(to_tokenize, rm_tokenizer(texts, add_special_tokens=False)["input_ids"]):
            pieces[i] = list(ids)
    exact = split = 0
    unmapped, split_tokens = [], []
    inverse = {i: t for t, i in dlm_vocab.items()}
    for i, ids in pieces.items():
        if not ids or (unk is not None and unk in ids):
            unmapped.append(inverse[i])
        elif len(ids) == 1:
            exact += 1
        else:
            split += 1
            split_tokens.append(inverse[i])
        if ids:
            index[i] = ids[0]
    width = max([1] + [len(ids) for ids in pieces.values()])
    table = torch.zeros(v, width, dtype=torch.long)
    counts = torch.zeros(v, dtype=torch.long)
    for i, ids in pieces.items():
        table[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        counts[i] = len(ids)
    al = VocabAlignment(index=index, pieces=table, counts=counts, exact=exact, split=split, missing=len(unmapped),
                        unmapped=sorted(unmapped), split_tokens=sorted(split_tokens))
    if al.coverage < min_coverage:
        raise InputError(
            f"vocabulary alignment: only {al.coverage:.1%} of the {al.ordinary} ordinary tokens of the dLLM tokenizer "
            f"{_name(dlm_tokenizer)!r} are represented by the reward tokenizer {_name(rm_tokenizer)!r} "
            f"({al.exact} exact, {al.split} split, {al.missing} missing; threshold {min_coverage:.0%}; missing "
            f"{al.words(al.unmapped)}; split {al.words(al.split_tokens)}). Use a reward model whose tokenizer covers "
            "the dLLM's vocabulary, or lower min_coverage."
        )
    return al
