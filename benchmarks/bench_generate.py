"""End-to-end sampling speed on tiny models: NoGuidance vs EntRGi (M=3).

K=4, T=32, L=32, a batch of 8 prompts, on the CPU (or --device cuda). Prints seconds per prompt,
tokens/s and the guided/unguided time ratio. Uses the shipped tiny world when its checkpoints
are there, else randomly initialised tiny models of the same shapes.

    python benchmarks/bench_generate.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from common import median_seconds, print_table  # noqa: E402

from entrgi_core import DenoiseConfig, MaskedLM, generate  # noqa: E402
from entrgi_core.tinyworld.grammar import SUBJECTS, prompt_for  # noqa: E402
from guidance import EntRGi, NoGuidance  # noqa: E402
from rewards import HFRewardModel  # noqa: E402


def load_models(device):
    try:
        from entrgi_core import tinyworld
        dlm_path, rm_path = tinyworld.dlm_path(), tinyworld.rm_path()
        source = "shipped tiny world"
    except (ImportError, FileNotFoundError):
        from tests.tiny import save_tiny_dlm, save_tiny_rm
        tmp = Path(tempfile.mkdtemp())
        dlm_path, rm_path = save_tiny_dlm(tmp / "dlm", hidden=128), save_tiny_rm(tmp / "rm", hidden=64)
        source = "random tiny models"
    return (MaskedLM.from_pretrained(str(dlm_path), device=device),
            HFRewardModel.from_pretrained(str(rm_path), device=device), source)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    dlm, rm, source = load_models(args.device)
    cfg = DenoiseConfig(steps=32, max_new_tokens=32, num_samples=4)
    prompts = [prompt_for(s) for s in SUBJECTS[:8]]
    runs = {name: (lambda g=g: generate(dlm, prompts, reward=rm, guidance=g, config=cfg))
            for name, g in (("NoGuidance", NoGuidance()), ("EntRGi (M=3)", EntRGi(steps=3)))}
    secs = median_seconds(runs, repeats=args.repeats, device=args.device)
    tokens = len(prompts) * cfg.num_samples * cfg.max_new_tokens
    rows = [[name, f"{s / len(prompts):.3f}", f"{tokens / s:.0f}", f"{s / secs['NoGuidance']:.2f}"]
            for name, s in secs.items()]
    print(f"generate on {args.device} ({source}): B={len(prompts)} K={cfg.num_samples} T={cfg.steps} "
          f"L={cfg.max_new_tokens}, threads={torch.get_num_threads()}")
    print_table(["method", "s / prompt", "tokens / s", "time / unguided"], rows)


if __name__ == "__main__":
    main()
