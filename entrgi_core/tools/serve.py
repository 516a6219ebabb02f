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
the compute account. On SIGTERM the server stops taking connections and lets in-flight requests
finish (up to ``--graceful-timeout`` s) before it exits. Not yet: streaming each step's canvas
(``stream: true`` is refused with 422).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

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


def _error(status: int, message: str) -> tuple[int, bytes]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return status, json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


class OpenAIGate:
    """ASGI middleware: checks each completion / chat body (``parse_completion`` / ``parse_chat``)
    before LitServe queues it; a bad one is answered here with its status, a good one goes on to the
    one LitAPI path, marked chat or not."""

    def __init__(self, app, *, limits: ServeLimits, config_steps: int):
        self.app, self.limits, self.config_steps = app, limits, config_steps

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
            if request.stream:
                raise RequestError(422, "stream: true is not supported by this server yet")
        except RequestError as err:
            status, payload = _error(err.status, err.message)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        data[CHAT] = chat
        new = json.dumps(data).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-length", b"content-type")]
        headers += [(b"content-length", str(len(new)).encode()), (b"content-type", b"application/json")]
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": new, "more_body": False}

        await self.app(dict(scope, path=INTERNAL, raw_path=INTERNAL.encode(), headers=headers), replay, send)


def _api_class():
    """``EntrgiAPI``, defined at import of litserve (a module-level class: LitServe pickles it to its workers)."""
    import litserve as ls
    from starlette.responses import JSONResponse

    class EntrgiAPI(ls.LitAPI):
        """The model side: loads the configuration in each worker, runs batches of checked requests."""

        def __init__(self, config_args, limits, config_steps, name, **kwargs):
            super().__init__(**kwargs)
            self.config_args, self.limits, self.config_steps, self.name = config_args, limits, config_steps, name

        def setup(self, device):
            from entrgi_core.tools.compare import load

            module, _ = load(self.config_args)
            self.model, self.reward, self.base = module.model, module.reward, module.config
            self.judges, self.select = list(module.judges), module.select

        def decode_request(self, request):              # LitServe reads the parameter's name
            chat = bool(request.pop(CHAT, False))
            return (parse_chat if chat else parse_completion)(request, self.limits, self.config_steps)

        def batch(self, inputs):
            return list(inputs)

        def unbatch(self, outputs):
            return outputs

        def predict(self, requests):
            from entrgi_core.errors import InputError
            from entrgi_core.serving.batch import compatible, respond, run_requests

            single = not isinstance(requests, list)
            requests = [requests] if single else requests
            out = [None] * len(requests)
            groups: dict = {}
            for i, r in enumerate(requests):
                groups.setdefault(compatible(r), []).append(i)
            for members in groups.values():
                try:
                    res = run_requests(self.model, self.reward, self.base, [requests[i] for i in members],
                                       judges=self.judges, select=self.select)
                    for j, i in enumerate(members):
                        out[i] = respond(requests[i], res, j, self.name)
                        out[i]["entrgi"]["batch"] = {"requests": len(requests), "generate": len(members)}
                except Exception as exc:          # this group fails alone, with one line (the others go on)
                    status = 422 if isinstance(exc, InputError) else 500
                    for i in members:
                        out[i] = {"__error__": [status, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"]}
            return out[0] if single else out

        def encode_response(self, output):
            if "__error__" in output:
                status, message = output["__error__"]
                return JSONResponse(status_code=status, content=json.loads(_error(status, message)[1]))
            return output

    return EntrgiAPI


def __getattr__(name: str):
    if name == "EntrgiAPI":                      # litserve is imported only when a server is built
        cls = _api_class()
        cls.__module__, cls.__qualname__ = __name__, "EntrgiAPI"
        globals()["EntrgiAPI"] = cls
        return cls
    raise AttributeError(name)


def build(config_args: list[str], limits: ServeLimits, *, max_batch_size: int, batch_timeout: float,
          workers_per_device: int = 1, graceful_timeout: float = 300.0):
    """The LitServer (not started): the API, the gate and the /v1/models route."""
    import litserve as ls

    from entrgi_core.tools.compare import load

    module, _ = load(config_args)                         # refuse a bad configuration now, in one line
    config_steps, name = module.config.steps, str(getattr(module.model, "name", "entrgi"))
    del module

    api = __getattr__("EntrgiAPI")(config_args, limits, config_steps, name, api_path=INTERNAL, max_batch_size=max_batch_size,
                    batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=workers_per_device,
                          healthcheck_path="/health", timeout=600,
                          middlewares=[(OpenAIGate, {"limits": limits, "config_steps": config_steps})])

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
    server = build(config_args, limits, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                   graceful_timeout=args.graceful_timeout)
    import signal

    def stop(signum, frame):         # SIGTERM takes LitServe's Ctrl-C path: workers drain, then all exit
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    server.run(host=args.host, port=args.port, generate_client_file=False)
