"""Range checks shared by every object that takes sampling or strategy settings (one wording,
one rule: a bool is never a number). Each raises ``InputError`` naming who was given what."""
from __future__ import annotations

import math
from typing import Callable

from entrgi_core.errors import InputError


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(value, *, who: str, name: str, minimum: int = 0, optional: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (None passes when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{who}: {name} must be {'None or ' if optional else ''}an integer >= {minimum}, "
                         f"got {value!r}")
    return value


def real(value, *, who: str, name: str, rule: str, ok: Callable[[float], bool], none_means: str | None = None,
         finite: bool = True) -> float | None:
    """``value`` as a float satisfying ``ok``; ``rule`` says the rule in words ("be > 0", "lie in
    [0, 1]"). None passes when ``none_means`` says what None stands for."""
    if value is None and none_means is not None:
        return None
    if not (_is_number(value) and not math.isnan(value) and (math.isfinite(value) or not finite) and ok(value)):
        said = f"be None ({none_means}) or {rule.removeprefix('be ')}" if none_means is not None else rule
        raise InputError(f"{who}: {name} must {said}, got {value!r}")
    return float(value)


def temperature(value, *, who: str, greedy_ok: bool = False, none_means: str | None = None,
                name: str = "temperature") -> float | None:
    """A sampling temperature: > 0, or >= 0 where 0 means greedy."""
    if greedy_ok:
        return real(value, who=who, name=name, rule="be >= 0 (0 = greedy)", ok=lambda v: v >= 0, none_means=none_means)
    return real(value, who=who, name=name, rule="be > 0", ok=lambda v: v > 0, none_means=none_means)


def top_p(value, *, who: str, none_means: str | None = None, name: str = "top_p") -> float | None:
    """A nucleus mass in (0, 1]."""
    return real(value, who=who, name=name, rule="lie in (0, 1]", ok=lambda v: 0 < v <= 1, none_means=none_means)


def fraction(value, *, who: str, name: str) -> float:
    """A number in [0, 1]."""
    return real(value, who=who, name=name, rule="lie in [0, 1]", ok=lambda v: 0 <= v <= 1)


def one_of(value, choices, *, who: str, name: str):
    """``value`` if it is one of ``choices``."""
    if value not in tuple(choices):
        raise InputError(f"{who}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value
