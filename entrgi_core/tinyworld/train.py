"""Train the tiny world's models from a seed and save them as the shipped checkpoints.

    python -m entrgi_core.tinyworld.train [--seed 0] [--out entrgi_core/tinyworld/checkpoints]

dLLM: a small BertForMaskedLM trained with the masked-diffusion objective (each response token
masked with probability t ~ U(0, 1), cross-entropy on the masked ones) on grammar reviews after
the prompt "user : write a review of <subject> assistant :", padded with [EOS] to 32 tokens.
RM: a small Qwen3ForSequenceClassification regressing the oracle sentiment from
"<user> prompt </s> <assistant> review </s>", on hard tokens only (like real reward models).
Prints the quality bars: unguided dLLM samples valid >= 90%, RM Pearson r >= 0.9 on held-out reviews.

    python -m entrgi_core.tinyworld.train --imperfect-rm

trains only the **imperfect** reward model shipped beside the exact one (``checkpoints/rm_imperfect``):
the same architecture, fit to a small fixed pool of reviews whose labels carry Gaussian noise, so
that its Pearson r on held-out valid reviews lies in [0.75, 0.9]. It is where guidance can raise
the RM's reward without raising the oracle.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from entrgi_core.tinyworld import CHECKPOINTS
from entrgi_core.tinyworld.grammar import SUBJECTS, prompt_for, sample_review, sentiment
from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer, build_rm_tokenizer

RESPONSE_LEN = 32     # response positions the dLLM is trained (and demoed) with
BARS = {"valid": 0.90, "pearson": 0.90}
IMPERFECT = {"pool": 3000, "noise": 0.4, "steps": 900, "pearson": (0.75, 0.90)}   # few, noisy labels


def fit(model, steps: int, loss_at, log, what: str) -> None:
    """AdamW with a one-cycle schedule; ``loss_at(step)`` draws a fresh batch and returns its loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    t0 = time.time()
    for step in range(steps):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            log(f"{what} step {step:5d}  loss {loss.item():.4f}  ({time.time() - t0:.0f}s)")


def dlm_batch(tok, rnd: random.Random, n: int) -> tuple[torch.Tensor, int]:
    """(n, P + 32) token ids of prompt + review + [EOS] padding, and the prompt length P."""
    rows = []
    for _ in range(n):
        subject = rnd.choice(SUBJECTS)
        text = tok.apply_chat_template([{"role": "user", "content": prompt_for(subject)}], tokenize=False,
                                       add_generation_prompt=True)
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        review = tok(sample_review(subject, rnd), add_special_tokens=False)["input_ids"][:RESPONSE_LEN]
        rows.append(prompt + review + [tok.eos_token_id] * (RESPONSE_LEN - len(review)))
    return torch.tensor(rows), len(rows[0]) - RESPONSE_LEN


def train_dlm(seed: int, steps: int, batch: int, log) -> tuple:
    from transformers import BertConfig, BertForMaskedLM

    tok = build_dlm_tokenizer()
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=384, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForMaskedLM(cfg)
    rnd = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)

    def loss_at(step):
        ids, p = dlm_batch(tok, rnd, batch)
        t = torch.rand(batch, 1, generator=gen).clamp(min=0.02)          # masking rate per sequence
        masked = torch.zeros_like(ids, dtype=torch.bool)
        masked[:, p:] = torch.rand(batch, RESPONSE_LEN, generator=gen) < t
        logits = model(input_ids=ids.masked_fill(masked, tok.mask_token_id)).logits
        return F.cross_entropy(logits[masked], ids[masked])

    fit(model, steps, loss_at, log, "dlm")
    return model.eval(), tok


def rm_batch(tok, rnd: random.Random, n: int, pool: list | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, S) ids, attention mask and (n,) labels: fresh grammar reviews with exact labels, or draws
    from ``pool``, a list of (subject, review, label)."""
    rows, ys = [], []
    for _ in range(n):
        if pool is not None:
            subject, review, label = rnd.choice(pool)
        else:
            subject = rnd.choice(SUBJECTS)
            review = sample_review(subject, rnd)
            label = sentiment(review)
        text = tok.apply_chat_template([{"role": "user", "content": prompt_for(subject)},
                                        {"role": "assistant", "content": review}], tokenize=False)
        rows.append(tok(text, add_special_tokens=False)["input_ids"])
        ys.append(label)
    length = max(len(r) for r in rows)
    ids = torch.full((n, length), tok.pad_token_id)
    attn = torch.zeros((n, length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        attn[i, : len(r)] = 1
    return ids, attn, torch.tensor(ys)


def noisy_pool(size: int, noise: float, seed: int) -> list:
    """``size`` (subject, review, oracle + N(0, noise^2)) triples: few and noisy labels."""
    rnd = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(size):
        subject = rnd.choice(SUBJECTS)
        review = sample_review(subject, rnd)
        pool.append((subject, review, sentiment(review) + noise * float(torch.randn((), generator=gen))))
    return pool


def train_rm(seed: int, steps: int, batch: int, log, pool: list | None = None) -> tuple:
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    tok = build_rm_tokenizer()
    torch.manual_seed(seed + 1)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=96, intermediate_size=256, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=24, max_position_embeddings=128,
                      num_labels=1, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = Qwen3ForSequenceClassification(cfg)
    rnd = random.Random(seed + 1)

    def loss_at(step):
        ids, attn, y = rm_batch(tok, rnd, batch, pool)
        return F.mse_loss(model(input_ids=ids, attention_mask=attn).logits[:, 0], y)

    fit(model, steps, loss_at, log, "rm ")
    return model.eval(), tok


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@torch.no_grad()
def rm_pearson(rm_dir: Path, seed: int, n: int = 512) -> float:
    """Pearson r of the RM's reward with the oracle on held-out grammar reviews (all valid)."""
    from rewards import HFRewardModel

    rm = HFRewardModel(str(rm_dir))
    rnd = random.Random(seed + 2000)
    subjects = [rnd.choice(SUBJECTS) for _ in range(n)]
    reviews = [sample_review(s, rnd) for s in subjects]
    scores = rm.score_text([prompt_for(s) for s in subjects], reviews)
    return pearson(scores, torch.tensor([sentiment(t) for t in reviews]))


