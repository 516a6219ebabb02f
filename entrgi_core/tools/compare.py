"""``entrgi compare``: reward against compute, the frontier test-time methods are chosen by.

    entrgi compare [--config configs/tiny.yaml] [--seeds 0 1 2] [--budgets 4 8 16 32 64]
                   [--smc-k 2 4 8 16 32] [--only Best-of-N SMC] [--out outputs/compare]
                   [--kl 0 0.01 0.1 1] [--strengths constant linear masked]
                   [--decodings steps threshold entropy_bound threshold+cache entropy_bound+cache]
                   [--cache-block 8] [any `entrgi predict` override, e.g. --reward.init_args.path P]

Sweeps Best-of-N over K in ``--budgets``, each guided method over K and M (and the guided-step
schedules), and SMC with each proposal over K particles in ``--smc-k``, over ``--seeds``, on the
config's prompts (any config: real models included); ``--only`` keeps the curves whose name
starts with one of its words (a word naming a curve exactly keeps that curve alone). For
every point it records per prompt the Top@1 and Avg@N reward, seconds and forward-equivalents
(``entrgi_core.result.account``), and every judge's score of the Top@1 response (``--judges``,
as for ``entrgi predict``; on the tiny world's prompts the oracle and validity by default).
``--select`` (as for ``entrgi predict``) picks Top@1 by another reward, e.g. a verifier;
``--metric NAME`` reads the matched tables and plots by a judge instead of the reward.
``--kl`` and ``--strengths`` run each gated curve (EntRGi, Expectation, APS) at each trust region
beta and under each strength schedule (``constant``, ``linear``: ``LinearDecay()``, ``masked``:
``MaskedShare()``). ``--decodings`` runs every curve under each decoding: ``steps`` (the config's own schedule),
``threshold`` and ``entropy_bound`` (``Threshold(0.9)``, ``EntropyBound(0.1)``), and the same with the dual block KV cache (``+cache``, blocks of ``--cache-block``); the tables
then show tokens per forward and read each decoding's curves at matched compute against its own
Best-of-N, in forward-equivalents and in seconds. Writes ``frontier.json`` (every run),
``runs.jsonl`` (each point as it finishes: run the same command again and a killed sweep resumes
there; ``--overwrite`` starts over), ``frontier.txt`` (mean +- SEM over seeds, the table printed,
rewritten after every seed) and ``frontier.png`` (reward against
cost, log scale), and ``frontier-<judge>.png`` read by each judge. With judges, a table (and plot
panels) of each guided point's gain over Best-of-N at the same K under the guiding reward and
under each judge, side by side; a judge that did not rise where the reward did is flagged "!".
``--seconds-from DIR`` reads every point's seconds per prompt from another sweep's ``runs.jsonl``
(the same labels, timed apart on a quiet machine, e.g. on fewer prompts) instead of this sweep's
own: a long sweep that shared its machine keeps exact forward-equivalents and gets usable seconds.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

from entrgi_core.config import DenoiseConfig
from entrgi_core.errors import InputError
from entrgi_core.jsonl import append_lines, read_jsonl, write_atomic
from entrgi_core.plan import Plan
from entrgi_core.sampler import generate
from entrgi_core.schedules import EntropyBound, Threshold
from entrgi_core.tools import report
from entrgi_core.tools.report import mean_sem, pm

BUDGETS = (4, 8, 16, 32, 64)
SMC_K = (2, 4, 8, 16, 32)
# SMC settings of the sweep: SMC's defaults (adaptive tempering), and one curve at the fixed beta
# chosen on seeds 100 and 101 (prompts 16-31) of the tiny world, never on the reported seeds
# (docs/results.md, "SMC with gradient proposals")
SMC_SETTINGS = dict(ess_threshold=0.5, potential="difference", intermediate="relaxed", every=1)
SMC_FIXED_BETA = 0.03


DECODINGS = {                 # sampler settings of each decoding, over the config's own
    "steps": {},
    "threshold": {"schedule": Threshold()},
    "entropy_bound": {"schedule": EntropyBound()},
    "threshold+cache": {"schedule": Threshold(), "cache": "dual"},
    "entropy_bound+cache": {"schedule": EntropyBound(), "cache": "dual"},
}


@dataclass(frozen=True)
class Method:
    """One point of the sweep: a strategy factory at K samples, under one decoding."""

    family: str                  # the curve it belongs to
    label: str                   # this point
    k: int
    make: object = field(compare=False)   # () -> Guidance | None
    decoding: str = "steps"

    def under(self, decoding: str) -> "Method":
        """This point under another decoding (its curve and label say which)."""
        if decoding == "steps":
            return self
        return Method(f"{self.family} [{decoding}]", f"{self.label} [{decoding}]", self.k, self.make, decoding)


STRENGTHS = {"constant": None, "linear": "LinearDecay", "masked": "MaskedShare"}   # --strengths: name -> class


def _variant(kl: float, strength: str) -> tuple[str, dict]:
    """The curve-name suffix and the strategy arguments of one trust-region / strength setting."""
    import guidance.strength as strengths

    suffix, kwargs = "", {}
    if kl:
        suffix, kwargs["kl"] = suffix + f" kl={kl:g}", kl
    if STRENGTHS[strength] is not None:
        suffix += f" {STRENGTHS[strength]}"
        kwargs["strength"] = getattr(strengths, STRENGTHS[strength])()
    return suffix, kwargs


def default_methods(budgets=BUDGETS, guided_k=(4, 8), guided_m=(1, 3), smc_k=SMC_K, kls=(0.0,),
                    strengths=("constant",)) -> list[Method]:
    from guidance import SMC, EntRGi, Expectation, StraightThrough

    out = [Method("Best-of-N", f"BoN K={k}", k, lambda: None) for k in budgets]
    for name, cls in (("EntRGi", EntRGi), ("Expectation", Expectation), ("APS", StraightThrough)):
        for kl in kls:
            for strength in strengths:
                suffix, kwargs = _variant(kl, strength)
                for k in guided_k:
                    for m in guided_m:
                        out.append(Method(f"{name} M={m}{suffix}", f"{name} K={k} M={m}{suffix}", k,
                                          lambda cls=cls, m=m, kw=kwargs: cls(steps=m, **kw)))
    for k in guided_k:
        out.append(Method("EntRGi M=3 every 2nd step", f"EntRGi K={k} M=3 every=2", k,
                          lambda: EntRGi(steps=3, every=2)))
        out.append(Method("EntRGi M=3 first half", f"EntRGi K={k} M=3 stop=0.5", k, lambda: EntRGi(steps=3, stop=0.5)))
    for name, cls in (("none", None), ("Expectation", Expectation), ("APS", StraightThrough), ("EntRGi", EntRGi)):
        family = "SMC (FK, no proposal)" if cls is None else f"SMC + {name} M=1"
        for k in smc_k:
            out.append(Method(family, f"SMC {name} K={k}", k,
                              lambda cls=cls: SMC(cls(steps=1) if cls else None, **SMC_SETTINGS)))
    for k in smc_k:
        out.append(Method(f"SMC + Expectation M=1 beta={SMC_FIXED_BETA}",
                          f"SMC Expectation K={k} beta={SMC_FIXED_BETA}", k,
                          lambda: SMC(Expectation(steps=1), beta=SMC_FIXED_BETA, **SMC_SETTINGS)))
    return out


def keeps(words: list[str], family: str, families: set[str]) -> bool:
    """``--only``: a word naming a curve exactly keeps that curve alone (``"EntRGi M=3"``, not its
    ``every 2nd step`` variant); any other word keeps every curve whose name starts with it."""
    return family in words or any(family.startswith(w) for w in words if w not in families)


def decoding_config(base: DenoiseConfig, decoding: str, cache_block: int) -> DenoiseConfig:
    """``base`` under a decoding of ``DECODINGS`` (a cache adds blocks of ``cache_block``)."""
    over = dict(DECODINGS[decoding])
    if "cache" in over:
        over["block_length"] = cache_block
    return replace(base, **over)


def run_point(model, reward, items: list[dict], base: DenoiseConfig, method: Method, seed: int, batch_size: int,
              judges=(), cache_block: int = 8, select=None) -> dict:
    """One method at one seed over all prompts: per-prompt means (Top@1 picked by ``select``,
    default the reward), and each judge's score of Top@1 (``j:NAME``)."""
    cfg = replace(decoding_config(base, method.decoding, cache_block), num_samples=method.k, seed=seed)
    strategy = method.make()
    sums = {"top1": 0.0, "avg": 0.0, "seconds": 0.0, "forward_equivalents": 0.0, "tpf": 0.0}
    binary = {j.name: True for j in judges}
    for i in range(0, len(items), batch_size):
        chunk = items[i: i + batch_size]
        res = generate(model, [it["prompt"] for it in chunk], reward=reward, guidance=strategy, config=cfg,
                       prompt_ids=[it["id"] for it in chunk], select=select, judges=judges)
        sums["top1"] += float(res.best_reward.sum())
        sums["avg"] += float(res.avg_reward.sum())
        sums["seconds"] += res.seconds
        sums["forward_equivalents"] += sum(res.compute["forward_equivalents"])
        sums["tpf"] += sum(res.tokens_per_forward)
        for name, scores in res.judge_scores.items():
            sums[f"j:{name}"] = sums.get(f"j:{name}", 0.0) + float(scores.gather(1, res.best_index[:, None]).sum())
            binary[name] &= bool(((scores == 0) | (scores == 1)).all())
    out = {key: value / len(items) for key, value in sums.items()}
    return {"family": method.family, "label": method.label, "k": method.k, "decoding": method.decoding, "seed": seed,
            "binary": [name for name, b in binary.items() if b], **out}


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean and standard error over seeds of each point."""
    by = {}
    for r in runs:
        by.setdefault((r["family"], r["label"], r["k"], r.get("decoding", "steps")), []).append(r)
    rows = []
    for (family, label, k, decoding), rs in by.items():
        row = {"family": family, "label": label, "k": k, "decoding": decoding, "seeds": len(rs),
               "binary": sorted(set.intersection(*(set(r.get("binary", [])) for r in rs)))}
        judged = [key for key in rs[0] if key.startswith("j:")]
        for key in ("top1", "avg", "seconds", "forward_equivalents", "tpf", *judged):
            if key in rs[0]:
                row[key], row[key + "_sem"] = mean_sem([r[key] for r in rs])
        rows.append(row)
    return rows


def judges_of(rows: list[dict]) -> list[str]:
    """The judges' names, in the order they were given."""
    return [key[2:] for key in rows[0] if key.startswith("j:") and not key.endswith("_sem")]


