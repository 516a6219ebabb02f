"""Reward-model prefix KV cache: forward + backward of ``score_embeds`` with and without it.

A tiny Qwen3 reward model (the Skywork architecture), a chat prefix of about 256 tokens (system +
prompt), a 128-token response of relaxed embeddings, B rows; the cache runs the prefix once per
batch (``prepare``) and every guided call runs only ``[response | suffix]``. Timings interleave
the two variants (this machine is shared and noisy); the speed-up is the ratio of medians.

    python benchmarks/bench_reward_cache.py [--rows 8] [--repeats 15]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import median_seconds, print_table  # noqa: E402
from entrgi_core.tinyworld.tokenizers import build_rm_tokenizer  # noqa: E402
from rewards import HFRewardModel  # noqa: E402


def tiny_qwen3_rm(path: Path) -> Path:
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    tok = build_rm_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=1024,
                      num_labels=1, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    Qwen3ForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prefix", type=int, default=256)
    ap.add_argument("--response", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = tiny_qwen3_rm(Path(tmp) / "rm")
        models = {"no cache": HFRewardModel(str(path), prefix_cache=False),
                  "prefix cache": HFRewardModel(str(path), prefix_cache=True)}
    words = "the staff was friendly and the room was clean".split()
    prompt = " ".join(words[i % len(words)] for i in range(args.prefix - 6))   # + template tokens ~ prefix
    some = next(iter(models.values()))
    prefix_tokens = some.template_length(prompt)
    prompts = [prompt] * args.rows
    dim = some.embedding_table.shape[1]
    embeds = (0.02 * torch.randn(args.rows, args.response, dim)).requires_grad_(True)
    keep = torch.ones(args.rows, args.response, dtype=torch.bool)
    contexts = {name: rm.prepare(prompts) for name, rm in models.items()}      # once per batch
    grads = {}

    def step(name):
        reward = models[name].score_embeds(contexts[name], embeds, keep)
        (grad,) = torch.autograd.grad(reward.sum(), embeds)
        grads[name] = (reward.detach(), grad)

    med = median_seconds({name: (lambda n=name: step(n)) for name in models}, repeats=args.repeats, warmup=2)
    (r0, g0), (r1, g1) = grads["no cache"], grads["prefix cache"]
    rows = [[name, f"{1000 * t:.1f}", f"{med['no cache'] / t:.2f}x"] for name, t in med.items()]
    print(f"reward forward+backward on cpu: tiny Qwen3 RM (hidden 256, 4 layers), {args.rows} rows, "
          f"prefix {prefix_tokens} tokens, response {args.response}, threads=2, median of {args.repeats}")
    print_table(["variant", "median ms", "speed-up"], rows)
    print(f"max |reward difference| {float((r0 - r1).abs().max()):.2e}, "
          f"max |gradient difference| {float((g0 - g1).abs().max()):.2e}")


if __name__ == "__main__":
    main()