@torch.no_grad()
def quality(dlm_dir: Path, rm_dir: Path, seed: int, n_prompts: int = 64) -> dict:
    """The quality bars, measured through the ordinary from_pretrained path."""
    from entrgi_core import DenoiseConfig, MaskedLM, generate
    from entrgi_core.tinyworld.grammar import is_valid

    dlm = MaskedLM(str(dlm_dir))
    prompts = [prompt_for(SUBJECTS[i % len(SUBJECTS)]) for i in range(n_prompts)]
    res = generate(dlm, prompts, config=DenoiseConfig(steps=32, max_new_tokens=RESPONSE_LEN, num_samples=4,
                                                      seed=seed + 1000),
                   prompt_ids=[f"q{i}" for i in range(n_prompts)])
    texts = [t for row in res.texts for t in row]
    valid = sum(map(is_valid, texts)) / len(texts)
    return {"dlm_valid_fraction": valid, "rm_pearson": rm_pearson(rm_dir, seed), "examples": texts[:4]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=CHECKPOINTS)
    ap.add_argument("--dlm-steps", type=int, default=2000)
    ap.add_argument("--rm-steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--imperfect-rm", action="store_true", help="train only the imperfect RM (rm_imperfect)")
    for key in ("pool", "noise", "steps"):
        ap.add_argument(f"--imperfect-{key}", type=type(IMPERFECT[key]), default=IMPERFECT[key])
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t0 = time.time()
    if args.imperfect_rm:
        return train_imperfect(args, log, t0)
    dlm, dlm_tok = train_dlm(args.seed, args.dlm_steps, args.batch, log)
    rm, rm_tok = train_rm(args.seed, args.rm_steps, args.batch, log)
    for name, model, tok in (("dlm", dlm, dlm_tok), ("rm", rm, rm_tok)):
        model.save_pretrained(args.out / name)           # safetensors
        tok.save_pretrained(args.out / name)
    q = quality(args.out / "dlm", args.out / "rm", args.seed)
    q.update(seed=args.seed, minutes=(time.time() - t0) / 60, dlm_steps=args.dlm_steps, rm_steps=args.rm_steps)
    (args.out / "quality.json").write_text(json.dumps(q, indent=2))
    log(f"unguided dLLM samples valid: {q['dlm_valid_fraction']:.1%} (bar {BARS['valid']:.0%})")
    log(f"RM Pearson r with the oracle on held-out reviews: {q['rm_pearson']:.3f} (bar {BARS['pearson']})")
    log(f"examples: {q['examples']}")
    log(f"total {q['minutes']:.1f} min; checkpoints in {args.out}")
    if q["dlm_valid_fraction"] < BARS["valid"] or q["rm_pearson"] < BARS["pearson"]:
        raise SystemExit("quality bars not met")


def train_imperfect(args, log, t0) -> None:
    settings = {"pool": args.imperfect_pool, "noise": args.imperfect_noise, "steps": args.imperfect_steps}
    pool = noisy_pool(settings["pool"], settings["noise"], args.seed + 7)
    rm, tok = train_rm(args.seed + 7, settings["steps"], args.batch, log, pool=pool)
    out = args.out / "rm_imperfect"
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    r = rm_pearson(out, args.seed)
    lo, hi = IMPERFECT["pearson"]
    info = {"seed": args.seed, "rm_pearson": r, "minutes": (time.time() - t0) / 60,
            **settings}
    (out / "quality.json").write_text(json.dumps(info, indent=2))
    log(f"imperfect RM Pearson r on held-out reviews: {r:.3f} (target [{lo}, {hi}]); {info['minutes']:.1f} min")
    if not lo <= r <= hi:
        raise SystemExit("imperfect RM outside its target band")


if __name__ == "__main__":
    main()
