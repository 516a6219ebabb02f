"""The guided denoising loop (DESIGN.md §1), vectorised over B prompts x K samples.

``generate`` starts each row from ``[left padding | prompt | L x MASK]`` and, for T steps:
one dLLM forward over all B*K rows, guidance on the masked positions' logits (all rows at
once), a sample at every masked position, and a commit of the most confident ones. Every random
draw is keyed by (seed, prompt id, sample, step, position), so a prompt's samples do not depend
on what it is batched with or on which device it runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from entrgi_core import rng
from entrgi_core.config import DenoiseConfig
from entrgi_core.sampling import neg_entropy, sample_tokens
from guidance.base import Guidance, GuidanceStep
from guidance.none import NoGuidance

EOS_PENALTY = 1e4   # sampled EOS ranks below every other masked position, above committed ones
SCHEDULE_EPS = 1e-3


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
    trace: dict = field(default_factory=dict)  # per guided step: weight, reward_before, reward_after

    def records(self, method: str = "", seed: int | None = None) -> list[dict]:
        """One JSON-ready dict per prompt."""
        out = []
        for b, prompt in enumerate(self.prompts):
            rec = {"prompt_id": self.prompt_ids[b], "prompt": prompt, "responses": self.texts[b]}
            if self.rewards is not None:
                i = int(self.best_index[b])
                rec.update(rewards=[float(r) for r in self.rewards[b]], best_index=i,
                           best_response=self.texts[b][i], best_reward=float(self.best_reward[b]),
                           avg_reward=float(self.avg_reward[b]))
            rec.update(method=method, seed=seed)
            out.append(rec)
        return out


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"generate: prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("generate: the prompt list is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"generate: prompt {i} is empty or not a string: {p!r}")
    return list(prompts)


def _canvas(model, prompts: list[str], cfg: DenoiseConfig, device):
    """Left-padded (R, P + L) canvas, attention mask and position ids, R = B*K."""
    encoded = model.encode_prompts(prompts)
    p = max(len(e) for e in encoded)
    b, length = len(prompts), cfg.max_new_tokens
    ids = torch.full((b, p + length), model.pad_id, dtype=torch.long)
    attn = torch.zeros((b, p + length), dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, p - len(e): p] = torch.tensor(e, dtype=torch.long)
        attn[i, p - len(e):] = True
    ids[:, p:] = model.mask_id
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)
    rep = lambda t: t.repeat_interleave(cfg.num_samples, dim=0).to(device)  # noqa: E731
    return rep(ids), rep(attn), rep(pos), p


def _commit_share(local: int, per_block: int) -> float:
    """Dream's schedule: share 1 - s/t of the eligible masked positions is committed at local step
    ``local`` (t, s consecutive points of linspace(1, eps, steps + 1)); everything at the last."""
    if local == per_block - 1:
        return 1.0
    ts = torch.linspace(1.0, SCHEDULE_EPS, per_block + 1, dtype=torch.float64)
    return 1.0 - ts[local + 1].item() / ts[local].item()


def generate(model, prompts: list[str], *, reward=None, guidance: Guidance | None = None,
             config: DenoiseConfig | None = None, prompt_ids: list | None = None,
             trace: bool = False) -> GenerationResult:
    """K responses for each prompt, guided by ``reward`` through ``guidance``.

    ``prompt_ids`` (default: the prompts' positions) seed each prompt's random draws together with
    ``config.seed``. ``reward`` may be None only for unguided sampling, and then no rewards are
    reported. ``trace`` records per-step guidance diagnostics.
    """
    cfg = config or DenoiseConfig()
    prompts = _check_prompts(prompts)
    guidance = guidance or NoGuidance()
    if prompt_ids is None:
        prompt_ids = list(range(len(prompts)))
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"generate: {len(prompt_ids)} prompt ids for {len(prompts)} prompts")
    if guidance.needs_reward and reward is None:
        raise ValueError(f"generate: {type(guidance).__name__} needs a reward model (reward=None)")
    device = model.device
    stop_ids = torch.tensor(model.stop_ids, dtype=torch.long, device=device)
    table = reward.aligned_table(model.tokenizer, model.vocab_size) if reward is not None else None

    t0 = time.perf_counter()
    k, length = cfg.num_samples, cfg.max_new_tokens
    canvas, attn, pos, p = _canvas(model, prompts, cfg, device)
    keys = rng.row_keys(cfg.seed, prompt_ids, k, device=device)       # (R,)
    rep_prompts = [q for q in prompts for _ in range(k)]
    context = reward.prepare(rep_prompts) if reward is not None and guidance.needs_reward else None
    diag = {"weight": [], "reward_before": [], "reward_after": [], "step": []} if trace else None
    blocks, per_block = cfg.num_blocks, cfg.steps // cfg.num_blocks
    block_len = length // blocks
    col = torch.arange(length, device=device)
    confidence = None if cfg.alg == "origin" else cfg.alg

    for step in range(cfg.steps):
        block, local = divmod(step, per_block)
        resp = canvas[:, p:]                                           # (R, L) view
        masked = resp == model.mask_id
        eligible = masked & (col >= block * block_len) & (col < (block + 1) * block_len)
        logits = model.logits(canvas, attn, pos)[:, p:]                # (R, L, V)
        rows, cols = masked.nonzero(as_tuple=True)                     # one host sync per step
        if rows.numel() == 0:
            break
        phi0 = logits[rows, cols].float()                              # (N, V)
        if not torch.isfinite(phi0).all():
            raise FloatingPointError(f"generate: the model returned non-finite logits at denoising step {step}")
        phi = phi0
        if guidance.active(step, cfg.steps):
            gstep = GuidanceStep(step, cfg.steps, reward, context, table, resp, rows, cols, stop_ids, keys, diag)
            phi = guidance.refine(phi0, gstep)
            if diag is not None:
                diag["step"].append(step)
        u = rng.uniform(rng.derive(keys[rows], rng.SAMPLE, step, cols))
        # "entropy" confidence is read from the unguided logits: in one pass when phi is phi0
        separate = confidence == "entropy" and phi is not phi0
        x0, conf = sample_tokens(phi, u, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                 confidence=None if separate else confidence)
        if separate:
            conf = neg_entropy(phi0, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)

        share = _commit_share(local, per_block)
        order_u = rng.uniform(rng.derive(keys[:, None], rng.ORDER, step, col[None, :]))  # (R, L)
        if cfg.alg == "origin":                                         # each position commits w.p. share
            commit = eligible & (order_u < share) if share < 1.0 else eligible
        else:
            if cfg.deprioritize_eos:
                conf = torch.where(torch.isin(x0, stop_ids), conf - EOS_PENALTY, conf)
            score = torch.full(masked.shape, float("-inf"), device=device)
            score[rows, cols] = conf.float()
            if cfg.alg_temp > 0:                                       # Gumbel-top-k = sampling w/o replacement
                gumbel = -torch.log(-torch.log(order_u.float()))
                score = score / cfg.alg_temp + gumbel
            score = torch.where(eligible, score, torch.full_like(score, float("-inf")))
            n = (eligible.sum(1).double() * share).long()               # (R,) int(n * (1 - s/t))
            ranked = torch.sort(score, dim=1, descending=True, stable=True).indices  # (R, L)
            chosen = col[None, :] < n[:, None]                           # first n of each row
            commit = torch.zeros_like(masked).scatter(1, ranked, chosen) & eligible
        proposal = resp.clone()
        proposal[rows, cols] = x0
        canvas[:, p:] = torch.where(commit, proposal, resp)

    tokens = canvas[:, p:].reshape(len(prompts), k, length)
    texts = [[_decode(model, row) for row in tokens[b].tolist()] for b in range(len(prompts))]
    rewards = best_i = best_r = avg_r = None
    if reward is not None:
        flat = [t for row in texts for t in row]
        rewards = reward.score_text(rep_prompts, flat).reshape(len(prompts), k).cpu()
        best_r, best_i = rewards.max(1)
        avg_r = rewards.mean(1)
    out_trace = {}
    if diag is not None:
        out_trace = {key: [float(v) for v in vals] for key, vals in diag.items()}
    return GenerationResult(prompts, list(prompt_ids), tokens.cpu(), texts, rewards, best_i, best_r, avg_r,
                            time.perf_counter() - t0, out_trace)


def _decode(model, ids: list[int]) -> str:
    stops = set(model.stop_ids)
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return model.decode([t for t in ids[:cut] if t != model.mask_id])
