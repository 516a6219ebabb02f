"""A small probabilistic grammar of reviews with an exact sentiment oracle.

    review  := clause (connective clause){0,3} "."
    clause  := ref verb ["not" | "never"] [intensifier] adjective
    ref     := "it" | "the" aspect | subject            (the first clause is about the subject)

Oracle: a clause scores polarity(adjective) x scale(intensifier), negated by "not" / "never";
the review is the weighted mean of its clauses (weight 1 after "and", 2 after "but", 0.5 after
"although", 1 for the first), clipped to [-1, 1]. ``is_valid`` says whether a text is a sentence
of the grammar. Everything here is plain Python.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

SUBJECTS = [
    "the hotel", "this phone", "the restaurant", "the laptop", "this camera", "the museum", "the beach",
    "the park", "this book", "the movie", "the bakery", "this app", "the gym", "the library", "the airport",
    "this car", "the bike", "the cafe", "the theater", "this game", "the store", "the market", "the zoo",
    "the bridge", "this watch", "the tablet", "the printer", "the school", "the hospital", "the train",
    "the ferry", "this jacket", "the garden", "the castle", "the stadium", "this sofa", "the clinic",
    "the bar", "this lamp", "the island",
]
ASPECTS = [
    "room", "staff", "service", "price", "design", "screen", "battery", "food", "view", "location", "sound",
    "quality", "music", "menu", "seat", "bed", "shower", "lobby", "wifi", "parking", "ending", "plot",
    "story", "size", "color", "display", "keyboard", "lens", "crowd", "queue", "coffee", "bread", "team",
    "manager", "guide", "entrance", "garden", "noise", "smell", "light",
]
VERBS = ["was", "is", "seemed", "felt", "looked", "sounded", "proved"]
NEGATIONS = ["not", "never"]
INTENSIFIERS = {"very": 1.5, "really": 1.5, "extremely": 2.0, "quite": 1.2, "slightly": 0.5, "somewhat": 0.7}
CONNECTIVES = {"and": 1.0, "but": 2.0, "although": 0.5}
ADJECTIVES = {
    # positive
    "great": 1.0, "excellent": 1.0, "amazing": 1.0, "wonderful": 1.0, "fantastic": 1.0, "superb": 1.0,
    "perfect": 1.0, "brilliant": 1.0, "lovely": 0.8, "good": 0.6, "nice": 0.6, "pleasant": 0.6,
    "clean": 0.5, "friendly": 0.7, "helpful": 0.7, "comfortable": 0.7, "cozy": 0.6, "charming": 0.7,
    "reliable": 0.6, "fast": 0.5, "fresh": 0.5, "tasty": 0.7, "quiet": 0.4, "bright": 0.4, "solid": 0.5,
    "decent": 0.3, "fine": 0.3, "okay": 0.1, "affordable": 0.5, "elegant": 0.7, "modern": 0.3,
    "spacious": 0.5, "smooth": 0.5, "polite": 0.6, "generous": 0.6, "delightful": 0.9, "impressive": 0.8,
    # negative
    "terrible": -1.0, "awful": -1.0, "horrible": -1.0, "dreadful": -1.0, "disgusting": -1.0,
    "useless": -0.9, "broken": -0.8, "bad": -0.6, "poor": -0.6, "dirty": -0.7, "rude": -0.8,
    "slow": -0.5, "noisy": -0.5, "boring": -0.6, "bland": -0.4, "cramped": -0.5, "overpriced": -0.6,
    "stale": -0.6, "unreliable": -0.7, "disappointing": -0.8, "mediocre": -0.3, "dull": -0.4,
    "ugly": -0.6, "cold": -0.3, "weak": -0.4, "sloppy": -0.6, "unfriendly": -0.7, "uncomfortable": -0.7,
    "greasy": -0.5, "crowded": -0.4, "confusing": -0.5, "flimsy": -0.6, "annoying": -0.6,
    # neutral
    "new": 0.0, "old": 0.0, "large": 0.0, "small": 0.0, "typical": 0.0, "standard": 0.0, "usual": 0.0,
    "simple": 0.0, "busy": 0.0, "local": 0.0,
}
END = "."


def prompt_for(subject: str) -> str:
    return f"write a review of {subject}"


def words() -> list[str]:
    """Every word the grammar and its prompts can produce."""
    ws = {"it", "the", "this", END, "write", "a", "review", "of"}
    for s in SUBJECTS:
        ws.update(s.split())
    ws.update(ASPECTS, VERBS, NEGATIONS, INTENSIFIERS, CONNECTIVES, ADJECTIVES)
    return sorted(ws)


@dataclass
class Clause:
    ref: list[str]
    verb: str
    negation: str | None
    intensifier: str | None
    adjective: str

    def tokens(self) -> list[str]:
        return [*self.ref, self.verb, *([self.negation] if self.negation else []),
                *([self.intensifier] if self.intensifier else []), self.adjective]

    def score(self) -> float:
        s = ADJECTIVES[self.adjective] * (INTENSIFIERS[self.intensifier] if self.intensifier else 1.0)
        return -s if self.negation else s


def sample_review(subject: str, rnd: random.Random) -> str:
    n = rnd.choices([1, 2, 3, 4], weights=[3, 4, 2, 1])[0]
    parts: list[str] = []
    for i in range(n):
        if i:
            parts.append(rnd.choice(list(CONNECTIVES)))
        ref = subject.split() if i == 0 else (["it"] if rnd.random() < 0.3 else ["the", rnd.choice(ASPECTS)])
        clause = Clause(ref, rnd.choice(VERBS), rnd.choice(NEGATIONS) if rnd.random() < 0.2 else None,
                        rnd.choice(list(INTENSIFIERS)) if rnd.random() < 0.4 else None, rnd.choice(list(ADJECTIVES)))
        parts.extend(clause.tokens())
    return " ".join(parts + [END])


def parse(text: str) -> list[tuple[float, Clause]] | None:
    """(weight, clause) pairs of a valid review, or None when ``text`` is not one."""
    toks = text.split()
    if len(toks) < 4 or toks[-1] != END:
        return None
    toks = toks[:-1]
    out, i, weight = [], 0, 1.0
    subject_refs = {tuple(s.split()) for s in SUBJECTS}
    while True:
        ref = None
        for cand in ([toks[i:i + 1]] if i < len(toks) and toks[i] == "it" else []) + \
                    ([toks[i:i + 2]] if i + 1 < len(toks) and toks[i] == "the" and toks[i + 1] in ASPECTS else []) + \
                    ([toks[i:i + 2]] if tuple(toks[i:i + 2]) in subject_refs else []):
            ref = cand
        if ref is None:
            return None
        i += len(ref)
        if i >= len(toks) or toks[i] not in VERBS:
            return None
        verb = toks[i]
        i += 1
        neg = toks[i] if i < len(toks) and toks[i] in NEGATIONS else None
        i += neg is not None
        inten = toks[i] if i < len(toks) and toks[i] in INTENSIFIERS else None
        i += inten is not None
        if i >= len(toks) or toks[i] not in ADJECTIVES:
            return None
        out.append((weight, Clause(ref, verb, neg, inten, toks[i])))
        i += 1
        if i == len(toks):
            return out if len(out) <= 4 else None
        if toks[i] not in CONNECTIVES:
            return None
        weight = CONNECTIVES[toks[i]]
        i += 1


def is_valid(text: str) -> bool:
    return parse(text) is not None


def sentiment(text: str) -> float:
    """Exact sentiment in [-1, 1] of a valid review (ValueError otherwise)."""
    clauses = parse(text)
    if clauses is None:
        raise ValueError(f"not a review of the grammar: {text!r}")
    total = sum(w * c.score() for w, c in clauses) / sum(w for w, _ in clauses)
    return max(-1.0, min(1.0, total))