def _judge_cell(r: dict, name: str) -> str:
    """A verifier (0/1 scores) shows the share of Top@1 it accepts; any other judge mean +- SEM."""
    if name in r["binary"]:
        return f"{r['j:' + name]:.2f}"
    return pm(r["j:" + name], r[f"j:{name}_sem"] if r["seeds"] > 1 else None)


def table(rows: list[dict]) -> str:
    judges = judges_of(rows)
    several = len({r.get("decoding", "steps") for r in rows}) > 1
    head = ["method", "fwd-eq / prompt", "s / prompt"] + (["tok / fwd"] if several else []) + \
        ["Top@1 reward", "Avg@N reward"] + [f"{n} Top@1" if n in rows[0]["binary"] else f"{n} of Top@1" for n in judges]
    cell = lambda r, k: pm(r[k], r[k + "_sem"] if r["seeds"] > 1 else None)  # noqa: E731
    body = [[r["label"], f"{r['forward_equivalents']:.0f}", f"{r['seconds']:.2f}"] +
            ([f"{r['tpf']:.2f}"] if several else []) + [cell(r, "top1"), cell(r, "avg")] +
            [_judge_cell(r, n) for n in judges] for r in rows]
    return report.table(head, body)


def gains(runs: list[dict]) -> list[dict]:
    """Each guided point's gain over Best-of-N at the same K (same decoding), under the guiding
    reward (Top@1) and under each judge (its score of Top@1): mean +- SEM over seeds of the
    per-seed differences (paired: the same seed, the same prompts). ``flags`` names the judges
    whose gain is not positive where the reward's is: the reward rose and that judge did not (a
    verifier that Best-of-N already passes on every prompt cannot rise: only its fall is flagged)."""
    bon = {(r.get("decoding", "steps"), r["k"], r["seed"]): r for r in runs if r["family"].startswith("Best-of-N")}
    judged = [key for key in runs[0] if key.startswith("j:")] if runs else []
    by = {}
    for r in runs:
        base = bon.get((r.get("decoding", "steps"), r["k"], r["seed"]))
        if r["family"].startswith("Best-of-N") or base is None:
            continue
        by.setdefault((r["family"], r["label"], r["k"], r.get("decoding", "steps")), []).append((r, base))
    out = []
    for (family, label, k, decoding), pairs in by.items():
        row = {"family": family, "label": label, "k": k, "decoding": decoding, "seeds": len(pairs)}
        for key in ("top1", *judged):
            row["gain:" + key], row["gain:" + key + "_sem"] = mean_sem([r[key] - b[key] for r, b in pairs])
        ceiling = {key for key in judged if key[2:] in pairs[0][1].get("binary", [])
                   and all(b[key] == 1 for _, b in pairs)}                # a verifier Best-of-N already passes
        row["flags"] = [key[2:] for key in judged if row["gain:top1"] > 0 and row["gain:" + key] <= 0
                        and not (key in ceiling and row["gain:" + key] == 0)]
        out.append(row)
    return out


