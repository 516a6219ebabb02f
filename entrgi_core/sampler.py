"""The guided denoising loop (DESIGN.md §1), vectorised over B prompts x K samples.

``generate`` checks a plan (``entrgi_core.plan``) and runs it. For a masked diffusion LM that is
``denoise``: every row starts from ``[left padding | prompt | L x MASK]`` and each ``step`` runs one
dLLM forward over all B*K rows, guidance on the masked positions' logits (all rows at once), a
draw at every masked position and a commit of the positions the plan's schedule picks
(``entrgi_core.schedules``), inside each row's current block (``Blocks``). Every random draw is keyed by (seed, prompt id, sample, step,
position), so a prompt's samples do not depend on what it is batched with or on which device it
runs. A model with its own loop (``OwnLoopLM``) samples itself, guided from inside. Both end in
``entrgi_core.result.finish``. Guidance is any ``entrgi_core.contract.Guidance``; None is
unguided sampling. A particle strategy sees every step's update after the commit and may
resample each prompt's rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from entrgi_core import rng
from entrgi_core.config import DenoiseConfig
from entrgi_core.contract import GuidanceStep, StepUpdate
from entrgi_core.draws import neg_entropy, sample_tokens
from entrgi_core.errors import InputError, require_finite
from entrgi_core.kv_cache import BlockCache
from entrgi_core.models import OwnLoopLM
from entrgi_core.plan import Batch, Plan
from entrgi_core.result import GenerationResult, Rollout, finish
from entrgi_core.reward_side import RewardSide
from entrgi_core.schedules import Blocks, CommitSchedule, CommitView

SAMPLE_CONFIDENCES = ("maskgit_plus", "topk_margin", "entropy", "low_confidence")


def generate(model, prompts: list[str], *, reward=None, guidance=None, config: DenoiseConfig | None = None,
             prompt_ids: list | None = None, diagnose: bool = False, select=None, judges=None,
             baseline: bool = False, seeds: list[int] | None = None, on_step=None) -> GenerationResult:
    """K responses for each prompt, guided by ``reward`` through ``guidance`` (None: unguided).

    ``select`` picks Top@1 (default: the reward); ``judges`` only score the final responses
    (evaluation; they never change the samples). ``prompt_ids`` (default: the prompts' positions)
    seed each prompt's random draws together with ``config.seed``. ``reward`` may be None only
    for unguided sampling. ``diagnose`` adds the diagnostics that cost compute (reward after each
    update). ``seeds`` (one per prompt) give each prompt its own seed: a prompt's responses are the
    ones ``generate`` gives it alone with ``config.seed`` = its seed and the same prompt id, so
    requests with different seeds share one batch. ``baseline`` also runs Best-of-N at the same K and seeds (its compute is reported apart,
    never added to this run's) and gives each prompt's gain over it under the reward and under each
    judge (``GenerationResult.gains``).

    ``on_step(index, tokens)`` is called after each denoising step with the canvas' responses
    ``tokens`` (B, K, L) on the model's device, still-masked positions holding the mask id (a view,
    valid during the call: copy what you keep). Whatever it raises stops the generation and
    propagates (a server stops a request whose client left). Not offered by models that run their
    own loop (``OwnLoopLM``), nor with ``baseline``.
    """
    plan = Plan.check(model, reward, guidance, config, select=select, judges=judges)
    if on_step is not None:
        if not callable(on_step):
            raise InputError(f"generate: on_step must be callable (index, tokens), got {type(on_step).__name__}")
        if isinstance(model, OwnLoopLM):
            raise InputError(f"generate: on_step needs entrgi's sampler, and {type(model).__name__} runs its own loop")
        if baseline:
            raise InputError("generate: on_step cannot be combined with baseline (two generations would report steps)")
    baseline_plan = best_of_n_plan(plan) if baseline else None
    batch = plan.batch(prompts, prompt_ids, seeds=seeds)
    res = run(plan, batch, diagnose=diagnose, on_step=on_step)
    return with_baseline(res, run(baseline_plan, batch)) if baseline else res


def generate_steps(model, prompts: list[str], *, reward=None, guidance=None, config: DenoiseConfig | None = None,
                   prompt_ids: list | None = None, diagnose: bool = False, select=None, judges=None,
                   seeds: list[int] | None = None):
    """``generate``, one denoising step at a time, in the caller's thread: ``Steps`` to iterate,
    ``(index, tokens)`` after each step (as ``on_step`` gets them), then ``.result``::

        steps = generate_steps(model, prompts, reward=rm, guidance=EntRGi())
        for index, tokens in steps:
            ...                                   # stream the canvas; steps.close() stops early
        res = steps.result

    The arguments are checked now, before any compute. A model that runs its own loop
    (``OwnLoopLM``) gives no steps, only its result."""
    plan = Plan.check(model, reward, guidance, config, select=select, judges=judges)
    return Steps(run_steps(plan, plan.batch(prompts, prompt_ids, seeds=seeds), diagnose=diagnose))


class Steps:
    """A generation's denoising steps, ``(index, tokens)`` each (tokens (B, K, L): a view, valid
    until the next step), and its ``result`` once they are done."""

    def __init__(self, steps):
        self._steps, self._result, self._done = steps, None, False

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._steps)
        except StopIteration as done:
            self._result, self._done = done.value, True
            raise StopIteration from None

    @property
    def result(self) -> GenerationResult:
        if not self._done:
            raise RuntimeError("Steps.result: the generation has steps left (iterate to the end first)")
        return self._result

    def close(self) -> None:
        """Stop the generation here (no result)."""
        self._steps.close()


def best_of_n_plan(plan: Plan) -> Plan:
    """The unguided plan with ``plan``'s model, reward, selector, judges and sampler: Best-of-N at
    the same K and seeds. Refused (before any compute) for a plan that is unguided already."""
    if plan.guidance is None or not plan.guidance.needs_reward:
        raise InputError("baseline=True compares a guided run with Best-of-N at the same K; this run is unguided "
                         "(it is Best-of-N): give a guidance strategy, or drop the baseline")
    return Plan.check(plan.model, plan.reward, None, plan.config, select=plan.select, judges=list(plan.judges))


def with_baseline(res: GenerationResult, bon: GenerationResult) -> GenerationResult:
    """``res`` with Best-of-N's Top@1 reward and judge scores (``baseline``) and the gains over them."""
    def top1(r: GenerationResult, scores):
        return scores.gather(1, r.best_index[:, None])[:, 0]

    res.baseline = {"reward": bon.best_reward, **{n: top1(bon, v) for n, v in bon.judge_scores.items()}}
    mine = {"reward": res.best_reward, **{n: top1(res, v) for n, v in res.judge_scores.items()}}
    res.gains = {key: mine[key] - res.baseline[key] for key in mine}
    res.baseline["forward_equivalents"] = torch.tensor(bon.compute["forward_equivalents"])
    return res


