"""Tiny randomly initialised models on the tiny world's tokenizers, saved with save_pretrained so
tests exercise the real from_pretrained path."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import BertConfig, BertForMaskedLM, Qwen3Config, Qwen3ForSequenceClassification

from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer, build_rm_tokenizer


def save_tiny_dlm(path: Path, seed: int = 0, hidden: int = 32, positions: int = 128) -> Path:
    tok = build_dlm_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=positions, pad_token_id=tok.pad_token_id)
    BertForMaskedLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def save_tiny_rm(path: Path, seed: int = 0, hidden: int = 32, positions: int = 256) -> Path:
    tok = build_rm_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=positions,
                      num_labels=1, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = Qwen3ForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)   # a reward with some spread
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
