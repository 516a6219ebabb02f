"""Helpers the test modules import (``from tests.helpers import ...``): prompts, small configs,
tiny models built and saved with ``save_pretrained`` (so tests exercise the real
``from_pretrained`` path), guidance steps, records and the command line. Fixtures are in
``conftest.py``; test modules import nothing from each other."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    Qwen3Config,
    Qwen3ForSequenceClassification,
)

from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer, build_rm_tokenizer

ROOT = Path(__file__).resolve().parents[1]


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


PROMPTS = ["write a review of the hotel", "write a review of this phone", "write a review of the museum"]


REVIEW_PROMPTS = [f"write a review of {s}" for s in ["the hotel", "the zoo", "the park", "this phone", "the museum",
                                                      "the beach", "this book"]]


def small_config(**kw):
    from entrgi_core import DenoiseConfig

    return DenoiseConfig(**{**dict(steps=6, max_new_tokens=8, num_samples=2, seed=3), **kw})


def exploding_model(positions: int = 64):
    """A masked LM on the tiny world's tokenizer that fails the test if it is ever run."""
    from transformers import BertConfig, BertForMaskedLM

    from entrgi_core.models import DiffusionLM
    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer

    class Exploding(DiffusionLM):
        def forward_logits(self, *a):
            raise AssertionError("model ran")

    tok = build_dlm_tokenizer()
    return Exploding.from_model(BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1,
                                                           num_attention_heads=1, intermediate_size=8,
                                                           max_position_embeddings=positions)), tok)


def make_step(dlm, rm, tokens, rows, cols, *, prompts=None, **kw):
    """A GuidanceStep over the canvas ``tokens`` (R, L) with masked ``(rows, cols)``; the reward side
    reads ``prompts`` (default: the first prompt on every row)."""
    from entrgi_core.contract import GuidanceStep, Sampling
    from entrgi_core.reward_side import RewardSide

    r = tokens.shape[0]
    side = RewardSide.build(rm, prompts or PROMPTS[:1] * r, tokenizer=dlm.tokenizer, vocab_size=dlm.vocab_size,
                            stop_ids=dlm.stop_ids, device=tokens.device)
    fields = dict(index=0, total=10, side=side, tokens=tokens, rows=rows, cols=cols,
                  keys=torch.arange(r, device=tokens.device), samples=r, sampling=Sampling(0.7, 0.95, None))
    return GuidanceStep(**{**fields, **kw})


def read_jsonl(path):
    from entrgi_core.writer import read_jsonl as read

    return read(Path(path))


def strip(records):
    """Records without timings, and with float noise (batch-size dependent rounding) rounded off."""
    def rounded(v):
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, list):
            return [rounded(x) for x in v]
        if isinstance(v, dict):
            return {k: rounded(x) for k, x in v.items()}
        return v
    return [{k: rounded(v) for k, v in r.items() if k != "seconds"} for r in records]


def trainer(callbacks, **kw):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                     callbacks=callbacks, **kw)


def cli(*args, cwd=ROOT, env_extra=None, check=True):
    """``entrgi ARGS`` in a fresh interpreter (a slow test)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "entrgi_core.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"entrgi {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def in_process_cli(*args):
    """``entrgi ARGS`` in this interpreter: (exit status, stderr lines)."""
    import contextlib
    import io

    from entrgi_core.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as done:
            code = done.code or 0
    return code, err.getvalue()


def prompts_file(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, p in enumerate(prompts)))
    return path


def snapshot(directory: Path) -> dict:
    """Every file under ``directory``, by relative path."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- tiny random models

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