def run(plan: Plan, batch: Batch, *, diagnose: bool = False, on_step=None) -> GenerationResult:
    """One generation of a checked ``plan`` over a checked ``batch`` (``on_step``: see ``generate``)."""
    steps = Steps(run_steps(plan, batch, diagnose=diagnose))
    for index, tokens in steps:
        if on_step is not None:
            on_step(index, tokens)
    return steps.result


def run_steps(plan: Plan, batch: Batch, *, diagnose: bool = False):
    """``run`` as a generator: yields ``(index, tokens)`` after each denoising step (none for a model
    that runs its own loop) and returns the ``GenerationResult``."""
    started = time.perf_counter()
    if isinstance(plan.model, OwnLoopLM):
        rollout = plan.model.sample(plan, batch, diagnose=diagnose)
    else:
        rollout = yield from denoise_steps(plan, batch, diagnose=diagnose)
    return finish(plan, batch, rollout, started)


@dataclass
class Rows:
    """The R = B*K rows of one generation while they are denoised."""

    ids: Tensor                     # (R, P + L) canvas: left padding, prompt, response
    attn: Tensor                    # (R, P + L) bool attention mask
    pos: Tensor                     # (R, P + L) position ids
    width: int                      # P, where the response starts
    keys: Tensor                    # (R,) per-row random keys
    stops: Tensor                   # (S,) ids that end a response
    side: RewardSide | None         # the reward side (when the strategy reads the reward model)
    schedule: CommitSchedule
    blocks: Blocks                  # each row's current block and the steps it took there
    particles: object | None        # a particle strategy's state
    row_tokens: Tensor              # (R,) real tokens of a full forward of each row (prompt + L, no padding)
    cache: BlockCache | None = None
    forwards: Tensor | None = None  # (R,) dLLM forwards each row ran (steps while it had masked positions)
    tokens: Tensor | None = None    # (R,) the tokens those forwards ran
    diag: dict = field(default_factory=lambda: {"step": [], "weight": [], "reward_before": [], "reward_after": []})

    @property
    def response(self) -> Tensor:
        return self.ids[:, self.width:]            # (R, L) view


