"""The tiny world's exact oracle as judges (and verifiers): text rewards like any user's.

- ``OracleJudge`` ("oracle"): the oracle sentiment of a response, -1 when it is not a review of
  the grammar (so exploiting the reward model with invalid text scores worst);
- ``ValidityJudge`` ("valid"): 1 for a review of the grammar, 0 otherwise; as ``select`` it is a
  verifier that checks validity only.

    entrgi predict --config configs/tiny.yaml --judges '[{"class_path": "entrgi_core.tinyworld.OracleJudge"}]'
"""
from __future__ import annotations

from entrgi_core.tinyworld.grammar import is_valid, sentiment
from rewards.text import TextReward


def oracle_or_worst(text: str) -> float:
    """The oracle sentiment of ``text``, -1 when it is not a review of the grammar."""
    return sentiment(text) if is_valid(text) else -1.0


def oracle(prompts: list[str], responses: list[str]) -> list[float]:
    return [oracle_or_worst(r) for r in responses]


def validity(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(is_valid(r)) for r in responses]


class OracleJudge(TextReward):
    """The oracle sentiment of each response (-1 for an invalid one)."""

    def __init__(self, name: str = "oracle"):
        super().__init__(oracle, batch_size=1024, name=name)


class ValidityJudge(TextReward):
    """1 for a valid review of the grammar, 0 otherwise."""

    def __init__(self, name: str = "valid"):
        super().__init__(validity, batch_size=1024, name=name)
