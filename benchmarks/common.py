"""Small timing and memory helpers shared by the benchmark scripts (not a test utility)."""
from __future__ import annotations

import statistics
import time

import torch


def _timed(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def median_seconds(fns: dict, *, repeats: int = 5, warmup: int = 1, device: str = "cpu") -> dict:
    """Median wall time of each ``fns[name]()``, the functions run in turn (A B C A B C ...) so
    that a shared machine's drifting load falls on all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def peak_extra_bytes(fn, *, device: str = "cpu") -> int:
    """Peak bytes that ``fn()`` needs above what was live when it started.

    CUDA: the caching allocator's peak counter. CPU (Linux): the resident-set high-water mark,
    reset through /proc/self/clear_refs, with glibc told to serve every allocation over 64 KiB
    by mmap, so that a freed tensor leaves the resident set at once and the mark is the peak.
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    import ctypes
    import gc

    ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD = 64 KiB, fixed
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024


def print_table(headers: list[str], rows: list[list]) -> None:
    """Print a plain fixed-width table."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
