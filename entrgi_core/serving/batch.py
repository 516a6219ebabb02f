"""Run compatible ``ServeRequest`` objects as one ``generate`` and build OpenAI responses.

Requests are compatible when they share everything but the prompt, the seed and the stop strings
(K, steps, length, temperature, guidance): each then runs as prompt id 0 with its own seed (``generate(seeds=...)``), so
its result is exactly ``generate(model, [prompt], config=replace(config, seed=seed, ...))``, whatever
it was batched with.
"""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace

from entrgi_core.serving.requests import ServeRequest


def compatible(request: ServeRequest) -> tuple:
    """Requests with equal keys share one ``generate``."""
    return (request.max_tokens, request.num_samples, request.steps, request.temperature,
            json.dumps(request.guidance, sort_keys=True))


def run_requests(model, reward, base, requests: list[ServeRequest], *, judges=(), select=None):
    """One ``generate`` over compatible ``requests`` (``compatible`` equal for all); returns its result,
    prompt b being request b."""
    from entrgi_core.sampler import generate

    if len({compatible(r) for r in requests}) != 1:
        raise ValueError("run_requests: the requests are not compatible (see compatible())")
    first = requests[0]
    config = replace(base, max_new_tokens=first.max_tokens, num_samples=first.num_samples, steps=first.steps)
    if first.temperature is not None:
        config = replace(config, temperature=first.temperature)
    return generate(model, [r.prompt for r in requests], reward=reward, guidance=first.make_guidance(),
                    config=config, prompt_ids=[0] * len(requests), seeds=[r.seed for r in requests],
                    judges=list(judges) or None, select=select)


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
