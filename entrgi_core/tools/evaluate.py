"""``entrgi eval``: an lm-evaluation-harness run of an ``entrgi predict`` configuration.

    entrgi eval --config configs/tiny.yaml --tasks tinyworld_reviews [--limit 8] [--seed 1234]
                [--num-samples 4] [--guidance guidance.EntRGi | '{"class_path": ..., "init_args": {...}}']
                [--steps 32] [--mc-samples 8] [--include-path DIR] [--output results.json]
                [any entrgi predict override]

Calls ``lm_eval.simple_evaluate`` with the configuration as the model
(``entrgi_core.integrations.harness.EntrgiLM``: guided sampling for ``generate_until``, the ELBO
for ``loglikelihood``) and prints lm-eval's table. The shipped tasks (``tinyworld_reviews``: the
tiny world's held-out prompts, scored by its oracle) are found without ``--include-path``. The
same task through a server gives the same score for the same seed and settings:
``lm_eval --model local-completions`` against ``entrgi serve`` (docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from entrgi_core.errors import InputError


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="entrgi eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=None, help="an entrgi predict config (repeatable)")
    ap.add_argument("--tasks", nargs="+", required=True, help="lm-eval task names")
    ap.add_argument("--limit", type=float, default=None, help="documents per task (a count, or a fraction < 1)")
    ap.add_argument("--seed", type=int, default=1234, help="every request's seed (lm-eval's API models send 1234)")
    ap.add_argument("--num-samples", type=int, default=4, help="K, unless a task's entrgi extension says")
    ap.add_argument("--guidance", default=None, help="the strategy (class path or JSON); default: Best-of-N")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the config's)")
    ap.add_argument("--mc-samples", type=int, default=8, help="masks per ELBO estimate (loglikelihood tasks)")
    ap.add_argument("--batch-size", type=int, default=16, help="requests per generate")
    ap.add_argument("--num-fewshot", type=int, default=None)
    ap.add_argument("--include-path", action="append", default=[], help="a folder of further task YAMLs")
    ap.add_argument("--output", default=None, help="write lm-eval's results (JSON) here")
    args, overrides = ap.parse_known_args(argv)
    if args.limit is not None and not args.limit > 0:
        raise InputError(f"entrgi eval: --limit must be > 0, got {args.limit}")
    for folder in args.include_path:
        if not Path(folder).is_dir():
            raise InputError(f"entrgi eval: --include-path {folder} is not a folder")
    out = Path(args.output) if args.output else None
    if out is not None and out.exists():
        raise InputError(f"entrgi eval: --output {out} exists; give a new path (nothing is overwritten)")
    try:
        import lm_eval
    except ImportError:
        raise InputError("entrgi eval needs lm-evaluation-harness: pip install 'lm_eval==0.4.13'") from None
    from entrgi_core.integrations.harness import EntrgiLM, task_manager

    tasks = task_manager(args.include_path, args.tasks)
    missing = [t for t in args.tasks if t not in tasks.all_tasks]
    if missing:                                      # before the models load
        raise InputError(f"entrgi eval: unknown task(s) {missing}; shipped: tinyworld_reviews "
                         "(--include-path adds a folder of task YAMLs)")
    model = EntrgiLM(config=args.config or ["configs/tiny.yaml"], overrides=overrides, seed=args.seed,
                     num_samples=args.num_samples, guidance=args.guidance, steps=args.steps,
                     mc_samples=args.mc_samples, batch_size=args.batch_size)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    results = lm_eval.simple_evaluate(model=model, tasks=args.tasks, task_manager=tasks, limit=limit,
                                      num_fewshot=args.num_fewshot)
    from lm_eval.utils import make_table

    print(make_table(results))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"results": results["results"], "config": {k: str(v) for k, v in vars(args).items()}},
                                  indent=2, default=str))
        print(f"written: {out}", file=sys.stderr)
