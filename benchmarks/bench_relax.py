"""Gated relaxation, forward + backward: eager reference vs the compiled op.

CPU shape: N=1024, V=32000, D=512, float32. GPU shape (when CUDA is available): N=2048,
V=151936, D=2048, logits float32, table bfloat16, plus the two bare GEMMs of the same shapes
(the floor). Prints median seconds, speed-up and peak extra memory as a table.

    python benchmarks/bench_relax.py [--device cpu|cuda] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import median_seconds, peak_extra_bytes, print_table  # noqa: E402

from entrgi_core.ops import extension_available, relax_embeddings, relax_embeddings_reference  # noqa: E402

SHAPES = {
    "cpu": dict(n=1024, v=32000, d=512, logits=torch.float32, table=torch.float32),
    "cuda": dict(n=2048, v=151936, d=2048, logits=torch.float32, table=torch.bfloat16),
}


def make_inputs(device, n, v, d, logits, table):
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = (torch.randn(n, v, generator=gen) * 2).to(device=device, dtype=logits)
    e = (torch.randn(v, d, generator=gen) * 0.02).to(device=device, dtype=table)
    ids = torch.randint(0, v, (n,), generator=gen).to(device)
    g = torch.randn(n, d, generator=gen).to(device=device, dtype=table)
    return x, e, ids, g


def fwd_bwd(fn, x, e, ids, g):
    def run():
        xr = x.detach().requires_grad_(True)
        out = fn(xr, e, ids, gate="entropy", temperature=0.7, validate=False)
        out.embeds.backward(g)
        return xr.grad

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    if not extension_available():
        sys.exit("bench_relax: the compiled op is not built; run `make build` first")
    shape = SHAPES[args.device]
    x, e, ids, g = make_inputs(args.device, **shape)
    mb = 1 / 2**20
    rows = []
    # Both implementations must return the (N, V) gradient; "transient" leaves it out.
    grad_bytes = x.numel() * x.element_size()
    runs = {"eager reference": fwd_bwd(relax_embeddings_reference, x, e, ids, g),
            "fused op": fwd_bwd(relax_embeddings, x, e, ids, g)}
    if args.device == "cuda":
        p = torch.softmax(x, -1).to(e.dtype)
        runs["two bare GEMMs (floor)"] = lambda: (p @ e, g @ e.t())  # the two N x V x D products
    secs = median_seconds(runs, repeats=args.repeats, device=args.device)
    ref_t = secs["eager reference"]
    ref_tr = None
    for name in ("eager reference", "fused op"):
        mem = peak_extra_bytes(runs[name], device=args.device)
        tr = max(mem - grad_bytes, 0)
        ref_tr = tr if ref_tr is None else ref_tr
        rows.append([name, f"{secs[name] * 1e3:.1f}", f"{ref_t / secs[name]:.2f}x", f"{mem * mb:.0f}",
                     f"{tr * mb:.0f}", f"{tr / max(ref_tr, 1):.3f}"])
    if args.device == "cuda":
        floor = secs["two bare GEMMs (floor)"]
        rows.append(["two bare GEMMs (floor)", f"{floor * 1e3:.1f}", f"{ref_t / floor:.2f}x", "-", "-", "-"])
        rows.append(["fused / floor", f"{secs['fused op'] / floor:.2f}", "", "", "", ""])
    print(f"relax_embeddings forward+backward on {args.device}: N={shape['n']} V={shape['v']} D={shape['d']} "
          f"logits {shape['logits']} table {shape['table']}, gate=entropy, threads={torch.get_num_threads()}")
    print_table(["impl", "median ms", "speed-up", "peak extra MiB", "transient MiB", "transient / eager"], rows)
    print("peak extra: above the inputs; transient: peak extra less the (N, V) logits gradient both return")


if __name__ == "__main__":
    main()
