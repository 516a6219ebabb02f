"""``entrgi diagnose``: which gate does *your* reward model reward?

    entrgi diagnose [--config configs/tiny.yaml] [--prompts 16] [--positions 4] [--samples 256]
                    [--out outputs/diagnose] [any `entrgi predict` override]

Runs the unguided sampler on the config's prompts and records denoising states at a quarter, half
and three quarters of the steps. At each state it probes masked positions one at a time (the
other masked positions filled with one hard sample, so the reward model sees a complete
response), and bins them by normalised entropy ``H(softmax(phi)) / log V``. Per bin:

(a) **gap**: the reward with the position relaxed to its soft embedding ``q @ E`` minus the
    expected reward over hard tokens ``E_{x~q} R(x)`` (what a soft input gets wrong);
(b) **cosine** (over positions whose expected-reward gradient is not zero) between each gate's gradient on the position's logits (soft / Expectation,
    straight-through / APS, entropy / EntRGi; one hard draw each, averaged over draws) and the
    gradient of the expected reward, ``(1/tau) q * (R(v) - E R)``: exact by enumerating every
    token when ``V <= --samples``, else a score-function estimate from ``--samples`` draws.

Writes ``diagnose.json``, ``diagnose.txt`` (the table) and ``diagnose.png``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from entrgi_core.config import DenoiseConfig
from entrgi_core.contract import Guidance, GuidanceOutput, GuidanceStep, Relaxation
from entrgi_core.errors import InputError
from entrgi_core.sampler import generate
from entrgi_core.tools import report
from entrgi_core.tools.report import mean_sem, pm

BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0001)
GATES = ("soft", "ste", "entropy")


class StateRecorder(Guidance):
    """Leaves the logits alone and keeps the denoising states of chosen steps."""

    name = "recorder"

    def __init__(self, at: set[int]):
        super().__init__()
        self.at, self.states = set(at), []

    def refine(self, phi: Tensor, step: GuidanceStep) -> GuidanceOutput:
        if step.index in self.at:
            self.states.append((step, phi.detach().clone(), step.tokens.clone()))
        return GuidanceOutput(phi)


def _one_position(step: GuidanceStep, prompt: str, tokens: Tensor, col: int) -> GuidanceStep:
    """A step for ``prompt`` whose canvas (n, L) has only column ``col`` masked, on every row."""
    n = tokens.shape[0]
    rows = torch.arange(n, device=tokens.device)
    return replace(step, side=step.side.for_prompts([prompt] * n), tokens=tokens, rows=rows,
                   cols=torch.full_like(rows, col), keys=torch.zeros(n, dtype=torch.long, device=tokens.device),
                   samples=n, diagnose=False)


def _rewards_of_tokens(step: GuidanceStep, prompt: str, canvas: Tensor, col: int, ids: Tensor, vocab: int,
                       chunk: int = 256) -> Tensor:
    """Rewards (S,) of ``canvas`` (L,) with column ``col`` set to each of ``ids`` (S,) (``vocab``
    logits per position)."""
    out = []
    none = torch.zeros(0, dtype=torch.long, device=canvas.device)
    for part in ids.split(chunk):
        tokens = canvas.expand(len(part), -1).clone()
        tokens[:, col] = part
        s = replace(_one_position(step, prompt, tokens, col), rows=none, cols=none)   # nothing relaxed
        with torch.no_grad():
            out.append(s.read(torch.zeros(0, vocab, device=canvas.device), hard=none).rewards.float())
    return torch.cat(out)


def probe(step: GuidanceStep, prompt: str, canvas: Tensor, col: int, phi: Tensor, *, tau: float, samples: int,
          draws: int, gen: torch.Generator) -> dict:
    """Gap and gate-gradient cosines at masked column ``col`` of ``prompt``'s canvas (L,) with logits
    ``phi`` (V,)."""
    v = phi.shape[0]
    q = torch.softmax(phi.float() / tau, -1)                                          # (V,)
    if v <= samples:                                                                  # exact: every token
        r_all = _rewards_of_tokens(step, prompt, canvas, col, torch.arange(v, device=phi.device), v)
        expected = (q * r_all).sum()
        true_grad = q * (r_all - expected) / tau
    else:                                                                             # score-function estimate
        ids = torch.multinomial(q.cpu(), samples, replacement=True, generator=gen).to(phi.device)
        r = _rewards_of_tokens(step, prompt, canvas, col, ids, v)
        expected = r.mean()
        true_grad = torch.zeros(v, device=phi.device).index_add(0, ids, (r - expected) / (tau * samples))
    # gate gradients: len(GATES) x draws rows, each its own copy of phi
    n = len(GATES) * draws
    hard = torch.multinomial(q.cpu(), draws, replacement=True, generator=gen).to(phi.device).repeat(len(GATES))
    var = phi.float().expand(n, -1).clone().requires_grad_(True)
    h = torch.special.entr(torch.softmax(phi.float(), -1)).sum() / math.log(v)             # tau_H = 1
    weights = torch.tensor([0.0] * draws + [1.0] * draws + [float(h)] * draws, device=phi.device)
    s = _one_position(step, prompt, canvas.expand(n, -1).clone(), col)
    with torch.enable_grad():
        reading = s.read(var, Relaxation(weights, tau, 1.0, 1.0), hard=hard)
        (grad,) = torch.autograd.grad(reading.rewards.sum(), var)                        # (n, V)
    cos = torch.nn.functional.cosine_similarity(grad, true_grad.expand_as(grad), dim=-1).view(len(GATES), draws)
    # a (near) deterministic position has no direction to compare: both gradients vanish in float32
    flat = float(true_grad.norm()) < 1e-6 or bool((grad.norm(dim=-1) == 0).any())
    one = _one_position(step, prompt, canvas[None].clone(), col)
    soft = one.read(phi.float()[None], Relaxation("soft", tau, 1.0, 1.0), hard=hard[:1]).rewards
    return {"entropy": float(h), "gap": float(soft[0].detach() - expected),
            **{f"cos_{g}": None if flat else float(c) for g, c in zip(GATES, cos.mean(1))}}


def diagnose(model, reward, prompts: list[str], config: DenoiseConfig, *, positions: int = 4, samples: int = 256,
             draws: int = 4, seed: int = 0) -> list[dict]:
    """Per probed position: its normalised entropy, the gap and the three cosines."""
    at = {config.steps // 4, config.steps // 2, 3 * config.steps // 4}
    recorder = StateRecorder(at)
    cfg = replace(config, num_samples=1, seed=seed)
    tau = config.temperature if config.temperature > 0 else 1.0
    generate(model, prompts, reward=reward, guidance=recorder, config=cfg)
    gen = torch.Generator().manual_seed(seed)
    out, started, total = [], time.perf_counter(), len(recorder.states) * len(prompts)
    for n, (step, phi, tokens) in enumerate(recorder.states):
        progress(f"step {step.index}: probing {min(positions, len(step.rows))} position(s) of each of "
                 f"{tokens.shape[0]} prompt(s) ({n * len(prompts)}/{total} done, "
                 f"{time.perf_counter() - started:.0f} s)")
        for r in range(tokens.shape[0]):
            mine = (step.rows == r).nonzero().squeeze(1)
            if mine.numel() == 0:
                continue
            ent = torch.special.entr(torch.softmax(phi[mine].float(), -1)).sum(-1)      # spread over the range
            ranks = torch.linspace(0, mine.numel() - 1, min(positions, mine.numel())).round().long()
            pick = mine[ent.argsort()[ranks]]
            filled = tokens[r].clone()                                               # other masked: one hard draw
            q_all = torch.softmax(phi[mine].float() / tau, -1)
            filled[step.cols[mine]] = torch.multinomial(q_all.cpu(), 1, generator=gen).squeeze(1).to(filled.device)
            for i in pick.tolist():
                res = probe(step, prompts[r], filled, int(step.cols[i]), phi[i], tau=tau, samples=samples,
                            draws=draws, gen=gen)
                out.append({"step": step.index, **res})
    return out


def progress(message: str) -> None:
    """One line per probed step on stderr: a run takes minutes with a real reward model."""
    print(f"[diagnose] {message}", file=sys.stderr, flush=True)


def summarize_bins(points: list[dict]) -> list[dict]:
    rows = []
    for lo, hi in zip(BINS, BINS[1:]):
        pts = [p for p in points if lo <= p["entropy"] < hi]
        row = {"bin": f"[{lo:.1f}, {min(hi, 1.0):.1f}{']' if hi > 1 else ')'}", "positions": len(pts)}
        for key in ("gap", *(f"cos_{g}" for g in GATES)):
            row[key], row[key + "_sem"] = mean_sem([p[key] for p in pts if p[key] is not None])
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ["entropy bin", "positions", "gap soft - E[hard]", "cos soft", "cos straight-through", "cos entropy"]
    body = [[r["bin"], str(r["positions"])] + [pm(r[k], r[k + "_sem"]) for k in ("gap", *(f"cos_{g}" for g in GATES))]
            for r in rows]
    return report.table(head, body)


def plot(rows: list[dict], path: Path, title: str) -> None:
    rows = [r for r in rows if r["positions"]]
    x = range(len(rows))
    fig, (left, right) = report.figure(2, width=5.5, height=4)
    left.errorbar(x, [r["gap"] for r in rows], yerr=[r["gap_sem"] for r in rows], marker="o", capsize=3)
    left.axhline(0, color="grey", lw=0.5)
    left.set_ylabel("R(soft) - E[R(hard)]")
    left.set_title("(a) what the soft input gets wrong")
    for g, name in zip(GATES, ("soft (Expectation)", "straight-through (APS)", "entropy (EntRGi)")):
        right.errorbar(x, [r[f"cos_{g}"] for r in rows], yerr=[r[f"cos_{g}_sem"] for r in rows], marker="o",
                       capsize=3, label=name)
    right.set_ylabel("cosine with the gradient of E[R]")
    right.set_title("(b) gradient accuracy by gate")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xticks(list(x), [r["bin"] for r in rows])
        ax.set_xlabel("normalised entropy of the position")
    report.save_figure(fig, path, title)


def main(argv: list[str] | None = None) -> None:
    from entrgi_core.tools.compare import load

    ap = argparse.ArgumentParser(prog="entrgi diagnose", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None, help="an entrgi predict config (repeatable)")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--positions", type=int, default=4, help="masked positions probed per state and prompt")
    ap.add_argument("--samples", type=int, default=256, help="tokens per position for E[R] (exact when V <= this)")
    ap.add_argument("--draws", type=int, default=4, help="hard draws per gate gradient")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("outputs/diagnose"))
    ap.add_argument("--title", default=None)
    args, overrides = ap.parse_known_args(argv)
    for name in ("prompts", "positions", "samples", "draws"):
        if getattr(args, name) < 1:
            raise InputError(f"entrgi diagnose: --{name} must be >= 1")
    configs = args.config or ["configs/tiny.yaml"]
    module, dm = load([a for c in configs for a in ("--config", c)] + overrides)
    model, reward, base = module.model, module.reward, module.config
    if len(reward.parts()) != 1 or reward.parts()[0][1] is not reward:
        raise InputError(f"entrgi diagnose probes one differentiable reward model; {reward.name!r} is not one")
    prompts = [it["prompt"] for it in dm.items[: args.prompts]]
    points = diagnose(model, reward, prompts, base, positions=args.positions, samples=args.samples,
                      draws=args.draws, seed=args.seed)
    rows = summarize_bins(points)
    title = args.title or f"{getattr(reward, 'name', '')} on {getattr(model, 'name', '')}: {len(points)} positions"
    report.write_report(args.out, "diagnose", title, table(rows), {"points": points, "rows": rows},
                        lambda path: plot(rows, path, title))
