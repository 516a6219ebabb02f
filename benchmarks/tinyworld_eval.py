"""Honest evaluation on the tiny world: every method over 3 seeds x 64 prompts.

Prints mean +- standard error (over seeds) of Top@1 reward, Avg@N reward, the oracle sentiment
of the Top@1 response (-1 when invalid) and validity, plus the "reward hacking" gap per method:
(RM Top@1 gain over Best-of-N) - (oracle Top@1 gain over Best-of-N). Nothing here is tuned to
produce a ranking; report what comes out.

    python benchmarks/tinyworld_eval.py [--seeds 0 1 2] [--prompts 64] [--out outputs/tinyworld_eval]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from entrgi_core import tinyworld  # noqa: E402
from entrgi_core.models import MaskedLM  # noqa: E402
from entrgi_core.tinyworld.evaluate import demo_config, run_methods  # noqa: E402
from entrgi_core.tinyworld.grammar import SUBJECTS, prompt_for  # noqa: E402
from rewards import HFRewardModel  # noqa: E402


def mean_se(xs: list[float]) -> str:
    m = sum(xs) / len(xs)
    se = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else 0.0
    return f"{m:+.3f} +- {se:.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("outputs/tinyworld_eval"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    dlm, rm = MaskedLM(str(tinyworld.dlm_path())), HFRewardModel(str(tinyworld.rm_path()))
    args.out.mkdir(parents=True, exist_ok=True)
    prompts = args.out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"e{i:03d}", "prompt": prompt_for(SUBJECTS[i % len(SUBJECTS)])}) + "\n"
                               for i in range(args.prompts)))
    per_seed = {}
    for seed in args.seeds:
        for r in run_methods(dlm, rm, prompts, args.out / f"seed{seed}", demo_config(seed), progress=False):
            per_seed.setdefault(r.method, []).append(r)
    base = per_seed["Best-of-N"]
    print(f"Tiny world: {len(args.seeds)} seeds x {args.prompts} prompts, K=4, T=32, M=3, eta=0.5, tau=0.7; "
          "mean +- standard error over seeds")
    head = ["method", "Top@1 reward", "Avg@N reward", "oracle of Top@1", "valid (all)", "valid (Top@1)",
            "RM gain - oracle gain"]
    rows = []
    for method, rs in per_seed.items():
        gap = [(r.top1_reward - b.top1_reward) - (r.top1_oracle - b.top1_oracle) for r, b in zip(rs, base)]
        rows.append([method, mean_se([r.top1_reward for r in rs]), mean_se([r.avg_reward for r in rs]),
                     mean_se([r.top1_oracle for r in rs]), mean_se([r.valid for r in rs]),
                     mean_se([r.top1_valid for r in rs]), mean_se(gap)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