def denoise_steps(plan: Plan, batch: Batch, *, diagnose: bool = False):
    """entrgi's masked sampler over all rows of ``batch``: at most ``config.steps`` steps, fewer
    when a parallel schedule leaves nothing masked earlier. A generator: yields ``(index, tokens)``
    after each step, tokens the responses (B, K, L) as they stand (a view, valid until the next
    step), and returns the ``Rollout``."""
    rows = start(plan, batch)
    k, length = plan.config.num_samples, plan.config.max_new_tokens
    for index in range(plan.config.steps):
        if not step(plan, rows, index, diagnose=diagnose):
            break
        yield index, rows.response.view(len(batch), k, length)
    return rollout(plan, batch, rows, diagnose=diagnose)


def start(plan: Plan, batch: Batch) -> Rows:
    """The left-padded canvases of all rows, their keys, and the generation's reward side."""
    model, cfg, k = plan.model, plan.config, plan.config.num_samples
    device = model.device
    ids, attn, pos, width = model.canvas(batch.encoded, cfg.max_new_tokens)
    rep = lambda t: t.repeat_interleave(k, dim=0).to(device)  # noqa: E731
    side = None
    if plan.guided:
        side = RewardSide.build(plan.reward, [q for q in batch.prompts for _ in range(k)], tokenizer=model.tokenizer,
                                vocab_size=model.vocab_size, stop_ids=model.stop_ids, device=device,
                                decode=model.response_text, select=plan.selector,
                                prompt_ids=[i for i in batch.prompt_ids for _ in range(k)])
    g, r = plan.guidance, len(batch) * k
    zeros = torch.zeros(r, dtype=torch.long, device=device)
    return Rows(ids=rep(ids), attn=rep(attn), pos=rep(pos), width=width,
                keys=rng.row_keys(batch.seeds or cfg.seed, batch.prompt_ids, k, device=device),
                stops=torch.tensor(model.stop_ids, dtype=torch.long, device=device), side=side,
                schedule=plan.schedule,
                blocks=Blocks(r, cfg.max_new_tokens, cfg.num_blocks, cfg.steps // cfg.num_blocks, device),
                particles=g.begin(len(batch), k, device) if g is not None and g.particles else None,
                row_tokens=rep(attn.sum(1)), forwards=zeros, tokens=zeros.clone(),
                cache=BlockCache(cfg.cache, cfg.cache_refresh, r, device) if cfg.cache is not None else None)


def step(plan: Plan, rows: Rows, index: int, *, diagnose: bool = False) -> bool:
    """Denoising step ``index``: forward, guidance, draw, commit. False when nothing was masked."""
    model, cfg = plan.model, plan.config
    masked = rows.response == model.mask_id                            # (R, L)
    eligible, last = rows.blocks.enter(masked, index, rows.schedule.lockstep)
    r, c = masked.nonzero(as_tuple=True)                               # one host sync per step
    if r.numel() == 0:
        return False
    phi0, idx = _forward(plan, rows, masked, r, c)                     # (N, V), (n,) rows with masked positions
    require_finite(phi0, f"generate: the model at denoising step {index}")
    gstep = None
    if plan.guided or rows.particles is not None:
        gstep = GuidanceStep(index=index, total=cfg.steps, side=rows.side, tokens=rows.response, rows=r, cols=c,
                             keys=rows.keys, samples=cfg.num_samples, sampling=cfg.sampling, diagnose=diagnose)
    phi = _guide(plan, rows, gstep, phi0, idx, masked)
    x0, conf = _draw_block(cfg, rows, r, c, phi, phi0, index, eligible, model.mask_id)
    commit = rows.schedule.commit(CommitView(
        config=cfg, stat=conf, sampled=x0, rows=r, cols=c, eligible=eligible, last=last, blocks=rows.blocks,
        index=index, keys=rows.keys, stop_ids=rows.stops))
    resp = rows.response
    proposal = resp.clone()
    proposal[r, c] = x0
    rows.ids[:, rows.width:] = torch.where(commit, proposal, resp)
    rows.blocks.taken(masked)
    if rows.particles is not None:
        done = rows.blocks.done(rows.response == model.mask_id)
        _observe(plan.guidance, rows, gstep, StepUpdate(base=phi0, proposal=phi, sampled=x0, committed=commit[r, c],
                                                        tokens=rows.response, blocks_done=done))
    return True


def _guide(plan: Plan, rows: Rows, gstep: GuidanceStep | None, phi0: Tensor, idx: Tensor, masked: Tensor) -> Tensor:
    """The logits (N, V) to draw from: the strategy's refinement where it guides, else ``phi0``. The
    strategy sees only the rows that still have masked positions (a finished row would cost reward-
    model passes for nothing)."""
    guidance = plan.guidance
    if not (plan.guided and guidance.guides(gstep, phi0)):
        return phi0
    sub = gstep
    if len(idx) < gstep.tokens.shape[0]:
        local_row = masked.any(1).long().cumsum(0) - 1
        sub = replace(gstep, side=gstep.side.rows(idx), tokens=gstep.tokens[idx], rows=local_row[gstep.rows],
                      keys=gstep.keys[idx])
    out = guidance.refine(phi0, sub)
    require_finite(out.logits, f"generate: guidance ({type(guidance).__name__}) at denoising step {gstep.index}")
    _collect(rows.diag, gstep.index, out, gstep, plan.config.num_samples, idx)
    return out.logits


def _forward(plan: Plan, rows: Rows, masked: Tensor, r: Tensor, c: Tensor) -> Tensor:
    """The logits (N, V) float32 of the masked positions: one forward of the rows that still have
    any (cached, when the plan asks for a block cache), counted per row."""
    model = plan.model
    active = masked.any(1)                                             # (R,)
    idx = active.nonzero().squeeze(1)                                  # host sync
    if rows.cache is not None:
        phi0, tokens = rows.cache.masked_logits(model, rows.ids, rows.attn, rows.pos, rows.width, idx, rows.blocks,
                                                rows.row_tokens, r, c)
    elif len(idx) == len(active):                                      # every row: no copy
        phi0 = model.logits(rows.ids, rows.attn, rows.pos)[:, rows.width:][r, c].float()
        tokens = rows.row_tokens
    else:
        local_row = active.long().cumsum(0) - 1                        # row -> its index among the active
        logits = model.logits(rows.ids[idx], rows.attn[idx], rows.pos[idx])[:, rows.width:]
        phi0, tokens = logits[local_row[r], c].float(), rows.row_tokens[idx]
    rows.forwards[idx] += 1
    rows.tokens[idx] += tokens
    return phi0, idx


def _draw_block(cfg: DenoiseConfig, rows: Rows, r: Tensor, c: Tensor, phi: Tensor, phi0: Tensor, index: int,
                eligible: Tensor, mask_id: int) -> tuple[Tensor, Tensor | None]:
    """``draw`` at the masked positions of each row's current block only (the others cannot be
    committed at this step): the mask id and no statistic elsewhere."""
    guided = phi is not phi0
    if cfg.num_blocks == 1:                                            # every masked position is in the block
        return draw(cfg, rows.keys, r, c, phi, phi0, index, schedule=rows.schedule, guided=guided)
    e = eligible[r, c].nonzero().squeeze(1)                            # host sync
    xe, ce = draw(cfg, rows.keys, r[e], c[e], phi[e], phi0[e], index, schedule=rows.schedule, guided=guided)
    x0 = torch.full_like(r, mask_id).index_put((e,), xe)
    conf = None if ce is None else torch.full(r.shape, float("-inf"), device=r.device).index_put((e,), ce.float())
    return x0, conf


def draw(cfg: DenoiseConfig, keys: Tensor, r: Tensor, c: Tensor, phi: Tensor, phi0: Tensor, index: int, *,
         schedule: CommitSchedule, guided: bool = False):
    """Tokens (N,) drawn from ``phi`` (N, V) and the schedule's statistic (N,) (None for rules
    without one): ``"probability"`` (of the sampled token) and ``"entropy"`` read ``phi``; ``"alg"``
    is the config's confidence rule, whose Dream ``entropy`` reads the unguided ``phi0``
    (``guided``: phi is not phi0)."""
    u = rng.uniform(rng.derive(keys[r], rng.SAMPLE, index, c))
    opts = dict(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    if schedule.statistic == "entropy":
        return sample_tokens(phi, u, **opts)[0], -neg_entropy(phi, **opts)
    if schedule.statistic == "probability":
        return sample_tokens(phi, u, **opts, confidence="maskgit_plus")
    confidence = cfg.alg if cfg.alg in SAMPLE_CONFIDENCES else None
    separate = confidence == "entropy" and guided                    # one pass when unguided
    x0, conf = sample_tokens(phi, u, **opts, confidence=None if separate else confidence)
    if separate:
        conf = neg_entropy(phi0, **opts)
    return x0, conf


def _observe(guidance, rows: Rows, gstep: GuidanceStep, update: StepUpdate) -> None:
    """A particle strategy's reading of the step; rows are resampled within prompts by its ancestors
    (a row takes its ancestor's canvas and block state, and keeps its own keys and counters)."""
    ancestors = guidance.observe(rows.particles, gstep, update)      # (R,) or None
    if ancestors is not None:
        rows.ids = rows.ids[ancestors]
        rows.blocks.reorder(ancestors)
        if rows.cache is not None:
            rows.cache.reorder(ancestors)


def rollout(plan: Plan, batch: Batch, rows: Rows, *, diagnose: bool = False) -> Rollout:
    """The rows' responses and work, per prompt."""
    k, length = plan.config.num_samples, plan.config.max_new_tokens
    tokens = rows.response.reshape(len(batch), k, length).cpu()
    forwards = rows.forwards.view(len(batch), k)
    dlm_work = list(zip(forwards.sum(1).tolist(), rows.tokens.view(len(batch), k).sum(1).tolist()))
    rm_work = rows.side.per_prompt(k) if rows.side is not None else [{} for _ in range(len(batch))]
    diag = {key: torch.stack(v, 1).cpu() if v else None for key, v in rows.diag.items() if key != "step"}
    particles = plan.guidance.report(rows.particles) if rows.particles is not None and diagnose else {}
    return Rollout(tokens=tokens, dlm_work=dlm_work, rm_work=rm_work, steps=forwards.max(1).values.tolist(),
                   guided_steps=rows.diag["step"], diagnostics=diag, particles=particles)


def _collect(diag: dict, index: int, out, gstep: GuidanceStep, k: int, idx: Tensor) -> None:
    """Per-prompt (B,) means of one guided step's diagnostics over its rows ``idx`` that were guided
    (kept on device until the end)."""
    if out.weight is None:
        return
    b = gstep.tokens.shape[0] // k
    diag["step"].append(index)

    def per_prompt(values: Tensor, prompt_of: Tensor) -> Tensor:
        total = torch.zeros(b, device=values.device).index_add(0, prompt_of, values.float())
        count = torch.zeros(b, device=values.device).index_add(0, prompt_of, torch.ones_like(values).float())
        return total / count.clamp(min=1)

    diag["weight"].append(per_prompt(out.weight, torch.div(gstep.rows, k, rounding_mode="floor")))
    for key in ("reward_before", "reward_after"):
        value = getattr(out, key)
        if value is not None:
            diag[key].append(per_prompt(value.detach(), torch.div(idx, k, rounding_mode="floor")))
