"""Sequential Monte Carlo over a prompt's K samples, with any strategy as the proposal.

The K samples of a prompt are particles aimed at ``p_base(x | prompt) * exp(R(x) / beta)``, or,
by default (``beta=None``), tempered adaptively so that no reward scale has to be guessed.
Every denoising step the proposal (``None``: the model itself, i.e. FK steering; or Expectation,
APS, EntRGi) refines the logits the sampler draws from; each committed token multiplies its
particle's weight by ``p_base(token) / q_proposal(token)`` (both under the sampler's temperature,
top-p and top-k; base = the model's logits before guidance), so guidance moves particles without
biasing the target. Every ``every`` steps the partial samples are scored by the reward model, an
intermediate reward ``r_t`` (masked positions relaxed with the proposal's gate, or completed by
the argmax of the proposal's logits), and the weights take the increment of the potential:

- ``"difference"``: ``exp((r_t - r_prev) / beta)``; the increments telescope to ``exp(r / beta)``
  of the last reward read, so the target is exact up to that reward being intermediate;
- ``"max"``: the intermediate targets use ``exp(max_s r_s / beta)`` (increments of the running max);
- ``"sum"``: they use ``exp(sum_s r_s / beta)`` (increment ``exp(r_t / beta)``).

**Adaptive tempering** (``beta=None``, the default): a reward model's scale is arbitrary (Skywork's
spans tens of units, a verifier 0 or 1), so no fixed beta can be a default. Each reading's
increment is instead weighted by the largest inverse temperature (up to ``ADAPTIVE_MAX``) whose
reweighting keeps the prompt's ESS at ``ess_threshold * K`` or above, found by bisection per
prompt; where that bound holds, the prompt is resampled. The weighting is then relative to the
spread of the particles' rewards, on any scale; a fixed ``beta`` keeps the exact target above.

When a prompt's effective sample size ``(sum w)^2 / sum w^2`` is at most ``ess_threshold * K``
its particles are resampled (systematic resampling, one uniform per prompt and step from the
counter-based keys, so the result is the same alone, batched or on any device) and their weights
reset. A row keeps its own random keys after resampling, so copies of one particle diverge.
Not reweighted: which positions are committed at a step (the sampler's confidence rule reads the
proposal's probabilities), as in published SMC samplers for masked diffusion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from entrgi_core import checks, rng
from entrgi_core.contract import Guidance, GuidanceOutput, GuidanceStep, StepUpdate, default_relaxation
from entrgi_core.draws import token_log_probs
from entrgi_core.errors import InputError

POTENTIALS = ("difference", "max", "sum")
ADAPTIVE_MAX = 1e4           # the largest inverse temperature adaptive tempering may pick
ADAPTIVE_ITERATIONS = 40     # bisection steps (relative precision 2^-40 of ADAPTIVE_MAX)
INTERMEDIATE = ("relaxed", "hard")


@dataclass
class Particles:
    """The running state of one generation: B prompts x K particles, all on the device."""

    prompts: int
    samples: int
    log_weight: Tensor          # (R,) float64, since the last resampling
    potential: Tensor           # (R,) float64, beta x the log-potential so far: r, max r or sum r
    reads: int = 0              # intermediate rewards read so far
    blocks: Tensor | None = None  # (B,) blocks every sample of the prompt had completed at its last reading
    steps: list = field(default_factory=list)       # denoising steps observed
    ess: list = field(default_factory=list)         # (B,) ESS after each, before any resampling
    resampled: list = field(default_factory=list)   # (B,) bool per step: resampled then


class SMC(Guidance):
    """Sequential Monte Carlo steering of the K samples (see the module docstring).

    Args:
        proposal: the strategy that refines each step's logits (None: the model's own, FK steering).
        beta: None (default): adaptive tempering (see the module docstring); a number: the
            temperature of the target ``p_base * exp(R / beta)``; ``float("inf")`` reweights by the
            importance factors only (and with no proposal never resamples).
        potential: "difference", "max" or "sum".
        intermediate: the reward of a partial sample: "relaxed" (masked positions as the proposal's
            gated relaxation; EntRGi's gate when the proposal has none) or "hard" (each masked
            position completed by the argmax of the proposal's logits; read as text when the reward
            is text-only or ``read_with="select"``).
        every: read the intermediate reward, and consider resampling, every k-th denoising step taken
            (steps 0, k, 2k, ..., as ``every`` counts in every strategy; never once nothing is left
            masked: the end is scored as a whole).
        ess_threshold: resample a prompt when its ESS is at most this fraction of K (1: at every
            reading; 0: never).
        scheme: "systematic" (the only one implemented).
        resample_at: "step" (read and resample on the steps ``every`` picks) or "block" (only where
            all of a prompt's samples have just completed a block, as Self-Rewarding SMC does, so a
            block cache stays valid; ``every`` then does not apply).
        read_with: "reward" (the generation's reward reads the intermediate potential) or "select"
            (its selector, e.g. a verifier, reads the argmax completion as text; needs
            intermediate="hard").
    """

    name = "smc"
    particles = True

    def __init__(self, proposal: Guidance | None = None, beta: float | None = None, potential: str = "difference",
                 intermediate: str = "relaxed", every: int = 1, ess_threshold: float = 0.5,
                 scheme: str = "systematic", resample_at: str = "step", read_with: str = "reward"):
        super().__init__()
        if proposal is not None and not isinstance(proposal, Guidance):
            raise InputError(f"SMC: proposal must be a guidance strategy or None, got {type(proposal).__name__}")
        if isinstance(proposal, SMC):
            raise InputError("SMC: the proposal cannot itself be SMC")
        beta = checks.real(beta, who="SMC", name="beta", rule="be > 0 (float('inf'): no reward weighting)",
                           ok=lambda v: v > 0, finite=False, none_means="adaptive tempering")
        checks.one_of(potential, POTENTIALS, who="SMC", name="potential")
        checks.one_of(intermediate, INTERMEDIATE, who="SMC", name="intermediate")
        every = checks.integer(every, who="SMC", name="every", minimum=1)
        ess_threshold = checks.fraction(ess_threshold, who="SMC", name="ess_threshold")
        checks.one_of(scheme, ("systematic",), who="SMC", name="scheme")
        checks.one_of(resample_at, ("step", "block"), who="SMC", name="resample_at")
        checks.one_of(read_with, ("reward", "select"), who="SMC", name="read_with")
        if read_with == "select" and intermediate != "hard":
            raise InputError("SMC: read_with='select' scores the argmax completion as text: it needs intermediate='hard'")
        self.resample_at, self.read_with = resample_at, read_with
        self.proposal = proposal
        self.beta = beta
        self.potential, self.intermediate, self.every = potential, intermediate, every
        self.ess_threshold, self.scheme = float(ess_threshold), scheme

    # ------------------------------------------------------------------ the Guidance interface

    @property
    def weighs_reward(self) -> bool:
        return self.beta is None or math.isfinite(self.beta)

    @property
    def reads_embeddings(self) -> bool:
        return (self.proposal is not None and self.proposal.reads_embeddings) or \
            (self.weighs_reward and self.intermediate == "relaxed")

    @property
    def needs_reward(self) -> bool:
        return self.weighs_reward or (self.proposal is not None and self.proposal.needs_reward)

    def active(self, index: int, total: int) -> bool:
        return self.proposal is not None and self.proposal.needs_reward and self.proposal.active(index, total)

    def guides(self, step: GuidanceStep, phi: Tensor) -> bool:
        return self.proposal is not None and self.proposal.guides(step, phi)

    @property
    def uses_total(self) -> bool:
        return self.proposal is not None and self.proposal.uses_total

    def check(self, temperature: float, top_p: float) -> None:
        if not temperature > 0:
            raise InputError("SMC: the sampler is greedy (temperature 0); importance weights need token "
                             "probabilities, so sample with temperature > 0")
        if self.proposal is not None and self.proposal.needs_reward:
            self.proposal.check(temperature, top_p)

    def refine(self, phi: Tensor, step: GuidanceStep) -> GuidanceOutput:
        return self.proposal.refine(phi, step)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.settings().items() if k not in ("class", "proposal"))

    # ------------------------------------------------------------------ particles

    def begin(self, prompts: int, samples: int, device) -> Particles:
        zeros = torch.zeros(prompts * samples, dtype=torch.float64, device=device)
        return Particles(prompts, samples, zeros, zeros.clone())

    def observe(self, state: Particles, step: GuidanceStep, update: StepUpdate) -> Tensor | None:
        b, k = state.prompts, state.samples
        if update.proposal is not update.base:                         # importance factor p_base / q
            opts = dict(temperature=step.temperature, top_p=step.top_p, top_k=step.top_k)
            done = update.committed.nonzero().squeeze(1)               # every token committed at this step
            lp = token_log_probs(update.base[done], update.sampled[done], **opts)    # -inf outside base's filters
            lq = token_log_probs(update.proposal[done], update.sampled[done], **opts)
            keep = torch.isfinite(lq)
            state.log_weight.index_add_(0, step.rows[done], torch.where(keep, lp - lq, torch.zeros_like(lp)))
        at = self.reading(state, step, update)                         # (B,) prompts read at this step, or None
        binding = None                                                 # (B,) adaptive: the ESS target held the weight
        if at is not None and self.weighs_reward:
            r = self.intermediate_reward(step, update, at.repeat_interleave(k)).double()   # (R,), NaN if not read
            if self.potential == "max" and state.reads:
                new = torch.maximum(state.potential, r)
            elif self.potential == "sum":
                new = state.potential + r
            else:                                                      # difference, or the first max
                new = r
            new = torch.where(at.repeat_interleave(k), new, state.potential)
            inverse, binding = self.inverse_temperature(state.log_weight.view(b, k), (new - state.potential).view(b, k))
            state.log_weight += inverse.repeat_interleave(k) * (new - state.potential)
            state.potential = new
            state.reads += 1
        lw = state.log_weight.view(b, k)
        lw = torch.where(torch.isneginf(lw).all(1, keepdim=True), torch.zeros_like(lw), lw)   # all dead: uniform
        w = torch.softmax(lw, dim=1)                                   # (B, K) normalised weights
        ess = 1.0 / (w * w).sum(1)                                     # (B,)
        state.steps.append(step.index)
        state.ess.append(ess)
        if at is None:
            state.resampled.append(torch.zeros_like(ess, dtype=torch.bool))
            return None
        resample = at & (ess <= self.ess_threshold * k)                # (B,)
        if binding is not None:                                        # adaptive: reweighted down to the threshold
            resample |= at & binding
        u = rng.uniform(rng.derive(step.keys[::k], rng.RESAMPLE, step.index))   # (B,) one per prompt
        picked = systematic(w, u)                                      # (B, K) within-prompt ancestors
        own = torch.arange(k, device=w.device).expand(b, k)
        local = torch.where(resample[:, None], picked, own)
        ancestors = (local + k * torch.arange(b, device=w.device)[:, None]).reshape(-1)   # (R,)
        state.log_weight = torch.where(resample[:, None], torch.zeros_like(lw), lw).reshape(-1)[ancestors]
        state.potential = state.potential[ancestors]
        state.resampled.append(resample)
        return ancestors

    def inverse_temperature(self, log_weight: Tensor, increment: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B,) the weight 1/beta of this reading's potential increment (B, K) per prompt: 1 / beta,
        or (adaptive, beta=None) the largest one up to ``ADAPTIVE_MAX`` whose reweighting keeps the
        ESS at ``ess_threshold * K`` or above (bisection, on the device, no host sync); and, when
        adaptive, (B,) whether that bound held it (those prompts are then resampled)."""
        if self.beta is not None:
            return torch.full(log_weight.shape[:1], 1.0 / self.beta, dtype=torch.float64, device=log_weight.device), None
        k = log_weight.shape[1]
        target = self.ess_threshold * k
        increment = torch.nan_to_num(increment, nan=0.0)

        def ess(inverse):
            w = torch.softmax(log_weight + inverse[:, None] * increment, dim=1)
            return 1.0 / (w * w).sum(1)

        lo = torch.zeros(log_weight.shape[0], dtype=torch.float64, device=log_weight.device)
        hi = torch.full_like(lo, ADAPTIVE_MAX)
        ok = ess(hi) >= target                                         # even the largest keeps the ESS
        for _ in range(ADAPTIVE_ITERATIONS):
            mid = (lo + hi) / 2
            good = ess(mid) >= target
            lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
        return torch.where(ok, torch.full_like(lo, ADAPTIVE_MAX), lo), ~ok

    def reading(self, state: Particles, step: GuidanceStep, update: StepUpdate) -> Tensor | None:
        """(B,) bool: the prompts whose intermediate reward is read (and that may be resampled) at
        this step, or None for none. Never a prompt with nothing left masked (its end is scored as
        a whole); ``resample_at="step"``: at steps 0, every, 2 every, ...; ``"block"``: the prompts
        all of whose samples have just completed a block. One host sync."""
        b, k = state.prompts, state.samples
        left = torch.zeros(b * k, dtype=torch.long, device=update.tokens.device).index_add(
            0, step.rows, (~update.committed).long())                  # (R,) positions still masked
        at = left.view(b, k).sum(1) > 0                                # (B,) prompts not yet done
        if self.resample_at == "step":
            at &= step.index % self.every == 0
        else:
            done = update.blocks_done.view(b, k).min(1).values          # (B,) blocks all samples have completed
            if state.blocks is None:
                state.blocks = torch.zeros_like(done)
            at &= done > state.blocks
            state.blocks = torch.maximum(state.blocks, done)
        return at if bool(at.any()) else None

    def intermediate_reward(self, step: GuidanceStep, update: StepUpdate, read: Tensor) -> Tensor:
        """Rewards (R,) of the canvas after the commit, its masked positions relaxed or completed
        from the proposal's logits, for the rows ``read`` (R,) bool (NaN elsewhere: those rows cost
        nothing). One host sync (the rows and positions read)."""
        idx = read.nonzero().squeeze(1)                                # (n,)
        local_row = read.long().cumsum(0) - 1
        left = ~update.committed & read[step.rows]                     # still masked, in a row read
        rows, cols, phi = local_row[step.rows[left]], step.cols[left], update.proposal[left]
        sub = replace(step, side=step.side.rows(idx) if len(idx) < len(read) else step.side,
                      tokens=update.tokens[idx], rows=rows, cols=cols, keys=step.keys[idx])
        with torch.no_grad():
            if self.intermediate == "hard":                            # every masked position by its argmax
                done = sub.tokens.index_put((rows, cols), phi.argmax(-1))
                if self.read_with == "select" or not step.side.parts:   # a text reward, or the selector
                    scorer = step.side.select if self.read_with == "select" else None
                    rewards = sub.read_text(done, scorer)
                else:                                                   # no masked position left to relax
                    none = rows[:0]
                    rewards = replace(sub, tokens=done, rows=none, cols=none).read(phi[:0], hard=none).rewards
            else:
                rel = self.proposal.relaxation(step) if self.proposal is not None else default_relaxation(step)
                rewards = sub.read(phi, rel, inner=-1).rewards
        return torch.full((len(read),), float("nan"), device=rewards.device, dtype=rewards.dtype).index_put(
            (idx,), rewards)

    def report(self, state: Particles) -> dict[str, list]:
        """Per prompt: ``ess_by_step`` {step: ESS after the step's update, before resampling} and
        ``resampled_at`` [steps]."""
        if not state.steps:
            return {"ess_by_step": [{} for _ in range(state.prompts)], "resampled_at": [[] for _ in range(state.prompts)]}
        ess = torch.stack(state.ess, 1).cpu().tolist()                # (B, S)
        res = torch.stack(state.resampled, 1).cpu().tolist()
        return {"ess_by_step": [{s: round(e, 4) for s, e in zip(state.steps, row)} for row in ess],
                "resampled_at": [[s for s, r in zip(state.steps, row) if r] for row in res]}


def systematic(weights: Tensor, u: Tensor) -> Tensor:
    """Systematic resampling: (B, K) ancestor indices from normalised ``weights`` (B, K) and one
    uniform per row ``u`` (B,): particle i takes the index whose cumulative weight first exceeds
    (u + i) / K."""
    b, k = weights.shape
    cdf = weights.double().cumsum(1)
    cdf = cdf / cdf[:, -1:]                                            # exact 1 at the end
    points = (u.double()[:, None] + torch.arange(k, device=weights.device, dtype=torch.float64)) / k
    return torch.searchsorted(cdf, points, right=True).clamp_(max=k - 1)
