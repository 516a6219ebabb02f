"""trainer.predict throughput with 1 and 2 CPU processes (DDP over gloo, one thread each).

Runs `entrgi predict` on the tiny models with --trainer.devices 1, then 2, and prints prompts/s
measured from the start to the end of prediction (summary.json: wall_seconds_this_run), so
process start-up and model loading are left out.

    python benchmarks/bench_scaling.py [--prompts 64]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from common import print_table  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    from bench_generate import load_models  # the shipped tiny world, or random tiny models

    dlm, rm, source = load_models("cpu")
    dlm_path, rm_path = tmp / "dlm", tmp / "rm"
    for obj, path in ((dlm, dlm_path), (rm, rm_path)):
        obj.model.save_pretrained(path)
        obj.tokenizer.save_pretrained(path)
    from entrgi_core.tinyworld.grammar import SUBJECTS, prompt_for

    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i:03d}", "prompt": prompt_for(SUBJECTS[i % len(SUBJECTS)]) +
                                           ("" if i < len(SUBJECTS) else f" {i}")}) + "\n"
                               for i in range(args.prompts)))
    cfg = {"dlm": {"class_path": "entrgi_core.models.MaskedLM", "init_args": {"path": str(dlm_path)}},
           "reward": {"class_path": "rewards.hf.HFRewardModel", "init_args": {"path": str(rm_path)}},
           "guidance": {"class_path": "guidance.EntRGi", "init_args": {"steps": 3}},
           "sampling": {"steps": 16, "max_new_tokens": 16, "num_samples": 4},
           "data": {"path": str(prompts), "id_field": "id", "batch_size": 4},
           "trainer": {"accelerator": "cpu", "enable_progress_bar": False}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    rate = {}
    for devices in (1, 2):
        out = tmp / f"out{devices}"
        cmd = [sys.executable, "-m", "entrgi_core.cli", "predict", "--config", str(tmp / "cfg.yaml"),
               "--output_dir", str(out), "--trainer.devices", str(devices)]
        if devices > 1:
            cmd += ["--trainer.strategy", "ddp"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        summary = json.loads((out / "summary.json").read_text())
        rate[devices] = summary["prompts"] / summary["wall_seconds_this_run"]
    print(f"entrgi predict on CPU ({source}), {args.prompts} prompts, K=4 T=16 L=16, EntRGi M=3, "
          f"1 thread per process")
    print_table(["processes", "prompts / s", "speed-up"],
                [[d, f"{r:.2f}", f"{r / rate[1]:.2f}x"] for d, r in rate.items()])


if __name__ == "__main__":
    main()
