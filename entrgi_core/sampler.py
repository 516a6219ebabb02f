"""The guided denoising loop (DESIGN.md §1), vectorised over B prompts x K samples.

``generate`` starts each row from ``[left padding | prompt | L x MASK]`` and, for T steps:
one dLLM forward over all B*K rows, guidance on the masked positions' logits (all rows at
once), a sample at every masked position, and a commit of the most confident ones (the schedule
and confidence rule of ``entrgi_core.schedules``). Every random draw is keyed by (seed, prompt id,
sample, step, position), so a prompt's samples do not depend on what it is batched with or on
which device it runs. A model with its own sampler (``entrgi_core.diffusion_gemma``) runs that
instead, after the same checks. Guidance is any object with the ``entrgi_core.contract.Guidance``
interface; ``guidance=None`` is unguided sampling. A particle strategy (``Guidance.begin`` returns
a state) sees every step's update after the commit and may resample each prompt's rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from entrgi_core import rng
from entrgi_core.config import DenoiseConfig
from entrgi_core.contract import Guidance, GuidanceStep, StepUpdate
from entrgi_core.sampling import neg_entropy, sample_tokens
from entrgi_core.schedules import check_rule, commit_mask, make_schedule

SAMPLE_CONFIDENCES = ("maskgit_plus", "topk_margin", "entropy", "low_confidence")


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
            if self.compute:
                rec["compute"] = {key: values[b] for key, values in self.compute.items()}
            rec.update(method=method, seed=seed)
            out.append(rec)
        return out


def check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise ValueError(f"generate: prompts must be a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("generate: the prompt list is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"generate: prompt {i} is not a string ({type(p).__name__}: {p!r})")
        if not p.strip():
            raise ValueError(f"generate: prompt {i} is empty")
    return list(prompts)


def check_prompt_lengths(model, encoded: list[list[int]], prompt_ids: list, max_new_tokens: int, *,
                         reward=None, prompts: list[str] | None = None, max_pieces: int = 1) -> None:
    """Refuse, before any model compute, prompts whose encoded length plus the response exceeds the
    dLLM's position limit, or whose reward-model input (chat template + response of up to
    ``max_new_tokens * max_pieces`` RM tokens) exceeds the reward model's."""
    problems = []
    limit = getattr(model, "max_positions", None)
    if limit is not None:
        over = [pid for pid, e in zip(prompt_ids, encoded) if len(e) + max_new_tokens > limit]
        if over:
            problems.append(f"the diffusion LM allows {limit} positions, and prompt tokens + max_new_tokens "
                            f"({max_new_tokens}) exceed it for {len(over)} prompt(s): ids {_ids(over)}")
    rm_limit = getattr(reward, "max_positions", None) if reward is not None else None
    if rm_limit is not None and prompts is not None:
        need = [(pid, reward.template_length(p) + max_new_tokens * max_pieces) for pid, p in zip(prompt_ids, prompts)]
        over = [pid for pid, n in need if n > rm_limit]
        if over:
            problems.append(f"the reward model allows {rm_limit} positions, and its chat template + a response of "
                            f"up to {max_new_tokens * max_pieces} tokens exceed it for {len(over)} prompt(s): "
                            f"ids {_ids(over)}")
    if problems:
        raise ValueError("prompts too long: " + "; ".join(problems) + ". Shorten or remove them, or lower "
                         "max_new_tokens; nothing was run.")


def _ids(ids: list, most: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:most])
    return shown + (f", ... ({len(ids) - most} more)" if len(ids) > most else "")


def _canvas(model, encoded: list[list[int]], cfg: DenoiseConfig, device):
    """Left-padded (R, P + L) canvas, attention mask and position ids, R = B*K."""
    p = max(len(e) for e in encoded)
    b, length = len(encoded), cfg.max_new_tokens
    ids = torch.full((b, p + length), model.pad_id, dtype=torch.long)
    attn = torch.zeros((b, p + length), dtype=torch.bool)
    for i, e in enumerate(encoded):
        ids[i, p - len(e): p] = torch.tensor(e, dtype=torch.long)
        attn[i, p - len(e):] = True
    ids[:, p:] = model.mask_id
    pos = (attn.long().cumsum(1) - 1).clamp(min=0)
    rep = lambda t: t.repeat_interleave(cfg.num_samples, dim=0).to(device)  # noqa: E731
    return rep(ids), rep(attn), rep(pos), p


