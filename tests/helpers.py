"""Helpers the test modules import (``from tests.helpers import ...``): prompts, small configs,
tiny models built and saved with ``save_pretrained`` (so tests exercise the real
``from_pretrained`` path), guidance steps, records and the command line. Fixtures are in
``conftest.py``; test modules import nothing from each other."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
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


# ----------------------------------------------------------------------------- a test-size real world

TINY_WORLD_BUDGET = dict(dlm_minutes=5.0, dlm_steps=3, batch=4, length=32, rm_epochs=2, prompts=4, train_prompts=4,
                         card_prompts=3, card_length=8)


def tiny_minilm(folder):
    """A random BERT with a WordPiece vocabulary of the tiny world's words, in the package's layout."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from entrgi_core.tinyworld.grammar import words

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a"] + sorted(set(words()) - {".", ",", "a"})
    tk = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = BertTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]")
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(folder)


def rated_sentences(folder, n: int = 80):
    """VADER's ratings file format: reviews of the tiny world's grammar, rated by its oracle."""
    import random

    from entrgi_core.tinyworld.grammar import SUBJECTS, sample_review, sentiment

    folder.mkdir(parents=True)
    rnd = random.Random(0)
    lines = []
    for i in range(n):
        text = sample_review(SUBJECTS[i % len(SUBJECTS)], rnd)
        lines.append(f"{i + 1}\t{4 * sentiment(text):.3f}\t{text}")
    inner = folder / "movieReviewSnippets_GroundTruth.txt"
    inner.write_text("\n".join(lines) + "\n")
    with tarfile.open(folder / "hutto_ICWSM_2014.tar.gz", "w:gz") as t:
        t.add(inner, arcname="hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
    inner.unlink()


def tiny_charlm(folder, embed: int = 4, hidden: int = 8):
    """A random character LM in textgenrnn's file layout (Keras's plain LSTM)."""
    import h5py
    import numpy as np

    folder.mkdir(parents=True)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz .,'!?"))
    vocab = {c: i + 1 for i, c in enumerate(chars)}
    vocab["<s>"] = len(vocab) + 1
    (folder / "textgenrnn_vocab.json").write_text(json.dumps(vocab))
    rng = np.random.default_rng(0)
    classes, width = len(vocab) + 1, embed + 2 * hidden
    with h5py.File(folder / "textgenrnn_weights.hdf5", "w") as f:
        def put(layer, name, shape):
            f.create_dataset(f"{layer}/{layer}/{name}:0", data=rng.normal(0, 0.3, shape).astype("float32"))
        put("embedding", "embeddings", (classes, embed))
        for i, inputs in ((1, embed), (2, hidden)):
            put(f"rnn_{i}", "kernel", (inputs, 4 * hidden))
            put(f"rnn_{i}", "recurrent_kernel", (hidden, 4 * hidden))
            put(f"rnn_{i}", "bias", (4 * hidden,))
        f.create_group("rnn_concat")                                    # a layer without weights, as Keras saves it
        put("attention", "attention_W", (width, 1))
        put("output", "kernel", (width, classes))
        put("output", "bias", (classes,))




def save_tiny_world_parts(root: Path) -> Path:
    """Stand-ins of the real world's parts in their formats: a tiny BERT, rated sentences, a tiny char LM."""
    tiny_minilm(root / "minilm")
    rated_sentences(root / "ratings")
    tiny_charlm(root / "charlm")
    return root


def build_tiny_world(home: Path) -> Path:
    """A real world built from the stand-in parts at a test's budget, in ``home`` (an ENTRGI_HOME)."""
    from entrgi_core import realworld
    from entrgi_core.realworld import build

    parts = save_tiny_world_parts(home / "tiny-parts")
    return build.build(build.Budget(**TINY_WORLD_BUDGET), root=home / f"realworld-{realworld.VERSION}", parts=parts)
