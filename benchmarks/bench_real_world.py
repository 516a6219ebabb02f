"""Where one guided step's time goes at a real vocabulary (the real world: V = 30,522).

    python benchmarks/bench_real_world.py [--prompts 8] [--samples 4] [--length 32] [--steps 3]
                                          [--repeats 3] [--device cpu] [--system-malloc]

One denoising step of EntRGi (M inner steps) on the real world's dLLM and reward model
(``make real-world`` builds them), every position of the response masked (the step with the
most positions, N = prompts x samples x length), split into its parts, each timed alone
(median of ``--repeats``): the dLLM's forward; per inner step, the hard samples (a top-p draw
over V), the relaxation op's forward and backward (compiled, and the PyTorch reference), the
reward model's forward and backward; Adam on ``phi`` (N x V: one optimiser over the M inner steps, as
refine builds it); the final draw. It then times
whole guided steps (``GatedGuidance.refine`` plus the draw) and prints each part's share of one,
and the process's peak memory. The relaxation and the optimizer are the overhead of guidance;
the dLLM's forward and the reward model's forward and backward are the irreducible part.
The peak memory is that of one guided step above what was live before it. Like the ``entrgi``
command, the bench first keeps freed large buffers in the heap (``entrgi_core.allocator``);
``--system-malloc`` leaves glibc's default (every N x V buffer faulted in afresh).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import median_seconds, peak_extra_bytes, print_table  # noqa: E402

from entrgi_core import DenoiseConfig, realworld  # noqa: E402
from entrgi_core.allocator import keep_freed_memory  # noqa: E402
from entrgi_core.contract import GuidanceStep, Sampling  # noqa: E402
from entrgi_core.draws import sample_tokens  # noqa: E402
from entrgi_core.ops import extension_available, relax_embeddings, relax_embeddings_reference  # noqa: E402
from entrgi_core.reward_side import RewardSide  # noqa: E402
from guidance import EntRGi  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="M inner steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--system-malloc", action="store_true", help="leave glibc's allocator at its defaults")
    args = ap.parse_args(argv)
    heap = "glibc's defaults (--system-malloc)" if args.system_malloc else keep_freed_memory()
    dev = args.device
    dlm, rm = realworld.WorldLM(), realworld.WorldRM()
    dlm.model.to(dev)
    rm.to(dev)
    prompts = [json.loads(x)["prompt"] for x in realworld.PROMPTS.read_text().splitlines() if x][: args.prompts]
    rows_prompts = [p for p in prompts for _ in range(args.samples)]
    cfg = DenoiseConfig(steps=args.length, max_new_tokens=args.length, num_samples=args.samples)
    ids, attn, pos, width = dlm.canvas(dlm.encode_prompts(rows_prompts), args.length)
    ids, attn, pos = ids.to(dev), attn.to(dev), pos.to(dev)
    tokens = ids[:, width:]                                                       # (R, L), all masked
    rows, cols = (tokens == dlm.mask_id).nonzero(as_tuple=True)
    side = RewardSide.build(rm, rows_prompts, tokenizer=dlm.tokenizer, vocab_size=dlm.vocab_size,
                            stop_ids=dlm.stop_ids, device=dev, decode=dlm.response_text)
    step = GuidanceStep(index=0, total=args.length, side=side, tokens=tokens, rows=rows, cols=cols,
                        keys=torch.arange(len(rows_prompts), device=dev), samples=args.samples,
                        sampling=Sampling(cfg.temperature, cfg.top_p, cfg.top_k))
    with torch.no_grad():
        phi0 = dlm.logits(ids, attn, pos)[:, width:][rows, cols].float()          # (N, V)
    (part,) = side.parts
    table = part.vocab.table
    strategy = EntRGi(steps=args.steps)
    rel = strategy.relaxation(step)
    n, v = phi0.shape
    hard = step.hard_tokens(phi0, 0, temperature=rel.temperature, top_p=rel.top_p)
    embeds, keep = step.canvas.inputs(part.vocab, table[hard], phi0, step.stop_ids)
    u = torch.rand(n, device=dev)

    def dllm_forward():
        with torch.no_grad():
            dlm.logits(ids, attn, pos)

    def hard_samples():
        step.hard_tokens(phi0, 1, temperature=rel.temperature, top_p=rel.top_p)

    grad_embeds = torch.randn(n, table.shape[1], device=dev)

    def relax(fn):
        def run():                        # as a guided step reads it: phi checked once per step, not here
            x = phi0.detach().requires_grad_(True)
            out = fn(x, table, hard, gate="entropy", temperature=rel.temperature, validate=False)
            out.embeds.backward(grad_embeds)
        return run

    def rm_forward_backward():
        x = embeds.detach().clone().requires_grad_(True)
        rm.score_embeds(part.context, x, keep).sum().backward()

    x_adam = phi0.clone().requires_grad_(True)
    g_adam = torch.randn_like(phi0)

    def adam_on_phi():                    # as refine runs it: one fresh optimiser (state allocated at its
        opt = strategy._make_optimizer([x_adam])       # first step), then M steps
        for _ in range(args.steps):
            x_adam.grad = g_adam
            opt.step()

    def final_draw():
        sample_tokens(phi0, u, temperature=cfg.temperature, top_p=cfg.top_p, confidence="entropy")

    def guided_step():
        with torch.enable_grad():
            out = strategy.refine(phi0, step)
        sample_tokens(out.logits, u, temperature=cfg.temperature, top_p=cfg.top_p, confidence="entropy")

    parts = {"dLLM forward": dllm_forward, "hard samples (one inner step)": hard_samples,
             "relaxation fwd+bwd, compiled (one)": relax(relax_embeddings),
             "relaxation fwd+bwd, PyTorch reference (one)": relax(relax_embeddings_reference),
             "RM forward+backward (one)": rm_forward_backward, "Adam on phi (M steps)": adam_on_phi,
             "final draw": final_draw}
    t = median_seconds(parts, repeats=args.repeats, device=dev)
    whole = median_seconds({"guided step": guided_step}, repeats=args.repeats, device=dev)["guided step"]
    m = args.steps
    per_step = {"dLLM forward": t["dLLM forward"], "hard samples": m * t["hard samples (one inner step)"],
                "relaxation (compiled)": m * t["relaxation fwd+bwd, compiled (one)"],
                "RM forward+backward": m * t["RM forward+backward (one)"], "Adam on phi": t["Adam on phi (M steps)"],
                "final draw": t["final draw"]}
    step_total = whole + t["dLLM forward"]
    print(f"one guided step on {dev}: EntRGi M={m}, {args.prompts} prompts x K={args.samples}, L={args.length}: "
          f"N={n} masked positions, V={v}, D={table.shape[1]}; compiled op: {extension_available()}; "
          f"median of {args.repeats}; allocator: {heap}")
    print_table(["part", "s (one)", "x per step", "s per step", "share of the step"],
                [[name, f"{t[key]:.3f}", str(times), f"{per_step[label]:.3f}", f"{per_step[label] / step_total:.0%}"]
                 for name, key, times, label in (
                     ("dLLM forward", "dLLM forward", 1, "dLLM forward"),
                     ("hard samples (top-p over V)", "hard samples (one inner step)", m, "hard samples"),
                     ("relaxation fwd+bwd (compiled)", "relaxation fwd+bwd, compiled (one)", m, "relaxation (compiled)"),
                     ("RM forward+backward", "RM forward+backward (one)", m, "RM forward+backward"),
                     ("Adam on phi (N x V), M steps", "Adam on phi (M steps)", 1, "Adam on phi"),
                     ("final draw", "final draw", 1, "final draw"))])
    print(f"relaxation fwd+bwd, PyTorch reference (one): {t['relaxation fwd+bwd, PyTorch reference (one)']:.3f} s "
          f"(compiled {t['relaxation fwd+bwd, compiled (one)']:.3f} s)")
    overhead = per_step["relaxation (compiled)"] + per_step["Adam on phi"]
    parts = sum(per_step.values())
    print(f"whole guided step (refine + draw) {whole:.3f} s + dLLM forward {t['dLLM forward']:.3f} s = "
          f"{step_total:.3f} s; relaxation + Adam on phi: {overhead:.3f} s = {overhead / step_total:.0%} of it "
          f"(target <= 25%); the parts above add up to {parts:.3f} s, of which it is {overhead / parts:.0%}")
    peak = peak_extra_bytes(guided_step, device=dev)
    print(f"peak memory of one guided step above what was live: {peak / 2**20:.0f} MiB "
          f"(phi alone, N x V float32: {n * v * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
