"""`make demo`: guidance on the built-in tiny world, on a CPU, in a few minutes.

Runs trainer.predict over the 32 built-in subject prompts (K=4 samples each) for Best-of-N
(no guidance), Expectation, APS (straight-through) and EntRGi, prints one table, and writes the
predictions and a plot to outputs/demo/.

    python -m entrgi_core.tools.demo [--out outputs/demo] [--seed 0]
"""
from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch

from entrgi_core import tinyworld
from entrgi_core.models import MaskedLM
from entrgi_core.tinyworld.evaluate import demo_config, run_methods
from entrgi_core.tools import report
from entrgi_core.tools.report import pm
from rewards import HFRewardModel


def table(results) -> str:
    head = ["method", "Top@1 reward", "Avg@N reward", "oracle of Top@1", "valid % (all / Top@1)", "seconds"]
    rows = [[r.method, pm(r.top1_reward), pm(r.avg_reward), pm(r.top1_oracle),
             f"{100 * r.valid:.0f} / {100 * r.top1_valid:.0f}", f"{r.seconds:.1f}"] for r in results]
    return report.table(head, rows)


def plot(results, path: Path) -> None:
    fig, (left, right) = report.figure(2, width=5.5, height=4)
    names = [r.method for r in results]
    x = range(len(results))
    left.bar([i - 0.2 for i in x], [r.top1_reward for r in results], width=0.4, label="Top@1 reward (RM)")
    left.bar([i + 0.2 for i in x], [r.top1_oracle for r in results], width=0.4, label="oracle of Top@1")
    left.set_xticks(list(x), names)
    left.axhline(0, color="grey", lw=0.5)
    left.set_title("reward and true sentiment by method")
    left.legend()
    for r in results:
        if r.weight_by_step:
            steps = sorted(r.weight_by_step)
            right.plot(steps, [r.weight_by_step[s] for s in steps], label=r.method)
    right.set_xlabel("denoising step")
    right.set_ylabel("mean gate weight w (hard share)")
    right.set_ylim(-0.05, 1.05)
    right.set_title("EntRGi's entropy weight by step (APS = 1, Expectation = 0)")
    right.legend()
    report.save_figure(fig, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("outputs/demo"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    dlm = MaskedLM(str(tinyworld.dlm_path()))
    rm = HFRewardModel(str(tinyworld.rm_path()))
    args.out.mkdir(parents=True, exist_ok=True)
    results = run_methods(dlm, rm, tinyworld.PROMPTS, args.out, demo_config(args.seed))
    print()
    print(f"Tiny world, 32 prompts x K=4, T=32 steps, guidance M=3, eta=0.5, tau=0.7 (seed {args.seed}).")
    print("The reward model (RM) was trained to predict the oracle sentiment of valid reviews; guidance")
    print("steers the diffusion LM towards high RM reward. 'oracle of Top@1' is the true sentiment of")
    print("the best-of-K response (-1 when it is not a valid review): where RM reward rises but the")
    print("oracle does not, guidance is exploiting the reward model.")
    print()
    print(table(results))
    plot(results, args.out / "demo.png")
    print()
    print(f"predictions: {args.out}/<method>/predictions.jsonl   plot: {args.out}/demo.png")
    small_frontier(dlm, rm, args.out, args.seed)


def small_frontier(dlm, rm, out: Path, seed: int, prompts: int = 8) -> None:
    """A small version of `entrgi compare`: reward against compute, Best-of-N as the baseline."""
    from entrgi_core.data import PromptDataModule
    from entrgi_core.tools.compare import aggregate, default_methods, plot, run_point
    from entrgi_core.tools.compare import table as frontier_table

    items = PromptDataModule(path=str(tinyworld.PROMPTS), id_field="id").items[:prompts]
    methods = default_methods(budgets=(4, 8, 16), guided_k=(4,), guided_m=(1, 3), smc_k=(4,))
    judges = [tinyworld.OracleJudge(), tinyworld.ValidityJudge()]
    rows = aggregate([run_point(dlm, rm, items, demo_config(seed), m, seed, 8, judges) for m in methods])
    print()
    print(f"Reward against compute ({prompts} prompts, seed {seed}; the full sweep with seeds: `entrgi compare`).")
    print("A guided method beats Best-of-N only where it is above the Best-of-N row of equal cost.")
    print()
    print(frontier_table(rows))
    plot(rows, out / "frontier.png", f"tiny world, {prompts} prompts, seed {seed}")
    print(f"\nplot: {out}/frontier.png")


if __name__ == "__main__":
    main()
