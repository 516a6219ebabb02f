"""lm-evaluation-harness model ``entrgi``: guided sampling for ``generate_until``, the ELBO for
``loglikelihood``.

    entrgi eval --config configs/tiny.yaml --tasks tinyworld_reviews         (the shipped task)

    from entrgi_core.integrations.harness import EntrgiLM, task_manager
    lm_eval.simple_evaluate(model=EntrgiLM(config="configs/tiny.yaml"), tasks=["tinyworld_reviews"],
                            task_manager=task_manager())

Importing this module registers the class as ``"entrgi"`` in lm-eval's model registry, so
``simple_evaluate(model="entrgi", model_args={"config": ...})`` works after the import. The
``lm_eval`` command itself cannot load it: lm-eval 0.4.x looks models up in its own registry only
(no plugin entry point), hence ``entrgi eval``.

``generate_until`` builds, for each request, the body that ``lm_eval --model local-completions``
sends to ``entrgi serve`` (prompt, ``max_tokens`` = ``max_gen_toks``, ``temperature``, ``stop`` =
``until``, ``seed``, the task's ``entrgi`` extension) and runs it through the server's own code
(``entrgi_core.serving``): the same checks, the same batching rule, the same Top@1. So a task
scores the same in-process and through the server, seed for seed, when both have the same
settings (``seed``, ``num_samples``, ``guidance``: this class's arguments, the server's flags).

``loglikelihood`` is the diffusion model's ELBO of the continuation after the context
(``entrgi_core.training.likelihood.Estimator("elbo")``, ``mc_samples`` masks, a lower bound on the
log-likelihood, estimated); ``is_greedy`` says whether every continuation token is the argmax at
its position when the whole continuation is masked. ``loglikelihood_rolling`` is the ELBO of the
text after an empty prompt (no windows: the text must fit the model's positions).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lm_eval.models  # noqa: F401  (lm-eval's own models first: it loads them only into an empty registry)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from entrgi_core.errors import InputError

TASKS = Path(__file__).resolve().parent.parent / "tinyworld" / "tasks"     # the shipped task(s)
KNOWN_GEN_KWARGS = {"until", "max_gen_toks", "max_tokens", "temperature", "do_sample", "entrgi"}


def _int_arg(value, name: str, minimum: int) -> int:
    """An integer argument (lm-eval's ``model_args`` strings arrive parsed, or as text)."""
    try:
        out = int(value) if isinstance(value, str) else value
    except ValueError:
        out = None
    if not isinstance(out, int) or isinstance(out, bool) or out < minimum:
        raise InputError(f"EntrgiLM: {name} must be an integer >= {minimum}, got {value!r}")
    return out


def task_manager(include: list[str] | None = None, tasks: list[str] | None = None):
    """lm-eval's TaskManager with the shipped tasks (``tinyworld_reviews``) and ``include`` folders,
    and lm-eval's own tasks unless every name of ``tasks`` is found without them (indexing lm-eval's
    thousands of YAMLs takes seconds)."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS), *(include or [])]
    if tasks:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=paths)


@register_model("entrgi")
class EntrgiLM(LM):
    """An ``entrgi predict`` configuration as an lm-eval model.

    ``config``: config file(s) (as ``entrgi predict --config``), ``overrides``: further CLI-style
    arguments; ``seed``: every request's seed (lm-eval's API models send 1234); ``num_samples``
    (K), ``guidance`` (a class path, ``{"class_path", "init_args"}`` or None: Best-of-N) and
    ``steps`` are the defaults a request's ``entrgi`` extension may override, as the server's flags
    are; ``mc_samples``: masks per ELBO estimate; ``batch_size``: requests per ``generate``.
    """

    def __init__(self, config: str | list[str] | None = None, overrides: list[str] | None = None, seed: int = 1234,
                 num_samples: int = 4, guidance=None, steps: int | None = None, mc_samples: int = 8,
                 batch_size: int = 16, max_tokens: int = 256, **unknown):
        super().__init__()
        if unknown:
            raise InputError(f"EntrgiLM: unknown arguments {sorted(unknown)}; it takes config, overrides, seed, "
                             "num_samples, guidance, steps, mc_samples, batch_size, max_tokens")
        from entrgi_core.serving.requests import ServeLimits, check_default_guidance, parse_guidance_arg

        seed, num_samples, mc_samples, batch_size, max_tokens = (
            _int_arg(v, name, lo) for v, name, lo in ((seed, "seed", 0), (num_samples, "num_samples", 1),
                                                      (mc_samples, "mc_samples", 1), (batch_size, "batch_size", 1),
                                                      (max_tokens, "max_tokens", 1)))
        steps = None if steps is None else _int_arg(steps, "steps", 1)
        if isinstance(guidance, str):
            guidance = parse_guidance_arg(guidance)
        limits = ServeLimits(max_samples=max(num_samples, 64), max_steps=4096, max_tokens=max_tokens,
                             max_prompt_chars=1 << 20, default_samples=num_samples, default_steps=steps)
        self.limits = replace(limits, default_guidance=check_default_guidance(guidance, limits))
        self.seed, self.mc_samples, self.batch_size = seed, mc_samples, batch_size
        configs = [config] if isinstance(config, str) else list(config or ["configs/tiny.yaml"])
        from entrgi_core.tools.compare import load

        module, _ = load([a for c in configs for a in ("--config", c)] + list(overrides or []))
        self.model, self.reward, self.base = module.model, module.reward, module.config
        self.judges, self.select = list(module.judges), module.select

    # ------------------------------------------------------------------ generation
    def body(self, context: str, gen_kwargs: dict) -> dict:
        """The OpenAI completions body of one request, as ``local-completions`` builds it."""
        unknown = set(gen_kwargs) - KNOWN_GEN_KWARGS
        if unknown:
            raise InputError(f"EntrgiLM: unknown generation kwargs {sorted(unknown)}; it takes "
                             f"{sorted(KNOWN_GEN_KWARGS)}")
        until = gen_kwargs.get("until") or []
        body = {"prompt": context, "max_tokens": gen_kwargs.get("max_tokens", gen_kwargs.get("max_gen_toks", 32)),
                "temperature": gen_kwargs.get("temperature", 0), "seed": self.seed,
                "stop": [until] if isinstance(until, str) else list(until)}
        if "entrgi" in gen_kwargs:
            body["entrgi"] = gen_kwargs["entrgi"]
        return body

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from entrgi_core.serving.batch import groups, respond, run_requests
        from entrgi_core.serving.requests import RequestError, parse_completion

        parsed = []
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1])
            try:
                parsed.append(parse_completion(self.body(context, gen_kwargs), self.limits, self.base.steps))
            except RequestError as exc:
                raise InputError(f"EntrgiLM: request {len(parsed)}: {exc.message}") from None
        out: list[str | None] = [None] * len(parsed)
        for members in groups(parsed):
            for start in range(0, len(members), self.batch_size):
                chunk = members[start: start + self.batch_size]
                res = run_requests(self.model, self.reward, self.base, [parsed[i] for i in chunk],
                                   judges=self.judges, select=self.select)
                for j, i in enumerate(chunk):
                    out[i] = respond(parsed[i], res, j, "entrgi")["choices"][0]["text"]
                    self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    # ------------------------------------------------------------------ likelihood
    @torch.no_grad()
    def _elbo(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        from entrgi_core import rng
        from entrgi_core.training.likelihood import Estimator

        model, est = self.model, Estimator(kind="elbo", mc_samples=self.mc_samples)
        device = next(model.model.parameters()).device
        encoded = model.encode_prompts([c for c, _ in pairs])
        conts = [model.tokenizer(t, add_special_tokens=False)["input_ids"] for _, t in pairs]
        out: list = [None] * len(pairs)
        by_length: dict = {}
        for i, ids in enumerate(conts):
            if not ids:
                raise InputError(f"EntrgiLM: loglikelihood request {i} has an empty continuation ({pairs[i][1]!r})")
            by_length.setdefault(len(ids), []).append(i)
        for length, members in by_length.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start: start + self.batch_size]
                responses = torch.tensor([conts[i] for i in chunk], dtype=torch.long, device=device)   # (n, L)
                keys = rng.row_keys(self.seed, [f"{pairs[i][0]}\x00{pairs[i][1]}" for i in chunk], 1, device=device)
                terms = est(model, [encoded[i] for i in chunk], responses, keys, counter=0)
                read = terms.weight > 0                          # an unread token's logp may be -inf
                ll = torch.where(read, terms.weight.double() * terms.logp.double(), 0.0).sum(1)    # (n,)
                ids, attn, pos, width = model.canvas([encoded[i] for i in chunk], length)          # all masked
                logits = model.position_logits(ids.to(device), attn.to(device), pos.to(device))[:, width:]
                greedy = (logits.argmax(-1) == responses).all(1)
                for j, i in enumerate(chunk):
                    out[i] = (float(ll[j]), bool(greedy[j]))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = self._elbo([(r.args[0], r.args[1]) for r in requests])
        for req, value in zip(requests, out):
            self.cache_hook.add_partial("loglikelihood", req.args, value)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [ll for ll, _ in self._elbo([("", r.args[0]) for r in requests])]
