"""Run compatible ``ServeRequest`` objects as one ``generate`` and build OpenAI responses.

``answer`` is what a server worker runs on a batch of requests: it groups them, runs each group,
and yields the lines of ``entrgi_core.serving.events`` (steps for streaming requests, then each
request's answer), dropping requests whose clients left and stopping a generate all of whose
clients left.

Requests are compatible when they share everything but the prompt, the seed and the stop strings
(K, steps, length, temperature, guidance): each then runs as prompt id 0 with its own seed (``generate(seeds=...)``), so
its result is exactly ``generate(model, [prompt], config=replace(config, seed=seed, ...))``, whatever
it was batched with.
"""
from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import replace

from entrgi_core.serving import events
from entrgi_core.serving.requests import ServeRequest


def compatible(request: ServeRequest) -> tuple:
    """Requests with equal keys share one ``generate``."""
    return (request.max_tokens, request.num_samples, request.steps, request.temperature,
            json.dumps(request.guidance, sort_keys=True))


def groups(requests: list[ServeRequest]) -> list[list[int]]:
    """The indices of ``requests`` grouped by ``compatible`` key (groups in order of first
    appearance, each in request order): each group can run as one ``generate``."""
    by_key: dict = {}
    for i, r in enumerate(requests):
        by_key.setdefault(compatible(r), []).append(i)
    return list(by_key.values())


def run_requests(model, reward, base, requests: list[ServeRequest], *, judges=(), select=None, on_step=None):
    """One ``generate`` over compatible ``requests`` (``compatible`` equal for all); returns its result,
    prompt b being request b (``on_step``: ``generate``'s)."""
    from entrgi_core.sampler import generate

    return generate(model, **_generate_args(reward, base, requests, judges, select), on_step=on_step)


def request_steps(model, reward, base, requests: list[ServeRequest], *, judges=(), select=None):
    """``run_requests`` one denoising step at a time (``generate_steps``: iterate, then ``.result``)."""
    from entrgi_core.sampler import generate_steps

    return generate_steps(model, **_generate_args(reward, base, requests, judges, select))


def _generate_args(reward, base, requests: list[ServeRequest], judges, select) -> dict:
    if len({compatible(r) for r in requests}) != 1:
        raise ValueError("run_requests: the requests are not compatible (see compatible())")
    first = requests[0]
    config = replace(base, max_new_tokens=first.max_tokens, num_samples=first.num_samples, steps=first.steps)
    if first.temperature is not None:
        config = replace(config, temperature=first.temperature)
    return dict(prompts=[r.prompt for r in requests], reward=reward, guidance=first.make_guidance(),
                config=config, prompt_ids=[0] * len(requests), seeds=[r.seed for r in requests],
                judges=list(judges) or None, select=select)


class ClientsLeft(Exception):
    """Every client of a running generate disconnected (at step ``args[0]``)."""


def answer(model, reward, base, requests: list[ServeRequest], *, name: str, judges=(), select=None,
           cancels=None, log=None):
    """Run ``requests`` (a worker's batch) and yield, each time, one line per request (``""`` for a
    request with nothing to send): step lines for streaming requests, then every request's final or
    error line. Compatible requests share one ``generate``; a request whose client left
    (``cancels``, a ``Cancellations``) before its group starts is dropped, and a generate all of
    whose clients left stops after its current step. ``log`` (default: stderr) gets one line each
    time work is dropped or stopped."""
    say = log or (lambda line: print(f"[entrgi serve] {line}", file=sys.stderr, flush=True))
    gone = (lambda r: cancels.gone(r.rid)) if cancels is not None else (lambda r: False)
    for members in groups(requests):
        live = [i for i in members if not gone(requests[i])]
        if len(live) < len(members):
            say(f"dropped {len(members) - len(live)} queued request(s) whose clients disconnected")
            yield [events.error_line(499, "the client disconnected") if i in members and i not in live else ""
                   for i in range(len(requests))]
        if live:
            yield from _answer_group(model, reward, base, requests, live, name=name, judges=judges, select=select,
                                     gone=gone if cancels is not None else None, say=say)
        if cancels is not None:                # every mark of this group is read now
            for i in members:
                cancels.clear(requests[i].rid)