def generate(model, prompts: list[str], *, reward=None, guidance: Guidance | None = None,
             config: DenoiseConfig | None = None, prompt_ids: list | None = None,
             diagnose: bool = False) -> GenerationResult:
    """K responses for each prompt, guided by ``reward`` through ``guidance`` (None: unguided).

    ``prompt_ids`` (default: the prompts' positions) seed each prompt's random draws together with
    ``config.seed``. ``reward`` may be None only for unguided sampling, and then no rewards are
    reported. ``diagnose`` adds the diagnostics that cost compute (reward after each update).
    """
    cfg = config or DenoiseConfig()
    prompts = check_prompts(prompts)
    if prompt_ids is None:
        prompt_ids = list(range(len(prompts)))
    if len(prompt_ids) != len(prompts):
        raise ValueError(f"generate: {len(prompt_ids)} prompt ids for {len(prompts)} prompts")
    guided = guidance is not None and guidance.needs_reward
    if guided and reward is None:
        raise ValueError(f"generate: {type(guidance).__name__} needs a reward model (reward=None)")
    if guided:
        guidance.check(cfg.temperature, cfg.top_p)
    own_loop = getattr(model, "generate_own", None)
    if own_loop is not None:
        model.check_config(cfg, guidance)
    schedule = make_schedule(cfg.schedule or model.default_schedule)
    check_rule(cfg.alg, schedule)
    device = model.device
    vocab = reward.aligned(model.tokenizer, model.vocab_size) if guided else None
    encoded = model.encode_prompts(prompts)
    check_prompt_lengths(model, encoded, prompt_ids, cfg.max_new_tokens, reward=reward, prompts=prompts,
                         max_pieces=vocab.max_pieces if vocab is not None else 1)
    if own_loop is not None:            # a model with its own sampler (DiffusionGemma): guided by a logits processor
        return own_loop(prompts, encoded, reward=reward, guidance=guidance, config=cfg, prompt_ids=list(prompt_ids),
                        diagnose=diagnose)
    stop_ids = torch.tensor(model.stop_ids, dtype=torch.long, device=device)

    t0 = time.perf_counter()
    k, length = cfg.num_samples, cfg.max_new_tokens
    canvas, attn, pos, p = _canvas(model, encoded, cfg, device)
    keys = rng.row_keys(cfg.seed, prompt_ids, k, device=device)       # (R,)
    rep_prompts = [q for q in prompts for _ in range(k)]
    context = reward.prepare(rep_prompts) if guided else None
    template = usage = None
    if guided:
        template = torch.tensor([reward.template_length(q) for q in prompts], device=device).repeat_interleave(k)
        usage = torch.zeros(len(rep_prompts), 4, dtype=torch.long, device=device)   # RM work per row
    forwards = 0
    per_block = cfg.steps // cfg.num_blocks
    block_len = length // cfg.num_blocks
    col = torch.arange(length, device=device)
    confidence = cfg.alg if cfg.alg in SAMPLE_CONFIDENCES else None
    diag = {"step": [], "weight": [], "reward_before": [], "reward_after": []}
    at_block_start = None
    state = guidance.begin(len(prompts), k, device) if guidance is not None else None

    for step in range(cfg.steps):
        block, local = divmod(step, per_block)
        resp = canvas[:, p:]                                           # (R, L) view
        masked = resp == model.mask_id
        eligible = masked & (col >= block * block_len) & (col < (block + 1) * block_len)
        if local == 0:
            at_block_start = eligible.sum(1)                           # (R,) LLaDA's per-block count
        logits = model.logits(canvas, attn, pos)[:, p:]                # (R, L, V)
        forwards += 1
        rows, cols = masked.nonzero(as_tuple=True)                     # one host sync per step
        if rows.numel() == 0:
            break
        phi0 = logits[rows, cols].float()                              # (N, V)
        if not torch.isfinite(phi0).all():
            raise FloatingPointError(f"generate: the model returned non-finite logits at denoising step {step}")
        phi = phi0
        gstep = GuidanceStep(index=step, total=cfg.steps, reward=reward if guided else None, context=context,
                             vocab=vocab, tokens=resp, rows=rows, cols=cols, stop_ids=stop_ids, keys=keys,
                             samples=k, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                             diagnose=diagnose, template_tokens=template, usage=usage)
        if guided and guidance.active(step, cfg.steps):
            out = guidance.refine(phi0, gstep)
            phi = out.logits
            _collect(diag, step, out, gstep, len(prompts), k)
        u = rng.uniform(rng.derive(keys[rows], rng.SAMPLE, step, cols))
        # "entropy" confidence is read from the unguided logits: in one pass when phi is phi0
        separate = confidence == "entropy" and phi is not phi0
        x0, conf = sample_tokens(phi, u, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                 confidence=None if separate else confidence)
        if separate:
            conf = neg_entropy(phi0, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
        order_u = rng.uniform(rng.derive(keys[:, None], rng.ORDER, step, col[None, :]))  # (R, L)
        commit = commit_mask(cfg.alg, schedule, conf=conf, x0=x0, rows=rows, cols=cols, eligible=eligible,
                             at_block_start=at_block_start, local=local, steps=per_block, order_u=order_u,
                             stop_ids=stop_ids, deprioritize_eos=cfg.deprioritize_eos, alg_temp=cfg.alg_temp)
        proposal = resp.clone()
        proposal[rows, cols] = x0
        canvas[:, p:] = torch.where(commit, proposal, resp)
        if state is not None:
            update = StepUpdate(base=phi0, proposal=phi, sampled=x0, committed=commit[rows, cols],
                                tokens=canvas[:, p:])
            ancestors = guidance.observe(state, gstep, update)        # (R,) or None
            if ancestors is not None:                                  # resample within prompts
                canvas = canvas[ancestors]
                at_block_start = at_block_start[ancestors]

    tokens = canvas[:, p:].reshape(len(prompts), k, length)
    texts = [[_decode(model, row) for row in tokens[b].tolist()] for b in range(len(prompts))]
    rewards = best_i = best_r = avg_r = None
    if reward is not None:
        flat = [t for row in texts for t in row]
        rewards = reward.score_text(rep_prompts, flat).reshape(len(prompts), k).cpu()
        best_r, best_i = rewards.max(1)
        avg_r = rewards.mean(1)
    stacked = {key: torch.stack(v, 1).cpu() if v else None for key, v in diag.items() if key != "step"}
    dlm_work = [(forwards * k, forwards * k * (len(e) + length)) for e in encoded]   # K rows per step
    rm_work = usage.view(len(prompts), k, 4).sum(1).tolist() if usage is not None else [[0, 0, 0, 0]] * len(prompts)
    compute = account(model, reward, prompts, encoded, texts, cfg, dlm_work, rm_work)
    particles = guidance.report(state) if state is not None and diagnose else {}
    return GenerationResult(prompts, list(prompt_ids), tokens.cpu(), texts, rewards, best_i, best_r, avg_r,
                            time.perf_counter() - t0, guided_steps=diag["step"], compute=compute,
                            particles=particles, **stacked)


def account(model, reward, prompts, encoded, texts, cfg: DenoiseConfig, dlm_work: list, rm_work: list) -> dict:
    """Per prompt compute, independent of batching (padding is not counted), from each prompt's
    dLLM work ``dlm_work[i] = (forwards, tokens)`` and reward-model work during guidance
    ``rm_work[i] = [forwards, their tokens, backwards, their tokens]``:

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
    out = {key: [] for key in ("dlm_forwards", "dlm_tokens", "rm_forwards", "rm_forward_tokens", "rm_backwards",
                               "rm_backward_tokens", "flops", "forward_equivalents")}
    for i in range(len(prompts)):
        row = len(encoded[i]) + cfg.max_new_tokens
        dlm_fwd, dlm_tok = dlm_work[i]
        fwd, fwd_tok, bwd, bwd_tok = rm_work[i]
        if reward is not None:                                         # final scoring of the K texts
            fwd += k
            fwd_tok += sum(reward.text_tokens(prompts[i], t) for t in texts[i])
        flops = 2 * p_dlm * dlm_tok + 2 * p_rm * (fwd_tok + bwd_tok)
        for key, value in zip(out, (dlm_fwd, dlm_tok, fwd, fwd_tok, bwd, bwd_tok, flops, flops / (2 * p_dlm * row))):
            out[key].append(value)
    return out


def _collect(diag: dict, step: int, out, gstep: GuidanceStep, b: int, k: int) -> None:
    """Per-prompt (B,) means of one guided step's diagnostics (kept on device until the end)."""
    if out.weight is None:
        return
    diag["step"].append(step)
    prompt_of = torch.div(gstep.rows, k, rounding_mode="floor")      # (N,) prompt of each masked position
    total = torch.zeros(b, device=out.weight.device).index_add(0, prompt_of, out.weight.float())
    count = torch.zeros(b, device=out.weight.device).index_add(0, prompt_of, torch.ones_like(out.weight).float())
    diag["weight"].append(total / count.clamp(min=1))
    for key in ("reward_before", "reward_after"):
        value = getattr(out, key)
        if value is not None:
            diag[key].append(value.detach().float().view(b, k).mean(1))


def _decode(model, ids: list[int]) -> str:
    stops = set(model.stop_ids)
    cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
    return model.decode([t for t in ids[:cut] if t != model.mask_id])
