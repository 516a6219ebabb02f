"""OpenAI request bodies -> checked ``ServeRequest`` objects.

A body is the OpenAI one (``/v1/completions``: ``prompt``; ``/v1/chat/completions``: ``messages``)
with ``max_tokens`` (our L), ``n`` (choices returned, the best first), ``seed``, ``temperature`` (the
token sampler's; 0 = greedy; absent: the server config's), ``stop`` (strings the returned text is
cut before; the reward and judges read the response as generated) and ``stream``, and an
``entrgi`` extension object naming the guidance and the sampler:

    "entrgi": {"guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 3}} | null,
               "num_samples": 8, "steps": 32, "return_samples": false}

Everything is checked against the server's ``ServeLimits`` before any model compute; a bad body
raises ``RequestError(status, message)`` (400 for a malformed body, 422 for a setting out of the
server's limits or a strategy it does not allow).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from entrgi_core.errors import InputError

EXTENSION = "entrgi"
ALLOWED = ("guidance.EntRGi", "guidance.Expectation", "guidance.StraightThrough", "guidance.NoGuidance")


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and one line saying what is wrong."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ServeLimits:
    """What the server allows (its config): the largest K, steps, response length and prompt, and
    the strategies a request may name (class paths)."""

    max_samples: int = 16
    max_steps: int = 64
    max_tokens: int = 64
    max_prompt_chars: int = 4000
    strategies: tuple = ALLOWED
    default_samples: int = 4
    default_steps: int | None = None      # None: the server's sampler config's
    default_guidance: dict | None = None  # a request that names no guidance gets this (None: unguided)


@dataclass
class ServeRequest:
    prompt: str
    max_tokens: int
    num_samples: int                       # K drawn
    n: int                                 # choices returned, the best first (n <= K)
    steps: int
    seed: int
    guidance: dict | None                  # {"class_path", "init_args"} or None (unguided: Best-of-N)
    stream: bool = False
    return_samples: bool = False
    chat: bool = False
    model: str = ""
    temperature: float | None = None       # None: the server config's
    stop: tuple = ()                       # the returned texts are cut before the first of these
    extra: dict = field(default_factory=dict)
    rid: str = ""                          # the server's id for it (a client that leaves is marked by it)

    def make_guidance(self):
        """A fresh strategy object (each batch gets its own)."""
        if self.guidance is None:
            return None
        module, _, name = self.guidance["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**self.guidance.get("init_args", {}))


def _int(body: dict, key: str, default, lo: int, hi: int | None, where: str = "") -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"{where}{key} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise RequestError(422, f"{where}{key} must lie in [{lo}, {hi}] on this server, got {value}")
    return value


def parse_guidance_arg(text: str):
    """A guidance given on a command line: a class path (``guidance.EntRGi``), ``none``, or the JSON
    of ``{"class_path": ..., "init_args": {...}}``."""
    import json

    text = text.strip()
    if text.lower() in ("none", "null", ""):
        return None
    if not text.startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"the default guidance is not valid JSON ({exc.msg} at character {exc.pos}): {text[:200]}") \
            from None


def check_default_guidance(spec, limits: ServeLimits) -> dict | None:
    """A server's (or evaluator's) default guidance, checked as a request's would be: ``RequestError``
    becomes ``InputError`` (a configuration error, before the models load)."""
    try:
        return _guidance(spec, limits)
    except RequestError as exc:
        raise InputError(f"the default guidance: {exc.message}") from None


def _guidance(spec, limits: ServeLimits) -> dict | None:
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise RequestError(400, f"entrgi.guidance must be null, a class path or {{\"class_path\": ..., "
                                f"\"init_args\": {{...}}}}, got {spec!r}")
    path, args = spec["class_path"], spec.get("init_args") or {}
    if path not in limits.strategies:
        raise RequestError(422, f"entrgi.guidance {path!r} is not allowed on this server; allowed: "
                                f"{', '.join(limits.strategies)}")
    if not isinstance(args, dict):
        raise RequestError(400, f"entrgi.guidance.init_args must be an object, got {args!r}")
    request = {"class_path": path, "init_args": dict(args)}
    try:                                     # the strategy's own checks, before any model compute
        ServeRequest("", 1, 1, 1, 1, 0, request).make_guidance()
    except InputError as exc:
        raise RequestError(422, f"entrgi.guidance: {exc}") from None
    except TypeError as exc:
        raise RequestError(422, f"entrgi.guidance {path}: {exc}") from None
    return request


def _common(body: dict, prompt: str, limits: ServeLimits, *, chat: bool, config_steps: int) -> ServeRequest:
    if not prompt.strip():
        raise RequestError(400, "the prompt is empty")
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(422, f"the prompt has {len(prompt)} characters; this server takes at most "
                                f"{limits.max_prompt_chars}")
    ext = body.get(EXTENSION) or {}
    if not isinstance(ext, dict):
        raise RequestError(400, f"{EXTENSION} must be an object, got {ext!r}")
    unknown = sorted(set(ext) - {"guidance", "num_samples", "steps", "return_samples"})
    if unknown:
        raise RequestError(400, f"{EXTENSION} has unknown fields {unknown}; it takes guidance, num_samples, steps, "
                                "return_samples")
    n = _int(body, "n", 1, 1, limits.max_samples)
    k = _int(ext, "num_samples", max(n, limits.default_samples), n, limits.max_samples, f"{EXTENSION}.")
    steps = _int(ext, "steps", limits.default_steps or config_steps, 1, limits.max_steps, f"{EXTENSION}.")
    max_tokens = _int(body, "max_tokens", min(limits.max_tokens, 32), 1, limits.max_tokens)
    if steps > max_tokens:
        raise RequestError(422, f"{EXTENSION}.steps ({steps}) must not exceed max_tokens ({max_tokens}): each step "
                                "commits at least one token")
    seed = _int(body, "seed", 0, 0, None)
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not 0 <= temperature <= 2):
        raise RequestError(400, f"temperature must be a number in [0, 2], got {temperature!r}")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
    if not isinstance(stop, list) or len(stop) > 16 or not all(isinstance(t, str) and t for t in stop):
        raise RequestError(400, f"stop must be a non-empty string or a list of at most 16 of them, got "
                                f"{body.get('stop')!r}"[:300])
    stream, samples = body.get("stream", False), ext.get("return_samples", False)
    for key, value in (("stream", stream), (f"{EXTENSION}.return_samples", samples)):
        if not isinstance(value, bool):
            raise RequestError(400, f"{key} must be true or false, got {value!r}")
    guidance = _guidance(ext["guidance"], limits) if "guidance" in ext else limits.default_guidance
    return ServeRequest(prompt=prompt, max_tokens=max_tokens, num_samples=k, n=n, steps=steps, seed=seed,
                        guidance=guidance, stream=stream, return_samples=samples,
                        chat=chat, model=str(body.get("model", "")),
                        temperature=None if temperature is None else float(temperature), stop=tuple(stop))


def parse_completion(body, limits: ServeLimits, config_steps: int = 32) -> ServeRequest:
    """A ``/v1/completions`` body (one prompt string)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(body).__name__}")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(400, f"prompt must be a string (one prompt per request), got {prompt!r}"[:300])
    return _common(body, prompt, limits, chat=False, config_steps=config_steps)


def parse_chat(body, limits: ServeLimits, config_steps: int = 32) -> ServeRequest:
    """A ``/v1/chat/completions`` body: one user turn (the model's chat template is applied to it)."""
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise RequestError(400, "messages must be a non-empty list of {\"role\", \"content\"} objects")
    if len(messages) != 1 or messages[0].get("role") != "user" or not isinstance(messages[0].get("content"), str):
        raise RequestError(422, "this server takes one user message per chat request (multi-turn and system "
                                "messages are not supported yet)")
    return _common(body, messages[0]["content"], limits, chat=True, config_steps=config_steps)