def _answer_group(model, reward, base, requests, live: list[int], *, name, judges, select, gone, say):
    """``answer`` for one compatible group ``live`` (indices into ``requests``): step lines while it
    runs, then its final or error lines. ``gone`` (None: no client can leave) stops the generate
    when every request of the group is gone."""
    from entrgi_core.errors import InputError

    group = [requests[i] for i in live]
    streaming = [j for j, r in enumerate(group) if r.stream]
    out = [""] * len(requests)
    try:                                      # in this thread: torch's CPU ops ran 2x slower in a thread of their own
        steps = request_steps(model, reward, base, group, judges=judges, select=select)
        for index, tokens in steps:
            if gone is not None and all(gone(r) for r in group):
                steps.close()
                raise ClientsLeft(index)
            if streaming:
                rows = tokens[streaming].cpu().tolist()                    # (S, K, L)
                step = [""] * len(requests)
                for s, j in enumerate(streaming):
                    step[live[j]] = events.step_line(index, group[j].steps,
                                                     [events.canvas_text(model, ids) for ids in rows[s]])
                yield step
        res = steps.result
        for j, i in enumerate(live):
            response = respond(group[j], res, j, name)
            response["entrgi"]["batch"] = {"requests": len(requests), "generate": len(live)}
            out[i] = events.final_line(response)
    except ClientsLeft as left:
        say(f"stopped a generate of {len(live)} request(s) after step {left.args[0] + 1} of "
            f"{group[0].steps}: every client disconnected")
        for i in live:
            out[i] = events.error_line(499, "the client disconnected")
    except Exception as exc:                  # this group fails alone, with one line (the others go on)
        status = 422 if isinstance(exc, InputError) else 500
        for i in live:
            out[i] = events.error_line(status, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    yield out


def cut(text: str, stop: tuple) -> str:
    """``text`` up to the earliest of the ``stop`` strings (all of it when none occurs)."""
    at = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:at]


def respond(request: ServeRequest, res, b: int, model_name: str, count_tokens=None) -> dict:
    """The OpenAI response to ``request``, prompt ``b`` of ``res``: its ``n`` best samples as choices
    (Top@1 first), and an ``entrgi`` object with the reward, the judges' scores, tokens per forward
    and the compute account (the samples too, with ``return_samples``)."""
    texts = [cut(t, request.stop) for t in res.texts[b]]
    if res.rewards is not None:
        order = sorted(range(len(texts)), key=lambda i: (-float(res.rewards[b, i]), i))
        order.remove(int(res.best_index[b]))
        order.insert(0, int(res.best_index[b]))
    else:
        order = list(range(len(texts)))
    chosen = order[: request.n]
    count = count_tokens or (lambda text: len(text.split()))
    completion = sum(count(texts[i]) for i in chosen)
    prompt_tokens = count(request.prompt)
    if request.chat:
        choices = [{"index": j, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": "stop"}
                   for j, i in enumerate(chosen)]
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choices = [{"index": j, "text": texts[i], "finish_reason": "stop", "logprobs": None}
                   for j, i in enumerate(chosen)]
        obj, prefix = "text_completion", "cmpl-"
    ext = {"reward": float(res.best_reward[b]) if res.best_reward is not None else None,
           "choice_rewards": [float(res.rewards[b, i]) for i in chosen] if res.rewards is not None else None,
           "judges": {name: [float(v[b, i]) for i in chosen] for name, v in res.judge_scores.items()},
           "tokens_per_forward": res.tokens_per_forward[b] if res.tokens_per_forward else None,
           "compute": {key: values[b] for key, values in res.compute.items()},
           "num_samples": request.num_samples, "steps": request.steps, "seed": request.seed,
           "guidance": request.guidance}
    if request.return_samples:
        ext["samples"] = texts
        ext["rewards"] = [float(r) for r in res.rewards[b]] if res.rewards is not None else None
    return {"id": prefix + uuid.uuid4().hex[:24], "object": obj, "created": int(time.time()), "model": model_name,
            "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                          "total_tokens": prompt_tokens + completion}, "entrgi": ext}
