"""The real world's human data: VADER's rated sentences, split once, and the prompts made from them.

``hutto_ICWSM_2014.tar.gz`` (in the vadersentiment sdist) holds four ``*_GroundTruth.txt`` files
of ``id <TAB> mean rating <TAB> sentence``: 10,605 movie-review sentences, 3,708 Amazon review
sentences, 5,190 NYT editorial sentences and 4,200 tweets, each rated -4..+4 by 20 or more
people. ``split`` shuffles them with a fixed seed and holds out a fraction (the RM's and the
judges' test set, and the prompts' source; neither model trains on it). A prompt is the first
``PROMPT_WORDS`` words of a sentence, and the task is to continue it (steered toward positive
sentiment); a held-out prompt whose words occur anywhere in the training text is dropped.
"""
from __future__ import annotations

import random
import re
import tarfile
from pathlib import Path

SEED = 0                    # of the one split (written into the world's split.json)
HELD_OUT = 0.1              # share of sentences held out
PROMPT_WORDS = 4            # a prompt: the first words of a sentence
MIN_WORDS, MAX_WORDS = 8, 40   # sentences prompts are made from: long enough to continue, short enough for L


def read_ratings(tarball: Path) -> list[dict]:
    """Every rated sentence: ``{"id", "source", "rating" (-4..4), "text"}``."""
    out = []
    with tarfile.open(tarball) as t:
        for member in sorted(t.getmembers(), key=lambda m: m.name):
            if not member.name.endswith("_GroundTruth.txt"):
                continue
            source = Path(member.name).name.split("_")[0]
            for line in t.extractfile(member).read().decode("utf-8", errors="replace").splitlines():
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                text = clean(" ".join(parts[2:]))
                if text:
                    out.append({"id": f"{source}:{parts[0].strip()}", "source": source,
                                "rating": float(parts[1]), "text": text})
    return out


def clean(text: str) -> str:
    """One line of plain text: Penn-style quote marks undone, spaces collapsed."""
    text = text.replace("''", '"').replace("``", '"')
    return re.sub(r"\s+", " ", text).strip()


def split(items: list[dict], seed: int = SEED, held_out: float = HELD_OUT) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a fixed permutation of ``items``, the last ``held_out`` share held out."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = len(items) - max(1, round(held_out * len(items)))
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]


def prompt_of(item: dict, words: int = PROMPT_WORDS) -> dict | None:
    """``{"id", "prompt", "continuation", "rating", "source"}``: the first ``words`` words and the rest,
    or None for a sentence out of the length range."""
    tokens = item["text"].split()
    if not MIN_WORDS <= len(tokens) <= MAX_WORDS:
        return None
    return {"id": item["id"], "prompt": " ".join(tokens[:words]), "continuation": " ".join(tokens[words:]),
            "rating": item["rating"], "source": item["source"]}


def prompts(items: list[dict], count: int, *, avoid: list[dict] = (), seed: int = SEED) -> list[dict]:
    """Up to ``count`` prompts from ``items`` in a fixed order, none of whose prompt text occurs in
    the sentences ``avoid`` (the training text)."""
    seen = "\n".join(it["text"].lower() for it in avoid)
    order = list(items)
    random.Random(seed + 1).shuffle(order)
    out = []
    for item in order:
        p = prompt_of(item)
        if p is not None and (not seen or p["prompt"].lower() not in seen):
            out.append(p)
            if len(out) == count:
                break
    return out
