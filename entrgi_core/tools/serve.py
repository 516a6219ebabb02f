"""``entrgi serve``: guided sampling behind an OpenAI-compatible HTTP API, on LitServe.

    entrgi serve --config configs/tiny.yaml [--host 127.0.0.1] [--port 8000] [--max-batch-size 8]
                 [--batch-timeout 0.05] [--max-samples 16] [--max-steps 64] [--max-tokens 64]
                 [--strategies guidance.EntRGi guidance.NoGuidance ...] [--default-guidance guidance.EntRGi]
                 [any entrgi predict override]

Serves the configuration's diffusion LM, reward model and judges: ``POST /v1/completions`` and
``POST /v1/chat/completions`` (one user turn, through the model's chat template), ``GET
/v1/models`` and ``GET /health``. A request names its guidance and sampler in the ``entrgi``
extension field (``entrgi_core.serving.requests``; one that names none gets ``--default-guidance``,
unguided unless set); the server's flags set the defaults and the limits. OpenAI's ``temperature``
and ``stop`` are honoured (what ``lm_eval --model local-completions`` sends). Every request is checked in the HTTP process before it is queued (``OpenAIGate``): a
malformed body or a setting out of the limits gets its 4xx and one line, and never reaches a
batch. LitServe batches up to ``--max-batch-size`` queued requests (waiting at most
``--batch-timeout`` s); compatible ones run as one ``generate`` with a seed each, so a response
never depends on what it was batched with. Each response carries the Top@1 text (``n`` best
choices), and an ``entrgi`` object with the reward, the judges' scores, tokens per forward and
the compute account. ``stream: true`` gets server-sent events: each denoising step's K canvases,
then the choices (``entrgi_core.serving.events``). A client that disconnects before its answer
frees its place: a queued request is dropped, and a generate all of whose clients left stops after
its current step (``entrgi_core.serving.cancel``). On SIGTERM the server stops taking connections
and lets in-flight requests finish (up to ``--graceful-timeout`` s) before it exits.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import replace

from entrgi_core.serving.events import final_chunks, sse, step_chunk
from entrgi_core.serving.requests import (
    ALLOWED,
    RequestError,
    ServeLimits,
    check_default_guidance,
    parse_chat,
    parse_completion,
    parse_guidance_arg,
)

ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
INTERNAL = "/v1/completions"            # the one LitAPI path both endpoints reach
CHAT = "_entrgi_chat"                   # set by the gate on a chat request's body
RID = "_entrgi_id"                      # the gate's id for the request (cancellations are marked by it)


def _error(status: int, message: str) -> tuple[int, bytes]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


async def _send_json(send, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


class _Answer:
    """The ``send`` LitServe's response goes through: reads the worker's lines
    (``entrgi_core.serving.events``) and sends the client one JSON response, or server-sent events
    when it asked to stream. A response LitServe itself failed (not 200) passes through as it is."""

    def __init__(self, send, *, stream: bool, chat: bool, model: str):
        self.send, self.stream, self.chat, self.model = send, stream, chat, model
        self.cid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.buffer, self.started, self.done, self.passthrough = b"", False, False, False

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            self.passthrough = message["status"] != 200
            if self.passthrough:
                await self.send(message)
            return
        if self.passthrough:
            self.done = not message.get("more_body", False)
            await self.send(message)
            return
        if message["type"] != "http.response.body":
            return
        self.buffer += message.get("body", b"")
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                await self.line(json.loads(line))
        if not message.get("more_body", False) and not self.done:
            await self.line({"error": [500, "the worker ended without an answer (the server's log says why)"]})

    async def _event(self, payload, *, last: bool = False) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200,
                             "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        await self.send({"type": "http.response.body", "body": sse(payload), "more_body": not last})

    async def line(self, event: dict) -> None:
        if self.done:
            return
        if "step" in event:
            if self.stream:
                await self._event(step_chunk(event, chat=self.chat, cid=self.cid, created=self.created,
                                             model=self.model))
            return
        self.done = True
        if "final" in event:
            response = dict(event["final"], id=self.cid)
            if not self.stream:
                await _send_json(self.send, 200, json.dumps(response).encode())
                return
            for chunk in final_chunks(response, chat=self.chat, cid=self.cid):
                await self._event(chunk)
            await self._event("[DONE]", last=True)
            return
        status, message = event["error"]
        if self.started:                     # mid-stream: an error event ends the stream
            await self._event(json.loads(_error(status, message)[1]), last=True)
        else:
            await _send_json(self.send, *_error(status, message))


class OpenAIGate:
    """ASGI middleware: checks each completion / chat body (``parse_completion`` / ``parse_chat``)
    before LitServe queues it; a bad one is answered here with its status, a good one goes on to the
    one LitAPI path, marked chat or not and with an id. The answer comes back through ``_Answer``;
    a client that disconnects first is marked in ``cancels``."""

    def __init__(self, app, *, limits: ServeLimits, config_steps: int, cancels=None, streams: str = "",
                 model: str = "entrgi"):
        self.app, self.limits, self.config_steps = app, limits, config_steps
        self.cancels, self.streams, self.model = cancels, streams, model

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in ENDPOINTS or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        chat = scope["path"] == "/v1/chat/completions"
        try:
            try:
                data = json.loads(body or b"null")
            except ValueError as exc:
                raise RequestError(400, f"the body is not valid JSON ({exc})") from None
            request = (parse_chat if chat else parse_completion)(data, self.limits, self.config_steps)
            if request.stream and self.streams:
                raise RequestError(422, f"stream: true is not available: {self.streams}")
        except RequestError as err:
            await _send_json(send, *_error(err.status, err.message))
            return
        rid = uuid.uuid4().hex
        data[CHAT], data[RID] = chat, rid
        new = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-length", str(len(new)).encode()), (b"content-type", b"application/json")]
        answer = _Answer(send, stream=request.stream, chat=chat, model=self.model)
        left = asyncio.Event()
        sent = False

        async def listen():                  # the client's side of the connection, until it leaves
            while (await receive())["type"] != "http.disconnect":
                pass
            if not answer.done and self.cancels is not None:
                self.cancels.mark(rid)
            left.set()

        async def replay():
            nonlocal sent
            if sent:
                await left.wait()
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": new, "more_body": False}

        listener = asyncio.create_task(listen())
        try:
            await self.app(dict(scope, path=INTERNAL, raw_path=INTERNAL.encode(), headers=headers), replay, answer)
        finally:
            listener.cancel()


def _api_class():
    """``EntrgiAPI``, defined at import of litserve (a module-level class: LitServe pickles it to its workers)."""
    import litserve as ls

    class EntrgiAPI(ls.LitAPI):
        """The model side: loads the configuration in each worker, runs batches of checked requests."""

        def __init__(self, config_args, limits, config_steps, name, cancels=None, **kwargs):
            super().__init__(stream=True, **kwargs)
            self.config_args, self.limits, self.config_steps, self.name = config_args, limits, config_steps, name
            self.cancels = cancels

        def setup(self, device):
            from entrgi_core.tools.compare import load

            module, _ = load(self.config_args)
            self.model, self.reward, self.base = module.model, module.reward, module.config
            self.judges, self.select = list(module.judges), module.select

        def decode_request(self, request):              # LitServe reads the parameter's name
            chat, rid = bool(request.pop(CHAT, False)), str(request.pop(RID, ""))
            parsed = (parse_chat if chat else parse_completion)(request, self.limits, self.config_steps)
            return replace(parsed, rid=rid)

        def batch(self, inputs):
            return list(inputs)

        def unbatch(self, outputs):                     # predict already yields one line per request
            yield from outputs

        def predict(self, requests):                    # a generator: LitServe streams what it yields
            from entrgi_core.serving.batch import answer

            single = not isinstance(requests, list)
            for lines in answer(self.model, self.reward, self.base, [requests] if single else requests,
                                name=self.name, judges=self.judges, select=self.select, cancels=self.cancels):
                yield lines[0] if single else lines

        def encode_response(self, outputs):            # the lines are the encoding (see _Answer)
            yield from outputs

    return EntrgiAPI


def __getattr__(name: str):
    if name == "EntrgiAPI":                      # litserve is imported only when a server is built
        cls = _api_class()
        cls.__module__, cls.__qualname__ = __name__, "EntrgiAPI"
        globals()["EntrgiAPI"] = cls
        return cls
    raise AttributeError(name)


def build(config_args: list[str], limits: ServeLimits, *, max_batch_size: int, batch_timeout: float,
          workers_per_device: int = 1, graceful_timeout: float = 300.0, cancels=None):
    """The LitServer (not started): the API, the gate and the /v1/models route. ``cancels`` (a
    ``Cancellations``, which the caller removes after the server stops) marks requests whose
    clients left; None: nothing is stopped early."""
    import litserve as ls

    from entrgi_core.models import OwnLoopLM
    from entrgi_core.tools.compare import load

    module, _ = load(config_args)                         # refuse a bad configuration now, in one line
    config_steps, name = module.config.steps, str(getattr(module.model, "name", "entrgi"))
    streams = (f"{type(module.model).__name__} runs its own denoising loop, which reports no steps"
               if isinstance(module.model, OwnLoopLM) else "")
    del module

    api = __getattr__("EntrgiAPI")(config_args, limits, config_steps, name, cancels, api_path=INTERNAL,
                                   max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    gate = {"limits": limits, "config_steps": config_steps, "cancels": cancels, "streams": streams, "model": name}
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers_per_device,
                          healthcheck_path="/health", timeout=600, middlewares=[(OpenAIGate, gate)])

    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "entrgi"}]}

    server.app.add_api_route("/v1/models", models, methods=["GET"])
    server.uvicorn_graceful_timeout = graceful_timeout    # SIGTERM: in-flight requests finish first (LitServe: 30 s)
    return server


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="entrgi serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None, help="an entrgi predict config (repeatable)")
    ap.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-batch-size", type=int, default=8, help="the most queued requests one batch takes")
    ap.add_argument("--batch-timeout", type=float, default=0.05, help="seconds a batch waits to fill")
    defaults = ServeLimits()
    ap.add_argument("--max-samples", type=int, default=defaults.max_samples, help="the largest K a request may ask")
    ap.add_argument("--max-steps", type=int, default=defaults.max_steps)
    ap.add_argument("--max-tokens", type=int, default=defaults.max_tokens)
    ap.add_argument("--max-prompt-chars", type=int, default=defaults.max_prompt_chars)
    ap.add_argument("--default-samples", type=int, default=defaults.default_samples)
    ap.add_argument("--strategies", nargs="+", default=list(ALLOWED), help="the strategies requests may name")
    ap.add_argument("--default-guidance", default=None, metavar="JSON",
                    help="the guidance of a request that names none: a class path or "
                         "'{\"class_path\": ..., \"init_args\": {...}}' (default: unguided, Best-of-N)")
    ap.add_argument("--graceful-timeout", type=float, default=300.0,
                    help="on SIGTERM, seconds in-flight requests may take to finish before the server stops")
    args, overrides = ap.parse_known_args(argv)
    from entrgi_core.errors import InputError
    for key in ("port", "max_batch_size", "max_samples", "max_steps", "max_tokens", "max_prompt_chars",
                "default_samples"):
        if getattr(args, key) < 1:
            raise InputError(f"entrgi serve: --{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.batch_timeout < 0:
        raise InputError(f"entrgi serve: --batch-timeout must be >= 0, got {args.batch_timeout}")
    limits = ServeLimits(max_samples=args.max_samples, max_steps=args.max_steps, max_tokens=args.max_tokens,
                         max_prompt_chars=args.max_prompt_chars, strategies=tuple(args.strategies),
                         default_samples=min(args.default_samples, args.max_samples))
    if args.default_guidance is not None:
        limits = replace(limits, default_guidance=check_default_guidance(parse_guidance_arg(args.default_guidance),
                                                                         limits))
    configs = args.config or ["configs/tiny.yaml"]
    config_args = [a for c in configs for a in ("--config", c)] + overrides
    if args.graceful_timeout < 0:
        raise InputError(f"entrgi serve: --graceful-timeout must be >= 0, got {args.graceful_timeout}")
    from entrgi_core.serving.cancel import Cancellations

    cancels = Cancellations.create()
    try:
        server = build(config_args, limits, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                       graceful_timeout=args.graceful_timeout, cancels=cancels)
        import signal

        def stop(signum, frame):     # SIGTERM takes LitServe's Ctrl-C path: workers drain, then all exit
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        server.run(host=args.host, port=args.port, generate_client_file=False)
    finally:
        cancels.remove()
