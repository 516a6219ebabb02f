"""Guidance inside transformers' DiffusionGemma ``generate()``: reward gain and time ratio.

The tiny random DiffusionGemma (``entrgi_core.tinyworld.diffusion_gemma``) writes 16 tokens (two
canvases of 8, 8 denoising steps each) for the tiny world's 16 prompts, unguided and with
``GuidanceLogitsProcessor`` (EntRGi and Expectation, M inner steps), scored by the tiny world's
reward model. Prints the mean reward +- SEM over seeds and the seconds per generate() call, with
the guided / unguided time ratio (the calls of one seed run in turn, so load drift is shared).

    python benchmarks/bench_diffusion_gemma.py [--seeds 0 1 2] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
from common import print_table  # noqa: E402

from entrgi_core import tinyworld  # noqa: E402
from entrgi_core.tinyworld.diffusion_gemma import save_tiny_diffusion_gemma  # noqa: E402
from guidance import EntRGi, Expectation, GuidanceLogitsProcessor  # noqa: E402
from rewards import HFRewardModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=3, help="M inner steps of the guided rows")
    args = ap.parse_args()
    from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion, LogitsProcessorList

    path = save_tiny_diffusion_gemma(tempfile.mkdtemp())
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    rm = HFRewardModel(str(tinyworld.rm_path()))
    prompts = [json.loads(x)["prompt"] for x in tinyworld.PROMPTS.read_text().splitlines() if x][:16]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tok(texts, return_tensors="pt", add_special_tokens=False, padding=True)
    methods = {"unguided": None, f"EntRGi M={args.steps}": lambda: EntRGi(steps=args.steps),
               f"Expectation M={args.steps}": lambda: Expectation(steps=args.steps)}
    rewards = {m: [] for m in methods}
    seconds = {m: [] for m in methods}
    for seed in args.seeds:
        for name, make in methods.items():
            procs = None if make is None else LogitsProcessorList(
                [GuidanceLogitsProcessor(rm, make(), tokenizer=tok, prompts=prompts, seed=seed)])
            torch.manual_seed(seed)
            t0 = time.perf_counter()
            out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=16,
                                 logits_processor=procs)
            seconds[name].append(time.perf_counter() - t0)
            resp = tok.batch_decode(out.sequences[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            rewards[name].append(float(rm.score_text(prompts, resp).mean()))

    def pm(xs):
        mean = sum(xs) / len(xs)
        sem = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs)) if len(xs) > 1 else 0.0
        return f"{mean:+.3f} +- {sem:.3f}"

    base_s = sum(seconds["unguided"]) / len(args.seeds)
    rows = [[name, pm(rewards[name]), f"{sum(seconds[name]) / len(args.seeds):.2f}",
             f"{sum(seconds[name]) / len(args.seeds) / base_s:.1f}x"] for name in methods]
    print(f"tiny DiffusionGemma, {len(prompts)} prompts, 16 tokens (2 canvases x 8 steps), seeds {args.seeds}")
    print_table(["method", "mean reward", "s / generate()", "time vs unguided"], rows)


if __name__ == "__main__":
    main()
