"""A request's answer as a stream: what a worker sends the HTTP side, and the OpenAI chunks a client gets.

A worker answers every request as lines of JSON (LitServe streams them to the HTTP process):

    {"step": i, "total": T, "canvas": [K texts]}      after denoising step i (streaming requests only)
    {"final": <the OpenAI response>}                   the answer (``batch.respond``)
    {"error": [status, "one line"]}                    the answer, when its generate failed

The HTTP side (``OpenAIGate``) turns them into what the client asked for: one JSON response
(``stream: false``: only the last line counts, an error keeps its status), or server-sent events
(``stream: true``): one chunk per denoising step whose ``entrgi`` object carries the step and the
K canvases (masked positions shown as the tokenizer's mask token), with empty text; then one
chunk per choice whose text is the whole choice (a masked model rewrites its canvas, so there are
no deltas to send earlier; joining the chunks' texts gives the answer), the first of them with
``usage`` and the response's ``entrgi`` object; then ``data: [DONE]``.
"""
from __future__ import annotations

import json

from entrgi_core.stops import first_stop


def step_line(index: int, total: int, canvas: list[str]) -> str:
    return json.dumps({"step": index, "total": total, "canvas": canvas}) + "\n"


def final_line(response: dict) -> str:
    return json.dumps({"final": response}) + "\n"


def error_line(status: int, message: str) -> str:
    return json.dumps({"error": [status, message]}) + "\n"


def canvas_text(model, ids: list[int]) -> str:
    """One response canvas as text: its tokens up to the first stop token, each still-masked
    position shown as the tokenizer's mask token."""
    ids = ids[: first_stop(ids, model.stop_ids)]
    mask = getattr(model.tokenizer, "mask_token", None) or "[MASK]"
    pieces, run = [], []
    for t in ids + [None]:
        if t is None or t == model.mask_id:
            if run:
                pieces.append(model.decode(run))
                run = []
            if t is not None:
                pieces.append(mask)
        else:
            run.append(t)
    return " ".join(p for p in pieces if p)


def _choice(chat: bool, index: int, content: str, finish) -> dict:
    if chat:
        return {"index": index, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}
    return {"index": index, "text": content, "finish_reason": finish, "logprobs": None}


def _chunk(chat: bool, cid: str, created: int, model: str, choices: list) -> dict:
    return {"id": cid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": choices}


def step_chunk(event: dict, *, chat: bool, cid: str, created: int, model: str) -> dict:
    """The chunk of a ``step_line`` event: empty text, the step and canvases under ``entrgi``."""
    out = _chunk(chat, cid, created, model, [_choice(chat, 0, "", None)])
    out["entrgi"] = {"step": event["step"], "total": event["total"], "canvas": event["canvas"]}
    return out


def final_chunks(response: dict, *, chat: bool, cid: str) -> list[dict]:
    """The chunks of a final response: one per choice with its whole text (the first carries
    ``usage`` and the ``entrgi`` object)."""
    chunks = []
    for choice in response["choices"]:
        text = choice["message"]["content"] if chat else choice["text"]
        chunks.append(_chunk(chat, cid, response["created"], response["model"],
                             [_choice(chat, choice["index"], text, choice["finish_reason"])]))
    chunks[0]["usage"], chunks[0]["entrgi"] = response["usage"], response["entrgi"]
    return chunks


def sse(payload) -> bytes:
    """One server-sent event (``data: <json>``, or ``data: [DONE]`` for the string "[DONE]")."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()
