"""Guided sampling behind an OpenAI-compatible HTTP API (``entrgi serve``).

``requests`` turns OpenAI completion and chat bodies into checked ``ServeRequest`` objects (every
bad request is a ``RequestError`` with its HTTP status and one line, before any model compute),
``batch`` runs compatible requests as one ``generate`` with a seed per prompt (a request's result
does not depend on what it was batched with) and builds the OpenAI responses, ``events`` is a
request's answer as a stream (each step's canvas, then the answer), and ``cancel`` marks the
requests whose clients left.
"""
from entrgi_core.serving.batch import compatible, respond, run_requests
from entrgi_core.serving.requests import RequestError, ServeLimits, ServeRequest, parse_chat, parse_completion

__all__ = ["RequestError", "ServeLimits", "ServeRequest", "parse_completion", "parse_chat", "compatible",
           "run_requests", "respond"]
