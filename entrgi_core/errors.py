"""The two error types entrgi raises on purpose.

``InputError``: bad input, found by a check that runs before any model compute (a setting out of
range, an empty prompt, a prompt over the position limit, an output directory of another run).
The ``entrgi`` CLI prints these in one line; everything else keeps its traceback.
``ScoreError`` (an ``InputError``): a text reward's function failed or returned bad values; the
message names the prompt ids, and what was written before stays.
``NonFiniteLogitsError``: a model or a guidance update produced NaN or infinite logits; the same
type on every backend (the compiled op never raises for non-finite values itself, CPU or CUDA).
"""
from __future__ import annotations

import torch


class InputError(ValueError):
    """Bad input, refused before any model compute; nothing was run or written."""


class ScoreError(InputError):
    """A reward could not score some responses (a text reward's function failed, or returned
    something other than one finite number per response); ``rows`` says which."""

    def __init__(self, message: str, rows: list[int] | None = None):
        super().__init__(message)
        self.rows = list(rows or [])


class NonFiniteLogitsError(FloatingPointError):
    """Logits holding NaN or +-inf where a distribution is needed."""


def require_finite(logits: torch.Tensor, what: str) -> None:
    """Raise ``NonFiniteLogitsError`` naming ``what`` unless every logit is finite (one host sync).
    A finite sum proves every term finite (NaN and +-inf propagate through a sum) in one pass over
    ``logits``; only a sum that overflows on finite terms takes the element-wise check."""
    if not bool(torch.isfinite(logits.sum())) and not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogitsError(f"{what}: non-finite logits (NaN or +-inf)")
