"""Settings of an injected object (a strategy, a commit schedule), read from its constructor.

An object's constructor arguments are recorded once, in its signature: ``settings(obj)`` is
``{"class": "<module>.<Class>", <each argument>: <the attribute of the same name>}``, with an
argument that is itself such an object given as its own settings. Run records, the resume check
and the CLI's class path round trip all read this one dict.
"""
from __future__ import annotations

import inspect


def class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__name__}"


def settings(obj) -> dict:
    """What determines ``obj``'s behaviour: its class and constructor arguments (see the module
    docstring). Every argument must be kept as an attribute of the same name."""
    out = {"class": class_path(obj)}
    for name, param in inspect.signature(type(obj).__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(obj, name):
            raise TypeError(f"{type(obj).__name__}.settings() records each constructor argument from the attribute "
                            f"of the same name, and there is no attribute {name!r}: keep it (self.{name} = {name}) "
                            "or override settings()")
        value = getattr(obj, name)
        out[name] = value.settings() if callable(getattr(value, "settings", None)) else value
    return out


class Recorded:
    """An object known by its settings (a commit schedule, a strength schedule): equal, hashed and
    shown by them."""

    def settings(self) -> dict:
        return settings(self)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other.settings() == self.settings()

    def __hash__(self) -> int:
        return hash(tuple(self.settings().items()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k != "class")
        return f"{type(self).__name__}({args})"
