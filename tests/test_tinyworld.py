"""The tiny world: grammar, oracle, tokenizers and the shipped checkpoints' quality bars."""
import random

import pytest
import torch

from entrgi_core import DenoiseConfig, generate, tinyworld
from entrgi_core.tinyworld import grammar as g
from entrgi_core.tinyworld.tokenizers import (
    RM_LACKS,
    RM_SPLITS,
    build_dlm_tokenizer,
    build_rm_tokenizer,
)
from rewards import align_vocab


def test_the_imperfect_reward_model_is_imperfect():
    from entrgi_core import tinyworld
    from entrgi_core.tinyworld.train import IMPERFECT, rm_pearson
    r = rm_pearson(tinyworld.rm_imperfect_path(), seed=0)
    lo, hi = IMPERFECT["pearson"]
    assert lo <= r <= hi, r
    assert rm_pearson(tinyworld.rm_path(), seed=0) > 0.99


@pytest.mark.parametrize("text,expected", [
    ("the hotel was great .", 1.0),
    ("the hotel was not great .", -1.0),
    ("the hotel was slightly good .", 0.3),
    ("the hotel was very terrible .", -1.0),                       # -1.5 clipped
    ("the hotel was good and the staff was bad .", 0.0),
    ("the hotel was great but the staff was bad .", (1.0 - 2 * 0.6) / 3),
    ("the hotel was bad although the staff was great .", (-0.6 + 0.5 * 1.0) / 1.5),
    ("it was never quite nice .", -0.72),
    ("this phone seemed new .", 0.0),
])
def test_oracle(text, expected):
    assert g.is_valid(text)
    assert g.sentiment(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "the hotel was great", "the hotel great .", "was great .",
                                  "the hotel was great and .", "the hotel was very not great .",
                                  "the hotel was great and it was bad and it was ok and it was new and it was old .",
                                  "the unicorn was great ."])
def test_invalid_texts(text):
    assert not g.is_valid(text)
    with pytest.raises(ValueError):
        g.sentiment(text)


def test_sampled_reviews_are_valid_and_vocabulary_is_a_few_hundred_words():
    rnd = random.Random(0)
    reviews = [g.sample_review(rnd.choice(g.SUBJECTS), rnd) for _ in range(500)]
    assert all(g.is_valid(r) for r in reviews)
    assert all(-1 <= g.sentiment(r) <= 1 for r in reviews)
    assert len({len(r.split(" .")[0].split(" and ")) for r in reviews}) > 1
    assert 150 <= len(g.words()) <= 400


def test_tokenizers_differ_and_align():
    dlm_tok, rm_tok = build_dlm_tokenizer(), build_rm_tokenizer()
    assert dlm_tok.mask_token_id is not None and rm_tok.mask_token_id is None
    assert dlm_tok.convert_tokens_to_ids("great") != rm_tok.convert_tokens_to_ids("great")
    assert rm_tok.tokenize("unreliable") == list(RM_SPLITS["unreliable"])
    al = align_vocab(dlm_tok, rm_tok)
    assert set(RM_LACKS) <= set(al.unmapped) and al.coverage >= 0.95


def test_quality_bars_of_the_shipped_checkpoints(world):
    dlm, rm = world
    prompts = [g.prompt_for(s) for s in g.SUBJECTS[:32]]
    res = generate(dlm, prompts, config=DenoiseConfig(steps=32, max_new_tokens=32, num_samples=4, seed=7),
                   prompt_ids=[f"t{i}" for i in range(32)])
    texts = [t for row in res.texts for t in row]
    valid = sum(map(g.is_valid, texts)) / len(texts)
    assert valid >= 0.90, f"unguided samples valid {valid:.1%} < 90%"
    rnd = random.Random(12345)
    subjects = [rnd.choice(g.SUBJECTS) for _ in range(256)]
    reviews = [g.sample_review(s, rnd) for s in subjects]
    pred = rm.score_text([g.prompt_for(s) for s in subjects], reviews)
    truth = torch.tensor([g.sentiment(r) for r in reviews])
    r = torch.corrcoef(torch.stack([pred, truth]))[0, 1].item()
    assert r >= 0.90, f"RM Pearson r {r:.3f} < 0.9"


def test_checkpoints_are_small_safetensors():
    files = [p for p in tinyworld.CHECKPOINTS.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and not any(p.suffix in (".bin", ".pt") for p in files)
    assert sum(p.stat().st_size for p in files) <= 15 * 2**20