def gain_table(rows: list[dict]) -> str:
    """The gains of ``gains`` side by side: the guiding reward's, then each judge's ("!" marks a
    judge that did not rise where the reward did)."""
    if not rows:
        return ""
    judges = [key[len("gain:j:"):] for key in rows[0] if key.startswith("gain:j:") and not key.endswith("_sem")]
    if not judges:
        return ""
    cell = lambda r, k: pm(r[k], r[k + "_sem"] if r["seeds"] > 1 else None)  # noqa: E731
    body = [[r["label"], cell(r, "gain:top1")] +
            [cell(r, f"gain:j:{n}") + (" !" if n in r["flags"] else "") for n in judges] for r in rows]
    head = ["method", "guide gain (RM Top@1)"] + [f"{n} gain" for n in judges]
    flagged = [r["label"] for r in rows if r["flags"]]
    note = ("Gain over Best-of-N at the same K (paired by seed), under the guiding reward and under each judge. "
            "'!': the reward rose and this judge did not (the guide's gain is not the judges').")
    tail = f"\nflagged: {', '.join(flagged)}" if flagged else "\nflagged: none"
    return note + "\n" + report.table(head, body) + tail


def matched(rows: list[dict], cost: str = "forward_equivalents", metric: str = "reward") -> str:
    """At each Best-of-N budget, every other curve's best Top@1 (by ``metric``: the reward or a
    judge's name) among its points that cost no more (``cost``: forward-equivalents or seconds),
    with the first non-verifier judge's score of that point in brackets: the matched-compute
    reading of the frontier, one table per decoding (each against its own Best-of-N). "-" where a
    curve has no point that cheap."""
    out = []
    for decoding in dict.fromkeys(r.get("decoding", "steps") for r in rows):
        mine = [r for r in rows if r.get("decoding", "steps") == decoding]
        text = _matched_one(mine, cost, metric)
        if text:
            out.append(text if decoding == "steps" else f"[{decoding}] " + text)
    return "\n\n".join(out)


