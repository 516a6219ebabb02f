"""Fast decoding at real widths: dLLM seconds per generation and tokens per forward for each commit
schedule, without and with each block KV cache mode, and how many tokens the cached runs share
with the uncached ones.

    python benchmarks/bench_fast_decoding.py                       # CPU: hidden 512, 8 layers, L=256
    python benchmarks/bench_fast_decoding.py --device cuda --hidden 3584 --layers 28 --heads 28 \\
        --vocab 152064 --dtype bfloat16 --length 128 --samples 4 --guided   # paper shapes, with EntRGi

The dLLM is a random-weight ``BertForMaskedLM`` (prompt of ``--prompt`` tokens, ``--length``
response positions in blocks of ``--block``). Random weights are nearly uniform over the
vocabulary, which would leave the parallel schedules nothing to accept, so the prediction head's
output is scaled by ``--sharpen`` (the model is then confident, as trained dLLMs are on most
positions). ``--guided`` adds EntRGi (M=1) with a random Qwen3 reward model (``--rm-hidden``,
``--rm-layers``; Skywork-Reward-V2-Qwen3-1.7B's shape is 2048 and 28) on the same vocabulary, and
reports tokens per second of unguided and guided generation. Runs alternate (A B C A B C ...),
medians are reported: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import print_table  # noqa: E402

from entrgi_core import DenoiseConfig, MaskedLM, generate  # noqa: E402
from entrgi_core.hub import as_dtype  # noqa: E402
from entrgi_core.schedules import Dream, EntropyBound, Threshold  # noqa: E402


SCHEDULES = {"dream": Dream(), "threshold": Threshold(0.9), "entropy_bound": EntropyBound(0.1)}

def synthetic_tokenizer(vocab: int):
    """A word-level tokenizer of ``vocab`` tokens: 4 specials and words w0, w1, ..."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[MASK]", "[EOS]"]
    words = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab - len(specials))])}
    tk = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   eos_token="[EOS]", clean_up_tokenization_spaces=False)


def dllm(args, tok, device):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                     max_position_embeddings=args.prompt + args.length + 8, pad_token_id=tok.pad_token_id)
    model = BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        model.cls.predictions.transform.LayerNorm.weight.mul_(args.sharpen)     # a confident random model
    return MaskedLM.from_model(model.to(device=device, dtype=as_dtype(args.dtype)), tok)


def reward_model(args, tok, device):
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    from rewards import HFRewardModel

    torch.manual_seed(1)
    heads = max(1, args.rm_hidden // 128)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=args.rm_hidden, intermediate_size=3 * args.rm_hidden,
                      num_hidden_layers=args.rm_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                      head_dim=128, max_position_embeddings=args.prompt + args.length + 64, num_labels=1,
                      pad_token_id=tok.pad_token_id)
    model = Qwen3ForSequenceClassification(cfg).eval().to(device=device, dtype=as_dtype(args.dtype))
    return HFRewardModel.from_model(model, tok)


def timed(fn, device: str):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--samples", type=int, default=1, help="K samples per generation")
    ap.add_argument("--sharpen", type=float, default=40.0, help="scale of the prediction head's output")
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--caches", nargs="+", default=["none", "prefix", "dual"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--guided", action="store_true", help="also EntRGi with a random Qwen3 reward model")
    ap.add_argument("--rm-hidden", type=int, default=2048)
    ap.add_argument("--rm-layers", type=int, default=28)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok = synthetic_tokenizer(args.vocab)
    model = dllm(args, tok, args.device)
    rm = reward_model(args, tok, args.device) if args.guided else None
    prompt = " ".join(f"w{(7 * i) % (args.vocab - 8)}" for i in range(args.prompt))
    strategies = [("unguided", None)]
    if args.guided:
        from guidance import EntRGi

        strategies.append(("EntRGi M=1", EntRGi(steps=1)))
    runs = [(s, c, name, g) for s in args.schedules for c in args.caches for name, g in strategies]

    def config(schedule, cache):
        return DenoiseConfig(steps=args.length, max_new_tokens=args.length, num_samples=args.samples,
                             block_length=args.block, schedule=SCHEDULES[schedule],
                             cache=None if cache == "none" else cache)

    seconds = {run[:3]: [] for run in runs}
    results = {}
    with tempfile.TemporaryDirectory():
        for _ in range(args.repeats):
            for schedule, cache, name, strategy in runs:
                t, res = timed(lambda: generate(model, [prompt], reward=rm, guidance=strategy,
                                                config=config(schedule, cache)), args.device)
                seconds[(schedule, cache, name)].append(t)
                results[(schedule, cache, name)] = res
    print(f"fast decoding on {args.device}: random BertForMaskedLM (hidden {args.hidden}, {args.layers} layers, vocab "
          f"{args.vocab}, {args.dtype}), prompt {args.prompt}, L={args.length}, blocks of {args.block}, K={args.samples}, "
          f"threshold 0.9, entropy bound 0.1, median of {args.repeats}"
          + (f"; EntRGi M=1 with a random Qwen3 RM (hidden {args.rm_hidden}, {args.rm_layers} layers)" if rm else ""))
    rows = []
    for schedule, cache, name, _ in runs:
        res, base = results[(schedule, cache, name)], results[(schedule, "none", name)]
        t = statistics.median(seconds[(schedule, cache, name)])
        t0 = statistics.median(seconds[(schedule, "none", name)])
        agree = float((res.tokens == base.tokens).float().mean())
        tokens = args.samples * args.length
        rows.append([schedule, cache, name, f"{t:.2f}", f"{t0 / t:.2f}x", str(res.compute["dlm_forwards"][0]),
                     f"{res.tokens_per_forward[0]:.2f}", f"{tokens / t:.0f}", f"{agree:.3f}"])
    print_table(["schedule", "cache", "strategy", "s / generation", "speed-up vs no cache", "dLLM forwards",
                 "tok / fwd", "tokens / s", "tokens = uncached"], rows)


if __name__ == "__main__":
    main()
