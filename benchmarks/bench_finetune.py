"""What a dLLM trained on its own rollouts keeps on held-out prompts (issue 17), on the tiny world.

    python benchmarks/bench_finetune.py run --rm exact --out outputs/bench_finetune [--seeds 0 1 2]
    python benchmarks/bench_finetune.py run --rm imperfect --out outputs/bench_finetune
    python benchmarks/bench_finetune.py report outputs/bench_finetune

``run`` trains the tiny world's dLLM (full fine-tuning, AdamW) on the training prompts
(``tinyworld.TRAIN_PROMPTS``: subjects ``prompts.jsonl`` leaves out) for each training recipe and
seed, every recipe with the same training budget in dLLM forward-equivalents (rollouts and
updates; ``GuidedFineTuner(budget=...)``), then evaluates the base and every trained model on the
held-out ``prompts.jsonl``: unguided at K=4 (Top@1 and Avg@N by the training reward model, the
oracle of Top@1, validity of Top@1) and guided by EntRGi (K=4, M=1). Training seed s is
evaluated with sampling seed s; the base with seeds 0, 1, 2. ``report`` prints the tables, mean
+- SEM over seeds, and when the training cost is repaid: the cost of the base's cheapest
test-time method reaching the trained model's unguided Top@1 (Best-of-N, log-linear between
the K measured, or EntRGi K=4), per prompt, against the trained model's own, and the number of
prompts after which the difference pays for the training. Several ``run`` processes (one per reward model) can share a machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

# name -> (rollout strategy, fine-tuner settings); all at the same budget, the ELBO estimator and
# lr 1e-4 (chosen on training seed 100 with the exact RM, never on the reported seeds)
ESTIMATOR = dict(estimator="elbo", mc_samples=1)
RECIPES = {
    "NoGuidance + grpo": (None, dict(objective="grpo", kl_weight=0.04, clip=0.2, **ESTIMATOR)),
    "NoGuidance + rwr": (None, dict(objective="rwr", weights="soft", beta=0.1, **ESTIMATOR)),
    "EntRGi + sft": ("entrgi", dict(objective="sft", **ESTIMATOR)),
    "EntRGi + rwr": ("entrgi", dict(objective="rwr", weights="soft", beta=0.1, **ESTIMATOR)),
    "SMC + Expectation + sft": ("smc", dict(objective="sft", **ESTIMATOR)),
}
RMS = {"exact": "rm_path", "imperfect": "rm_imperfect_path"}
BON_K = (4, 8, 16, 32)


def strategy(kind):
    from guidance import SMC, EntRGi, Expectation

    if kind == "entrgi":
        return EntRGi(steps=1)
    if kind == "smc":
        return SMC(Expectation(steps=1))
    return None


def sampling(seed: int, k: int = 4):
    from entrgi_core import DenoiseConfig

    return DenoiseConfig(steps=32, max_new_tokens=32, num_samples=k, temperature=0.7, top_p=0.95, alg="entropy",
                         seed=seed)


def evaluate(dlm, rm, seed: int, guided: bool, k: int = 4) -> dict:
    from entrgi_core import generate, tinyworld
    from guidance import EntRGi

    items = [json.loads(x) for x in tinyworld.PROMPTS.read_text().splitlines() if x]
    res = generate(dlm, [it["prompt"] for it in items], reward=rm, guidance=EntRGi(steps=1) if guided else None,
                   config=sampling(seed, k), prompt_ids=[it["id"] for it in items],
                   judges=[tinyworld.OracleJudge(), tinyworld.ValidityJudge()])
    pick = res.best_index[:, None]
    return {"top1": float(res.best_reward.mean()), "avg": float(res.avg_reward.mean()),
            "oracle": float(res.judge_scores["oracle"].gather(1, pick).mean()),
            "valid": float(res.judge_scores["valid"].gather(1, pick).mean()),
            "fwd_eq": sum(res.compute["forward_equivalents"]) / len(items)}


def train(rm_name: str, recipe: str, seed: int, budget: float, lr: float, out: Path) -> dict:
    import lightning as L

    from entrgi_core import MaskedLM, tinyworld
    from entrgi_core.data import PromptDataModule
    from entrgi_core.training.finetune import GuidedFineTuner
    from entrgi_core.training.outputs import FitOutputs
    from rewards import HFRewardModel

    make, settings = RECIPES[recipe]
    dlm = MaskedLM(str(tinyworld.dlm_path()))
    rm = HFRewardModel(str(getattr(tinyworld, RMS[rm_name])()))
    module = GuidedFineTuner(dlm, rm, strategy(make), sampling(seed),
                             lr=lr, budget=budget, judges=[tinyworld.OracleJudge()], **settings)
    dm = PromptDataModule(path=str(tinyworld.TRAIN_PROMPTS), id_field="id", batch_size=8, shuffle_seed=seed)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=10_000, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, gradient_clip_val=1.0,
                        callbacks=[FitOutputs(str(out), overwrite=True)])
    started = time.perf_counter()
    trainer.fit(module, dm)
    return {"steps": trainer.global_step, "train_fwd_eq": module.spent, "train_seconds": time.perf_counter() - started,
            "model": str(out / "model")}


def run(args) -> None:
    from entrgi_core import MaskedLM, tinyworld
    from rewards import HFRewardModel

    out = args.out / args.rm
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = {(r["recipe"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())} \
        if results.exists() else set()
    rm = HFRewardModel(str(getattr(tinyworld, RMS[args.rm])()))

    def write(row):
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    base = MaskedLM(str(tinyworld.dlm_path()))
    for seed in args.seeds:
        if ("base", seed) not in done:
            row = {"recipe": "base", "seed": seed, "rm": args.rm, "steps": 0, "train_fwd_eq": 0.0,
                   "unguided": evaluate(base, rm, seed, False), "guided": evaluate(base, rm, seed, True),
                   "bon": {k: evaluate(base, rm, seed, False, k) for k in BON_K}}
            write(row)
    for recipe in args.recipes:
        for seed in args.seeds:
            if (recipe, seed) in done:
                continue
            where = out / f"{recipe.replace(' + ', '_').replace(' ', '')}-seed{seed}"
            info = train(args.rm, recipe, seed, args.budget, args.lr, where)
            trained = MaskedLM(info["model"])
            write({"recipe": recipe, "seed": seed, "rm": args.rm, **info,
                   "unguided": evaluate(trained, rm, seed, False), "guided": evaluate(trained, rm, seed, True)})


def mean_sem(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def pm(xs: list[float]) -> str:
    m, s = mean_sem(xs)
    return f"{m:+.3f} +- {s:.3f}"


def bon_cost_for(bon: dict, top1: float) -> float | None:
    """fwd-eq per prompt at which the base's Best-of-N reaches ``top1`` (log-linear in K between
    the measured K); None when beyond the largest K, 0 below the smallest."""
    pts = sorted((v["fwd_eq"], v["top1"]) for v in bon.values())
    if top1 <= pts[0][1]:
        return pts[0][0]
    for (c0, r0), (c1, r1) in zip(pts, pts[1:]):
        if r0 <= top1 <= r1 and r1 > r0:
            return math.exp(math.log(c0) + (top1 - r0) / (r1 - r0) * (math.log(c1) - math.log(c0)))
    return None


def report(args) -> None:
    for rm_dir in sorted(p for p in args.out.iterdir() if (p / "results.jsonl").exists()):
        rows = [json.loads(x) for x in (rm_dir / "results.jsonl").read_text().splitlines() if x]
        recipes = list(dict.fromkeys(r["recipe"] for r in rows))
        seeds = sorted({r["seed"] for r in rows})
        print(f"\ntiny world, {rm_dir.name} RM: trained on {8} training prompts, evaluated on the 32 held-out prompts "
              f"(T=32, L=32, K=4), seeds {seeds}, mean +- SEM")
        head = (f"{'model':<26} {'train fwd-eq':>12} {'steps':>5}  {'unguided Top@1':>15}  {'Avg@4':>15}  "
                f"{'oracle of Top@1':>15}  {'valid':>5}  {'EntRGi K=4 Top@1':>16}  {'its oracle':>15}")
        print(head)
        print("-" * len(head))
        for recipe in recipes:
            rs = [r for r in rows if r["recipe"] == recipe]
            u, g = [r["unguided"] for r in rs], [r["guided"] for r in rs]
            print(f"{recipe:<26} {sum(r['train_fwd_eq'] for r in rs) / len(rs):>12.0f} "
                  f"{sum(r['steps'] for r in rs) / len(rs):>5.0f}  {pm([x['top1'] for x in u]):>15}  "
                  f"{pm([x['avg'] for x in u]):>15}  {pm([x['oracle'] for x in u]):>15}  "
                  f"{sum(x['valid'] for x in u) / len(u):>5.2f}  {pm([x['top1'] for x in g]):>16}  "
                  f"{pm([x['oracle'] for x in g]):>15}")
        base = [r for r in rows if r["recipe"] == "base"]
        if not base:
            continue
        bon = {k: {"fwd_eq": sum(b["bon"][k]["fwd_eq"] for b in base) / len(base),
                   "top1": sum(b["bon"][k]["top1"] for b in base) / len(base)} for k in base[0]["bon"]}
        print("\nbase Best-of-N on the held-out prompts: " + ", ".join(
            f"K={k} {v['top1']:+.3f} at {v['fwd_eq']:.0f}" for k, v in bon.items()))
        g = sum(b["guided"]["top1"] for b in base) / len(base)
        gc = sum(b["guided"]["fwd_eq"] for b in base) / len(base)
        print(f"base EntRGi K=4: {g:+.3f} at {gc:.0f} fwd-eq / prompt")
        print(f"\n{'model':<26} {'unguided Top@1':>14} {'fwd-eq/prompt':>13} {'base, equal':>14} "
              f"{'saved/prompt':>12} {'repaid after':>14}")
        for recipe in recipes[1:]:
            rs = [r for r in rows if r["recipe"] == recipe]
            top1 = sum(r["unguided"]["top1"] for r in rs) / len(rs)
            own = sum(r["unguided"]["fwd_eq"] for r in rs) / len(rs)
            cost = sum(r["train_fwd_eq"] for r in rs) / len(rs)
            options = [c for c in (bon_cost_for(bon, top1), gc if g >= top1 else None) if c is not None]
            equal = min(options) if options else None                 # the base's cheapest way to that Top@1
            if equal is None:
                print(f"{recipe:<26} {top1:>+14.3f} {own:>13.0f} {'> K=' + str(max(BON_K)):>14} {'':>12} {'':>14}")
                continue
            saved = equal - own
            if saved <= 0.5:                                  # no better than the base's Best-of-4
                print(f"{recipe:<26} {top1:>+14.3f} {own:>13.0f} {'<= base K=4':>14} {0:>12.0f} {'never':>14}")
                continue
            when = f"{cost / saved:,.0f} prompts"
            print(f"{recipe:<26} {top1:>+14.3f} {own:>13.0f} {equal:>14.0f} {saved:>12.0f} {when:>14}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--rm", choices=list(RMS), required=True)
    r.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--budget", type=float, default=25_000.0, help="training forward-equivalents per run")
    r.add_argument("--lr", type=float, default=1e-4)
    r.add_argument("--out", type=Path, default=Path("outputs/bench_finetune"))
    p = sub.add_parser("report")
    p.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run(args) if args.cmd == "run" else report(args)


if __name__ == "__main__":
    main()