def _matched_one(rows: list[dict], cost: str, metric: str) -> str:
    bon = sorted((r for r in rows if r["family"].startswith("Best-of-N")), key=lambda r: r[cost])
    families = [f for f in dict.fromkeys(r["family"] for r in rows) if not f.startswith("Best-of-N")]
    if not bon or not families:
        return ""
    key = "top1" if metric == "reward" else f"j:{metric}"
    judge = next((n for n in judges_of(rows) if n not in rows[0]["binary"] and f"j:{n}" != key), None)
    unit = "fwd-eq" if cost == "forward_equivalents" else "s"

    def cell(r):
        return f"{r[key]:+.3f}" + (f" ({r['j:' + judge]:+.3f})" if judge else "") + f" [K={r['k']}]"

    body = []
    for b in bon:
        cells = [f"{b[cost]:.{0 if unit == 'fwd-eq' else 2}f} ({b['label'].split(' [')[0]})", cell(b)]
        for fam in families:
            fits = [r for r in rows if r["family"] == fam and r[cost] <= b[cost]]
            cells.append(cell(max(fits, key=lambda r: r[key])) if fits else "-")
        body.append(cells)
    what = "Top@1" if metric == "reward" else f"{metric} of Top@1"
    note = f"{what}{f' ({judge})' if judge else ''} of each curve's best point costing at most the budget ({unit}), " \
           "K in brackets"
    names = [f.split(" [")[0] for f in families]
    return note + "\n" + report.table([f"budget ({unit})", "Best-of-N"] + names, body, align="left")


