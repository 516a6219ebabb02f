"""What a generation returns, and the one function both loops finish through.

A loop (entrgi's sampler, or a model's own loop) produces a ``Rollout``: the K response tokens of
each prompt and the work it did. ``finish`` decodes them with the model's stop rule, scores them
on text by the reward, by the selector (which picks Top@1) and by every judge (evaluation only:
judges never change the samples), counts the compute and returns ``GenerationResult``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from entrgi_core.errors import ScoreError
from entrgi_core.reward_side import WORK_FIELDS

NO_WORK = dict.fromkeys(WORK_FIELDS, 0)


@dataclass
class Rollout:
    """A loop's output before scoring (B prompts, K samples, L response positions)."""

    tokens: Tensor                         # (B, K, L) committed response tokens, on the CPU
    dlm_work: list[tuple[int, int]]        # per prompt: (dLLM rows run, their tokens)
    rm_work: list[dict]                    # per prompt: reward-model work during guidance (WORK_FIELDS)
    steps: list[int]                       # per prompt: denoising steps until its last sample was done
    guided_steps: list[int] = field(default_factory=list)
    diagnostics: dict = field(default_factory=dict)   # weight / reward_before / reward_after: (B, S)
    particles: dict = field(default_factory=dict)     # a particle strategy's report


@dataclass
class GenerationResult:
    prompts: list[str]
    prompt_ids: list
    tokens: Tensor                        # (B, K, L) committed response tokens
    texts: list[list[str]]                # B x K responses, decoded up to the first stop token
    rewards: Tensor | None                # (B, K) the reward's text score of each response (else the selector's)
    best_index: Tensor | None             # (B,) Top@1 sample, picked by the selector
    best_reward: Tensor | None            # (B,) ``rewards`` of Top@1
    avg_reward: Tensor | None             # (B,) Avg@N of ``rewards``
    seconds: float
    guided_steps: list[int] = field(default_factory=list)  # denoising steps that were guided (S)
    # per prompt and guided step, each (B, S): mean gate weight over the prompt's masked positions,
    # mean reward of its K relaxed inputs before and (when diagnose=True) after the update
    weight: Tensor | None = None
    reward_before: Tensor | None = None
    reward_after: Tensor | None = None
    # per prompt, each a list of B numbers: see ``account``
    compute: dict = field(default_factory=dict)
    # a particle strategy's per-prompt diagnostics (diagnose=True), each a list of B items
    particles: dict = field(default_factory=dict)
    denoising_steps: list[int] = field(default_factory=list)       # (B) steps until the prompt's last sample was done
    tokens_per_forward: list[float] = field(default_factory=list)  # (B) committed response tokens / dLLM forwards
    select_scores: Tensor | None = None   # (B, K) the selector's scores, when it is not the reward
    selected_by: str | None = None        # the selector's name
    judge_scores: dict = field(default_factory=dict)    # judge name -> (B, K)
    reward_terms: dict = field(default_factory=dict)    # a composite reward's term name -> (B, K)
    # with ``baseline=True``: Best-of-N at the same K and seeds, per prompt: "reward" (its Top@1's
    # reward) and each judge's score of its Top@1, each (B,); ``gains`` = this run's minus those
    baseline: dict = field(default_factory=dict)
    gains: dict = field(default_factory=dict)

    def records(self, method: str = "", seed: int | None = None) -> list[dict]:
        """One JSON-ready dict per prompt; every value is the prompt's own."""
        return [self.record(b, method, seed) for b in range(len(self.prompts))]

    def record(self, b: int, method: str = "", seed: int | None = None) -> dict:
        rec = {"prompt_id": self.prompt_ids[b], "prompt": self.prompts[b], "responses": self.texts[b]}
        if self.rewards is not None:
            i = int(self.best_index[b])
            rec.update(rewards=[float(r) for r in self.rewards[b]], best_index=i, best_response=self.texts[b][i],
                       best_reward=float(self.best_reward[b]), avg_reward=float(self.avg_reward[b]))
        if self.select_scores is not None:
            rec.update(selected_by=self.selected_by, select_scores=[float(s) for s in self.select_scores[b]])
        if self.reward_terms:
            rec["reward_terms"] = {name: [float(s) for s in v[b]] for name, v in self.reward_terms.items()}
        if self.judge_scores:
            i = int(self.best_index[b]) if self.best_index is not None else None
            rec["judges"] = {name: {"scores": [float(s) for s in v[b]], "avg": float(v[b].mean()),
                                    "top1": float(v[b, i]) if i is not None else None}
                             for name, v in self.judge_scores.items()}
        for key in ("weight", "reward_before", "reward_after"):
            values = getattr(self, key)
            if values is not None:
                rec[f"{key}_by_step"] = {s: float(v) for s, v in zip(self.guided_steps, values[b].tolist())}
        for key, values in self.particles.items():
            rec[key] = values[b]
        if self.denoising_steps:
            rec.update(denoising_steps=self.denoising_steps[b], tokens_per_forward=self.tokens_per_forward[b])
        if self.compute:
            rec["compute"] = {key: values[b] for key, values in self.compute.items()}
        if self.gains:
            rec["best_of_n"] = {key: float(v[b]) for key, v in self.baseline.items()}
            rec["gain_over_best_of_n"] = {key: float(v[b]) for key, v in self.gains.items()}
        rec.update(method=method, seed=seed)
        return rec


