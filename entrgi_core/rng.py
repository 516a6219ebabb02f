"""Counter-based random numbers: every draw is a pure function of (seed, prompt id, sample,
step, inner step, position, stream), computed vectorised on any device.

That is what makes a prompt's samples identical whether it is generated alone, in a padded batch
or on any rank of a multi-device run: nothing depends on how many draws other rows made.
The mixer is splitmix64's finaliser on int64 tensors (wrapping arithmetic; logical shifts
emulated with masks).
"""
from __future__ import annotations

import hashlib

import torch
from torch import Tensor

# Streams keep independent purposes apart.
SAMPLE = 1       # token sampled at a masked position
ORDER = 2        # Gumbel noise / coin flips deciding which positions are committed
HARD = 3         # hard token of the gated relaxation at an inner guidance step
RESAMPLE = 4     # the one uniform of a prompt's systematic resampling at a denoising step
TRAIN_MASK = 5   # which tokens a likelihood estimator masks (entrgi_core.training.likelihood)
TRAIN_RATE = 6   # the mask rate of one ELBO sample

_M1 = -4658895280553007687   # 0xbf58476d1ce4e5b9 as int64
_M2 = -7723592293110705685   # 0x94d049bb133111eb as int64
_GOLDEN = -7046029254386353131  # 0x9e3779b97f4a7c15 as int64


def _to_i64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 bits."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix(x: Tensor) -> Tensor:
    """splitmix64 finaliser, elementwise on an int64 tensor."""
    x = x ^ _shr(x, 30)
    x = x * _M1
    x = x ^ _shr(x, 27)
    x = x * _M2
    return x ^ _shr(x, 31)


def derive(keys: Tensor, *fields: int | Tensor) -> Tensor:
    """New keys from ``keys`` and further fields (ints or int64 tensors broadcasting with keys)."""
    k = keys
    for f in fields:
        # An int field is mixed on the host (64-bit wrap, the same bits as on the tensor): a
        # scalar kernel argument, never a host-to-device copy (which would sync the inner loop).
        f = f * _GOLDEN if isinstance(f, Tensor) else _to_i64(int(f) * _GOLDEN)
        k = mix((k + _GOLDEN) ^ f)
    return k


def uniform(keys: Tensor) -> Tensor:
    """One float64 uniform in (0, 1) per key."""
    return (_shr(mix(keys), 11).double() + 0.5) * (1.0 / (1 << 53))


def prompt_key(seed: int, prompt_id: str | int) -> int:
    """A stable 63-bit key for (seed, prompt id), the same in every process and on every run."""
    digest = hashlib.blake2b(f"{int(seed)}\x00{prompt_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_keys(seed: int | list[int], prompt_ids: list, num_samples: int, device=None) -> Tensor:
    """(B * K,) int64 keys: prompt b's K samples are rows b*K .. b*K + K - 1; ``seed`` is one seed
    for all prompts or one per prompt."""
    seeds = seed if isinstance(seed, (list, tuple)) else [seed] * len(prompt_ids)
    base = torch.tensor([prompt_key(s, p) for s, p in zip(seeds, prompt_ids)], dtype=torch.long, device=device)
    k = torch.arange(num_samples, dtype=torch.long, device=device)
    return derive(base.repeat_interleave(num_samples), k.repeat(len(prompt_ids)))