def plot(rows: list[dict], path: Path, title: str, metric: str = "reward", gain_rows: list[dict] = ()) -> None:
    """Reward (or a judge's score, ``metric``) against forward-equivalents and seconds, log x axes
    labelled in plain numbers; one colour (and marker) per curve, Best-of-N in black. With judges,
    one more panel per judge: each guided point's judge gain against its guide gain over
    Best-of-N at the same K (``gains``); points right of 0 and on or below 0 are flagged ones."""
    import matplotlib.ticker as ticker
    from matplotlib import colormaps

    key, label = ("top1", "Top@1 reward (RM)") if metric == "reward" else (f"j:{metric}", f"{metric} of Top@1")
    panels = [("forward_equivalents", key, label), ("seconds", key, label),
              ("forward_equivalents", "avg", "Avg@N reward (RM)")]
    panels += [("forward_equivalents", f"j:{n}", f"{n} of Top@1 (judge)") for n in judges_of(rows)
               if f"j:{n}" != key and n not in rows[0]["binary"]][:1]
    judged = [n for n in judges_of(rows)] if gain_rows else []
    fig, axes = report.figure(len(panels) + len(judged))
    families = list(dict.fromkeys(r["family"] for r in rows))
    others = [f for f in families if not f.startswith("Best-of-N")]
    colours = colormaps["tab20"].resampled(max(len(others), 1))
    style = {fam: dict(color=colours(i), marker="os^vD<>ph*"[i % 10], lw=1) for i, fam in enumerate(others)}
    bons = [f for f in families if f.startswith("Best-of-N")]
    for i, fam in enumerate(bons):                                   # Best-of-N in black, a line style per decoding
        style[fam] = dict(color="black", marker="o", lw=2, ls=("-", "--", ":", "-.", (0, (5, 1)))[i % 5])
    for ax, (x, y, ylabel) in zip(axes, panels):
        for fam in families:
            pts = sorted((r for r in rows if r["family"] == fam), key=lambda r: r[x])
            ax.errorbar([r[x] for r in pts], [r[y] for r in pts], yerr=[r[y + "_sem"] for r in pts], capsize=2,
                        label=fam, ms=4, **style[fam])
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("dLLM forward-equivalents per prompt" if x == "forward_equivalents" else "seconds per prompt")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax, name in zip(axes[len(panels):], judged):                # guide gain against judge gain
        for fam in others:
            pts = [g for g in gain_rows if g["family"] == fam]
            if pts:
                ax.errorbar([g["gain:top1"] for g in pts], [g[f"gain:j:{name}"] for g in pts],
                            xerr=[g["gain:top1_sem"] for g in pts], yerr=[g[f"gain:j:{name}_sem"] for g in pts],
                            capsize=2, ls="none", ms=5, label=fam, color=style[fam]["color"],
                            marker=style[fam]["marker"])
        ax.axhline(0, color="black", lw=0.8)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("guide gain over Best-of-N, same K (RM Top@1)")
        ax.set_ylabel(f"{name} gain over Best-of-N, same K")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    report.save_figure(fig, path, title)


