"""Keep freed large buffers in the process's heap (glibc), so the next step reuses their pages.

A guided step on the CPU allocates several fresh N x V buffers (the relaxation's gradient, Adam's
state, the draws' work space: 119 MiB each at N = 1,024, V = 30,522). glibc serves every block over
32 MiB with its own mmap and returns it to the kernel when freed, so each step faults in and zeroes
those pages again: 13% of a real-world guided step (docs/real-world.md, "Cost at a real
vocabulary"). Raising glibc's mmap and trim thresholds keeps them in the heap instead.

The price: the process keeps its peak heap until it exits (freed memory is reused, not returned).
The ``entrgi`` command calls ``keep_freed_memory()`` before any work; a Python program calls it
itself, first thing. ``ENTRGI_KEEP_FREED_MEMORY=0`` turns it off. Imports no torch.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1                        # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30                     # blocks up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1               # a freed heap top is kept up to 2 GiB
ENV = "ENTRGI_KEEP_FREED_MEMORY"


def keep_freed_memory() -> str:
    """Set glibc's thresholds (see the module docstring) and return what was done, one line: the
    setting, or why nothing was set (turned off by the environment, not glibc, mallopt refused)."""
    value = os.environ.get(ENV, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV} must be 0 (glibc's default allocator behaviour) or 1 (keep freed memory), "
                         f"got {value!r}")
    if value == "0":
        return f"not set: {ENV}=0"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not set: the C library is not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown'})"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return "not set: glibc's mallopt refused the thresholds"
    return f"glibc keeps freed blocks up to {MMAP_THRESHOLD >> 20} MiB in the heap"
