"""The tiny world: a review grammar with an exact sentiment oracle (``grammar``), two tokenizers
(``tokenizers``), a tiny masked diffusion LM and tiny reward model trained on it
(``python -m entrgi_core.tinyworld.train``), shipped under ``checkpoints/``, and the oracle as
judges (``OracleJudge``, ``ValidityJudge``)."""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
PROMPTS = Path(__file__).resolve().parent / "prompts.jsonl"
TRAIN_PROMPTS = Path(__file__).resolve().parent / "train_prompts.jsonl"   # the subjects PROMPTS leaves out


def _checkpoint(name: str) -> Path:
    path = CHECKPOINTS / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"tiny-world checkpoint {path} is missing; rebuild it with "
                                "`python -m entrgi_core.tinyworld.train`")
    return path


def dlm_path() -> Path:
    """The shipped tiny masked diffusion LM (load with ``MaskedLM(str(dlm_path()))``)."""
    return _checkpoint("dlm")


def rm_path() -> Path:
    """The shipped tiny sentiment reward model (load with ``HFRewardModel(str(rm_path()))``)."""
    return _checkpoint("rm")


def rm_imperfect_path() -> Path:
    """The shipped **imperfect** reward model: the same architecture fit to few, noisy labels
    (Pearson r about 0.81 with the oracle on held-out reviews; ``python -m
    entrgi_core.tinyworld.train --imperfect-rm``). Guidance can raise its reward without raising
    the oracle."""
    return _checkpoint("rm_imperfect")


from entrgi_core.tinyworld.judges import OracleJudge, ValidityJudge  # noqa: E402  (judges build on rewards)

__all__ = ["CHECKPOINTS", "PROMPTS", "TRAIN_PROMPTS", "OracleJudge", "ValidityJudge", "dlm_path", "rm_path",
           "rm_imperfect_path"]