def load(config_args: list[str]):
    """The models, prompts and sampler settings of an ``entrgi predict`` configuration."""
    from entrgi_core.data import PromptDataModule
    from entrgi_core.lightning_cli import EntrgiCLI, _Parser
    from entrgi_core.module import GuidedDenoiser

    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)                 # no "GPU available" banner from the unused Trainer
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cli = EntrgiCLI(GuidedDenoiser, PromptDataModule, run=False, args=config_args, save_config_callback=None,
                            auto_configure_optimizers=False, parser_class=_Parser,
                            parser_kwargs={"default_env": False}, subclass_mode_model=False)
    finally:
        quiet.setLevel(level)
    module, dm = cli.model, cli.datamodule
    if module.reward is None:
        raise InputError("entrgi compare: the configuration has no reward model (--reward ...)")
    return module, dm


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="entrgi compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None, help="an entrgi predict config (repeatable)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="Best-of-N sample counts K")
    ap.add_argument("--guided-k", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--guided-m", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--smc-k", type=int, nargs="*", default=list(SMC_K), help="SMC particle counts (none: no SMC)")
    ap.add_argument("--only", nargs="+", default=None, metavar="CURVE",
                    help="keep the curves named exactly so, or else starting with one of these "
                         "(e.g. Best-of-N SMC)")
    ap.add_argument("--kl", type=float, nargs="+", default=[0.0],
                    help="each gated curve at each trust region beta (guidance kl=...; 0: none)")
    ap.add_argument("--strengths", nargs="+", default=["constant"], choices=list(STRENGTHS),
                    help="each gated curve under each strength schedule (guidance.strength)")
    ap.add_argument("--prompts", type=int, default=None, help="use the first N prompts")
    ap.add_argument("--decodings", nargs="+", default=["steps"], choices=list(DECODINGS),
                    help="run every curve under each of these decodings")
    ap.add_argument("--cache-block", type=int, default=8, help="block length of the +cache decodings")
    ap.add_argument("--metric", default="reward",
                    help="what Top@1 is read by in the matched tables and plots: the reward, or a judge's name")
    ap.add_argument("--out", type=Path, default=Path("outputs/compare"))
    ap.add_argument("--overwrite", action="store_true",
                    help="start over in --out (by default a sweep resumes the points it finished there)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--seconds-from", type=Path, default=None, metavar="DIR",
                    help="take each point's seconds per prompt from the sweep in DIR (a quiet timing pass)")
    args, overrides = ap.parse_known_args(argv)
    for name in ("seeds", "budgets", "guided_k", "smc_k"):
        if any(v < (0 if name == "seeds" else 1) for v in getattr(args, name)):
            raise InputError(f"entrgi compare: --{name.replace('_', '-')} must be {'>= 0' if name == 'seeds' else '>= 1'}")
    if any(m < 0 for m in args.guided_m):
        raise InputError("entrgi compare: --guided-m must be >= 0")
    if args.prompts is not None and args.prompts < 1:
        raise InputError("entrgi compare: --prompts must be >= 1")
    if args.cache_block < 1:
        raise InputError("entrgi compare: --cache-block must be >= 1")
    if any(not (b >= 0 and math.isfinite(b)) for b in args.kl):
        raise InputError(f"entrgi compare: --kl must be finite numbers >= 0, got {args.kl}")
    methods = default_methods(args.budgets, args.guided_k, args.guided_m, args.smc_k, args.kl, args.strengths)
    if args.only:
        families = {m.family for m in methods}
        methods = [m for m in methods if keeps(args.only, m.family, families)]
        if not methods:
            families = sorted({m.family for m in default_methods(args.budgets, args.guided_k, args.guided_m, args.smc_k,
                                                                 args.kl, args.strengths)})
            raise InputError(f"entrgi compare: --only {' '.join(args.only)} keeps no curve; the curves are: "
                             f"{', '.join(families)}")
    methods = [m.under(d) for d in args.decodings for m in methods]
    if args.seconds_from is not None:                                # before the models load
        args.timings = timings(args.seconds_from, [m.label for m in methods])
    configs = args.config or ["configs/tiny.yaml"]
    config_args = [a for c in configs for a in ("--config", c)] + overrides
    module, dm = load(config_args)
    model, reward, base = module.model, module.reward, module.config
    for decoding in args.decodings:                                  # refuse a decoding the model cannot run now
        Plan.check(model, config=decoding_config(base, decoding, args.cache_block))
    items = dm.items[: args.prompts] if args.prompts else dm.items
    judges = list(module.judges) or default_judges(dm, items)
    if args.metric != "reward" and args.metric not in [j.name for j in judges]:
        raise InputError(f"entrgi compare: --metric {args.metric} is neither 'reward' nor a judge's name "
                         f"({[j.name for j in judges]})")
    sweep = {"setup": {k: v for k, v in module.run_config().items() if k not in ("method", "guidance")},
             "prompts": [it["id"] for it in items], "cache_block": args.cache_block}
    done = _resume(args.out, sweep, args.overwrite)
    runs, t0 = [], time.perf_counter()
    for n, seed in enumerate(args.seeds):
        new = False
        for method in methods:
            key = (method.label, seed, method.decoding)
            if key in done:
                runs.append(done[key])
                continue
            new = True
            runs.append(run_point(model, reward, items, base, method, seed, dm.batch_size, judges, args.cache_block,
                                  module.select))
            append_lines(args.out / RUNS, [runs[-1]])                # kept at once: a killed sweep resumes here
            print(f"[compare] seed {seed} {method.label}: Top@1 {runs[-1]['top1']:+.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
        if new or n == len(args.seeds) - 1:                          # after every seed: a partial report
            _report(args, runs, judges, model, reward, module, base, items)


RUNS = "runs.jsonl"     # every finished point of the sweep, one JSON line each
SWEEP = "sweep.json"    # what the points were measured on (models, judges, sampler, prompts)


def _resume(out: Path, sweep: dict, overwrite: bool) -> dict:
    """The points an earlier run of the same sweep finished in ``out`` ((label, seed, decoding) ->
    run); a directory holding another sweep is refused (nothing is changed) unless ``overwrite``."""
    out.mkdir(parents=True, exist_ok=True)
    path, runs = out / SWEEP, out / RUNS
    sweep = json.loads(json.dumps(sweep))                          # as it reads back
    if path.exists() and not overwrite:
        if json.loads(path.read_text()) != sweep:
            raise InputError(f"entrgi compare: {out} holds points of another sweep (other models, judges, sampler "
                             f"settings or prompts: {path}); nothing was changed. Choose another --out, or pass "
                             "--overwrite to start over.")
        return {(r["label"], r["seed"], r.get("decoding", "steps")): r for r in read_jsonl(runs)}
    runs.unlink(missing_ok=True)
    write_atomic(path, json.dumps(sweep, indent=2))
    return {}


def timings(folder: Path, labels: list[str]) -> dict:
    """label -> (mean, SEM) over its seeds of the seconds per prompt in ``folder``'s runs.jsonl
    (another sweep, timed apart); every label of ``labels`` must be there."""
    path = folder / RUNS
    if not path.is_file():
        raise InputError(f"entrgi compare: --seconds-from {folder} has no {RUNS} (the folder of an entrgi compare run)")
    by: dict = {}
    for r in read_jsonl(path):
        by.setdefault(r["label"], []).append(r["seconds"])
    missing = [label for label in labels if label not in by]
    if missing:
        raise InputError(f"entrgi compare: --seconds-from {folder} has no timing of {missing}; time the same points "
                         "there first")
    return {label: mean_sem(values) for label, values in by.items()}


def _report(args, runs, judges, model, reward, module, base, items) -> None:
    """frontier.json / .txt / .png (and one plot per judge) of the points measured so far."""
    rows, gain_rows = aggregate(runs), gains(runs)
    seeds = sorted({r["seed"] for r in runs})
    title = args.title or f"{getattr(model, 'name', '')} + {getattr(reward, 'name', '')}: {len(items)} prompts, " \
                          f"T={base.steps}, L={base.max_new_tokens}, seeds {seeds}"
    if getattr(args, "timings", None):
        for row in rows:
            row["seconds"], row["seconds_sem"] = args.timings[row["label"]]
        title += f"; seconds per prompt from {args.seconds_from}"
    if module.select is not None:
        title += f"; Top@1 selected by {module.select.name}"
    note = "judges only score the final responses: their work is evaluation, not in fwd-eq or seconds"
    text = table(rows) + "".join("\n\n" + m for m in (gain_table(gain_rows), matched(rows, metric=args.metric),
                                                      matched(rows, "seconds", args.metric)) if m)
    if judges:
        text += "\n\n" + note
    report.write_report(args.out, "frontier", title, text, {"runs": runs, "rows": rows, "gains": gain_rows},
                        lambda path: plot(rows, path, title, args.metric, gain_rows))
    for name in [j.name for j in judges]:                             # one plot read by each judge
        plot(rows, args.out / f"frontier-{name}.png", title, name, gain_rows)


def default_judges(dm, items: list[dict]) -> list:
    """The tiny world's oracle and validity, when the prompts are the tiny world's and no judges
    were given; none otherwise."""
    from entrgi_core import tinyworld

    own = {json.loads(x)["prompt"] for x in tinyworld.PROMPTS.read_text().splitlines() if x}
    if getattr(dm, "source", {}).get("dataset") is None and {it["prompt"] for it in items} <= own:
        return [tinyworld.OracleJudge(), tinyworld.ValidityJudge()]
    return []
