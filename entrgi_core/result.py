"""What a generation returns, and the one function both loops finish through.

A loop (entrgi's sampler, or a model's own loop) produces a ``Rollout``: the K response tokens of
each prompt and the work it did. ``finish`` decodes them with the model's stop rule, scores them
with the reward model on text, picks Top@1, counts the compute and returns ``GenerationResult``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import Tensor

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
    rewards: Tensor | None                # (B, K) reward of each response (text scoring)
    best_index: Tensor | None             # (B,) Top@1 sample
    best_reward: Tensor | None            # (B,) Top@1 reward
    avg_reward: Tensor | None             # (B,) Avg@N reward
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

    def records(self, method: str = "", seed: int | None = None) -> list[dict]:
        """One JSON-ready dict per prompt; every value is the prompt's own."""
        out = []
        for b, prompt in enumerate(self.prompts):
            rec = {"prompt_id": self.prompt_ids[b], "prompt": prompt, "responses": self.texts[b]}
            if self.rewards is not None:
                i = int(self.best_index[b])
                rec.update(rewards=[float(r) for r in self.rewards[b]], best_index=i,
                           best_response=self.texts[b][i], best_reward=float(self.best_reward[b]),
                           avg_reward=float(self.avg_reward[b]))
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
            rec.update(method=method, seed=seed)
            out.append(rec)
        return out


def finish(plan, batch, rollout: Rollout, started: float) -> GenerationResult:
    """Decode, score on text, pick Top@1 and count the compute of ``rollout``; ``started`` is the
    ``time.perf_counter()`` at which the loop began (the result's seconds include the scoring)."""
    model, reward, k = plan.model, plan.reward, plan.config.num_samples
    texts = [[model.response_text(row) for row in rollout.tokens[b].tolist()] for b in range(len(batch))]
    rewards = best_index = best_reward = avg_reward = None
    if reward is not None:
        flat = [t for row in texts for t in row]
        rewards = reward.score_text([p for p in batch.prompts for _ in range(k)], flat).reshape(len(batch), k).cpu()
        best_reward, best_index = rewards.max(1)
        avg_reward = rewards.mean(1)
    compute = account(model, reward, batch, texts, plan.config, rollout.dlm_work, rollout.rm_work)
    committed = k * plan.config.max_new_tokens                          # every response position, every sample
    return GenerationResult(prompts=list(batch.prompts), prompt_ids=list(batch.prompt_ids), tokens=rollout.tokens,
                            texts=texts, rewards=rewards, best_index=best_index, best_reward=best_reward,
                            avg_reward=avg_reward, seconds=time.perf_counter() - started,
                            guided_steps=rollout.guided_steps, compute=compute, particles=rollout.particles,
                            denoising_steps=list(rollout.steps),
                            tokens_per_forward=[committed / max(f, 1) for f, _ in rollout.dlm_work],
                            **rollout.diagnostics)


def account(model, reward, batch, texts, cfg, dlm_work: list, rm_work: list) -> dict:
    """Per prompt compute, independent of batching (padding is not counted), from each prompt's
    dLLM work ``dlm_work[i] = (forwards, tokens)`` and reward-model work during guidance
    ``rm_work[i]`` (a dict of ``WORK_FIELDS``):

    - ``dlm_forwards`` / ``dlm_tokens``: rows the dLLM ran and their tokens (our sampler: K per
      denoising step, prompt + L tokens each);
    - ``rm_forwards`` / ``rm_forward_tokens``: reward-model calls per row during guidance plus the
      final text scoring of the K responses, and the tokens each read (template + response);
    - ``rm_backwards`` / ``rm_backward_tokens``: the same for the gradient passes;
    - ``flops``: 2 x parameters x tokens for every forward and backward (a backward to the inputs
      only, as here, costs about one forward);
    - ``forward_equivalents``: ``flops`` in units of one dLLM forward of prompt + L tokens.
    """
    k = cfg.num_samples
    p_dlm = model.num_parameters
    p_rm = getattr(reward, "num_parameters", 0) if reward is not None else 0
    out = {key: [] for key in ("dlm_forwards", "dlm_tokens", *WORK_FIELDS, "flops", "forward_equivalents")}
    for i, prompt in enumerate(batch.prompts):
        row = len(batch.encoded[i]) + cfg.max_new_tokens
        dlm_fwd, dlm_tok = dlm_work[i]
        rm = {**NO_WORK, **rm_work[i]}
        if reward is not None:                                         # final scoring of the K texts
            rm["rm_forwards"] += k
            rm["rm_forward_tokens"] += sum(reward.text_tokens(prompt, t) for t in texts[i])
        flops = 2 * p_dlm * dlm_tok + 2 * p_rm * (rm["rm_forward_tokens"] + rm["rm_backward_tokens"])
        values = {"dlm_forwards": dlm_fwd, "dlm_tokens": dlm_tok, **rm, "flops": flops,
                  "forward_equivalents": flops / (2 * p_dlm * row)}
        for key in out:
            out[key].append(values[key])
    return out