def text_scores(scorer, batch, texts: list[list[str]], role: str, score=None) -> Tensor:
    """(B, K) ``scorer``'s text scores (``score(prompts, responses)``, default its ``score_text``) of
    the K responses of each prompt; a scorer that fails names the prompt ids of the rows it failed on."""
    k = len(texts[0])
    prompts = [p for p in batch.prompts for _ in range(k)]
    try:
        scores = (score or scorer.score_text)(prompts, [t for row in texts for t in row])
    except ScoreError as exc:
        rows = exc.rows or range(len(prompts))
        ids = list(dict.fromkeys(batch.prompt_ids[r // k] for r in rows))
        raise ScoreError(f"{role} {scorer.name!r} could not score the responses of prompt id(s) {ids}: {exc}",
                         rows=exc.rows) from exc
    scores = torch.as_tensor(scores, dtype=torch.float32).reshape(len(batch), k).cpu()
    if not torch.isfinite(scores).all():
        bad = (~torch.isfinite(scores)).nonzero()[:, 0].tolist()
        ids = list(dict.fromkeys(batch.prompt_ids[b] for b in bad))
        raise ScoreError(f"{role} {scorer.name!r} returned a non-finite score for prompt id(s) {ids}")
    return scores


def finish(plan, batch, rollout: Rollout, started: float) -> GenerationResult:
    """Decode, score on text (reward, selector, judges), pick Top@1 and count the compute of
    ``rollout``; ``started`` is the ``time.perf_counter()`` at which the loop began (the result's
    seconds include the scoring, not the judging)."""
    model, reward, selector, k = plan.model, plan.reward, plan.selector, plan.config.num_samples
    texts = [[model.response_text(row) for row in rollout.tokens[b].tolist()] for b in range(len(batch))]
    rewards = best_index = best_reward = avg_reward = select_scores = None
    terms = {}
    if reward is not None and hasattr(reward, "term_scores"):       # a composite: every term's value, and their sum
        for name, term in zip(reward.term_names, reward.terms):
            terms[name] = text_scores(term, batch, texts, "the reward's term")
        rewards = reward.combine(terms)
    elif reward is not None:
        rewards = text_scores(reward, batch, texts, "the reward")
    if selector is not None:
        select_scores = rewards if selector is reward else text_scores(selector, batch, texts, "the selector")
        best_index = select_scores.argmax(1)
        rewards = select_scores if rewards is None else rewards
        best_reward = rewards.gather(1, best_index[:, None]).squeeze(1)
        avg_reward = rewards.mean(1)
    seconds = time.perf_counter() - started
    judges = {j.name: text_scores(j, batch, texts, "the judge") for j in plan.judges}
    compute = account(plan, batch, texts, rollout.dlm_work, rollout.rm_work)
    committed = k * plan.config.max_new_tokens                          # every response position, every sample
    return GenerationResult(prompts=list(batch.prompts), prompt_ids=list(batch.prompt_ids), tokens=rollout.tokens,
                            texts=texts, rewards=rewards, best_index=best_index, best_reward=best_reward,
                            avg_reward=avg_reward, seconds=seconds, guided_steps=rollout.guided_steps,
                            compute=compute, particles=rollout.particles, denoising_steps=list(rollout.steps),
                            tokens_per_forward=[committed / max(f, 1) for f, _ in rollout.dlm_work],
                            select_scores=select_scores if plan.select is not None and reward is not None else None,
                            selected_by=selector.name if selector is not None else None, judge_scores=judges,
                            reward_terms=terms, **rollout.diagnostics)


def _text_work(scorer, prompt: str, texts: list[str]) -> tuple[int, int, int]:
    """(responses scored, tokens read, FLOPs) of ``scorer`` scoring one prompt's responses."""
    if scorer is None:
        return 0, 0, 0
    return (len(texts), sum(scorer.text_tokens(prompt, t) for t in texts),
            sum(scorer.text_flops(prompt, t) for t in texts))


def account(plan, batch, texts, dlm_work: list, rm_work: list) -> dict:
    """Per prompt compute, independent of batching (padding is not counted), from each prompt's
    dLLM work ``dlm_work[i] = (forwards, tokens)`` and reward-model work during guidance
    ``rm_work[i]`` (a dict of ``WORK_FIELDS``). The method's budget:

    - ``dlm_forwards`` / ``dlm_tokens``: rows the dLLM ran and their tokens;
    - ``rm_forwards`` / ``rm_forward_tokens`` / ``rm_backwards`` / ``rm_backward_tokens`` /
      ``rm_flops``: reward-model passes during guidance (SMC's readings included);
    - ``select_calls`` / ``select_tokens`` / ``select_flops``: the selector's text scoring of the
      K responses (the reward's, unless ``select`` is given);
    - ``flops``: 2 x parameters x tokens of all of the above (a backward to the inputs only, as
      here, costs about one forward); ``forward_equivalents``: ``flops`` in units of one dLLM
      forward of prompt + L tokens.

    Evaluation, outside the budget: ``eval_calls`` / ``eval_tokens`` / ``eval_flops``, the judges'
    scoring and, when a separate selector picks Top@1, the reward's own scores of the responses.
    """
    cfg, model, reward, selector = plan.config, plan.model, plan.reward, plan.selector
    p_dlm = model.num_parameters
    fields = ("dlm_forwards", "dlm_tokens", *WORK_FIELDS, "select_calls", "select_tokens", "select_flops", "flops",
              "forward_equivalents", "eval_calls", "eval_tokens", "eval_flops")
    out = {key: [] for key in fields}
    evaluators = list(plan.judges) + ([reward] if reward is not None and selector is not reward else [])
    for i, prompt in enumerate(batch.prompts):
        row = len(batch.encoded[i]) + cfg.max_new_tokens
        dlm_fwd, dlm_tok = dlm_work[i]
        rm = {**NO_WORK, **rm_work[i]}
        calls, tokens, select_flops = _text_work(selector, prompt, texts[i])
        ev = [_text_work(e, prompt, texts[i]) for e in evaluators]
        flops = 2 * p_dlm * dlm_tok + rm["rm_flops"] + select_flops
        values = {"dlm_forwards": dlm_fwd, "dlm_tokens": dlm_tok, **rm, "select_calls": calls, "select_tokens": tokens,
                  "select_flops": select_flops, "flops": flops, "forward_equivalents": flops / (2 * p_dlm * row),
                  "eval_calls": sum(e[0] for e in ev), "eval_tokens": sum(e[1] for e in ev),
                  "eval_flops": sum(e[2] for e in ev)}
        for key in out:
            out[key].append(values[key])
    return out
