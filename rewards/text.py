"""TextReward: any function of text as a reward (a verifier, a rule, a remote judge).

    TextReward(fn, batch_size=64, name=None)
    fn(prompts: list[str], responses: list[str]) -> a sequence of floats, one per response

From the command line ``fn`` is a dotted path, ``module:function`` or ``module.function``
(``--select rewards.TextReward --select.fn mypkg.scoring:is_correct``). It scores text only:
it can select Top@1 (``select=``), judge (``judges=``), be Best-of-N's reward and read SMC's
potential on the argmax completion (``SMC(intermediate="hard")``); a strategy that differentiates
the reward (EntRGi, APS, Expectation) refuses it before any compute. Output that is not one
finite number per response is an error naming the rows, and ``generate`` names their prompt ids.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable

import torch
from torch import Tensor

from entrgi_core.errors import ScoreError
from rewards.base import RewardAdapter


def resolve(fn: Callable | str) -> Callable:
    """``fn`` itself, or the function a dotted path (``module:name`` or ``module.name``) names."""
    if callable(fn):
        return fn
    if not isinstance(fn, str) or not fn.strip():
        raise ScoreError(f"TextReward: fn must be a function or a dotted path such as 'mypkg.mod:score', got {fn!r}")
    module, _, attr = fn.rpartition(":") if ":" in fn else fn.rpartition(".")
    try:
        target = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ScoreError(f"TextReward: cannot import {fn!r} ({type(exc).__name__}: {exc})") from None
    if not callable(target):
        raise ScoreError(f"TextReward: {fn!r} is not a function")
    return target


class TextReward(RewardAdapter):
    """A reward computed on text by ``fn(prompts, responses)``, in calls of ``batch_size``."""

    differentiable = False

    def __init__(self, fn: Callable | str, batch_size: int = 64, name: str | None = None):
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ScoreError(f"TextReward: batch_size must be an integer >= 1, got {batch_size!r}")
        self.fn = resolve(fn)
        self.batch_size = batch_size
        self.name = name or getattr(self.fn, "__name__", type(self.fn).__name__)

    @property
    def num_parameters(self) -> int:
        return 0

    def identity(self) -> dict:
        fn = self.fn
        return {**super().identity(), "fn": f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"}

    def text_tokens(self, prompt: str, response: str) -> int:
        return 0

    def aligned(self, *args, **kwargs):
        raise ScoreError(self._text_only())

    def prepare(self, prompts):
        raise ScoreError(self._text_only())

    def score_embeds(self, ctx, embeds, keep):
        raise ScoreError(self._text_only())

    def _text_only(self) -> str:
        return (f"TextReward {self.name!r} scores text only: it can select Top@1 (select=...), judge (judges=[...]) "
                "or be the reward of Best-of-N and of SMC(intermediate='hard'); a strategy that differentiates the "
                "reward needs a differentiable reward adapter (e.g. rewards.HFRewardModel)")

    @torch.no_grad()
    def score_text(self, prompts: list[str], responses: list[str]) -> Tensor:
        if len(prompts) != len(responses):
            raise ScoreError(f"TextReward {self.name!r}: {len(prompts)} prompts but {len(responses)} responses")
        out = []
        for start in range(0, len(responses), self.batch_size):
            rows = list(range(start, min(start + self.batch_size, len(responses))))
            try:
                values = list(self.fn([prompts[i] for i in rows], [responses[i] for i in rows]))
            except Exception as exc:                                   # the user's function: any failure
                raise ScoreError(f"TextReward {self.name!r}: fn raised {type(exc).__name__}: {exc}", rows=rows) from exc
            if len(values) != len(rows):
                raise ScoreError(f"TextReward {self.name!r}: fn returned {len(values)} values for {len(rows)} "
                                 "responses", rows=rows)
            bad = [i for i, v in zip(rows, values) if not _finite(v)]
            if bad:
                raise ScoreError(f"TextReward {self.name!r}: fn returned a value that is not a finite number "
                                 f"({values[bad[0] - start]!r})", rows=bad)
            out.extend(float(v) for v in values)
        return torch.tensor(out, dtype=torch.float32)


def _finite(value) -> bool:
    if isinstance(value, (str, bytes)):
        return False
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
