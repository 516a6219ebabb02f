"""The gated embedding relaxation: the only owner of ``torch.ops.entrgi``.

``relax_embeddings`` maps per-token logits to reward-model input embeddings::

    q      = softmax(logits / temperature)                       # (N, V)
    soft   = q @ table                                           # (N, D) differentiable
    hard   = table[hard_ids]                                     # (N, D) realistic input
    w      = H(softmax(logits / entropy_temperature)) / log V    # gate "entropy" (EntRGi)
           | 1 ("ste", APS) | 0 ("soft", Expectation) | a user tensor (N,)
    embeds = soft + w * stopgrad(hard - soft)                    # value (1-w) soft + w hard

Gradients reach ``logits`` only, through ``soft``:
``dL/dlogits = (1/tau) q (g @ table^T - rowsum(q * (g @ table^T)))`` with ``g = dL/dembeds``.

The compiled op (``csrc/``) never keeps an N x V tensor for backward (q is recomputed from the
logits and two statistics per row) and works in row chunks. ``relax_embeddings_reference`` beside
it is the pure-PyTorch spec. When the compiled library is missing the package still imports,
``extension_available()`` is False, and the reference runs after one message naming the rebuild.
"""
from __future__ import annotations

import importlib
import json
import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from entrgi_core.errors import InputError, NonFiniteLogitsError

__all__ = [
    "RelaxOutput",
    "relax_embeddings",
    "relax_embeddings_reference",
    "extension_available",
    "build_info",
    "GATES",
]

GATES = ("entropy", "ste", "soft")
REBUILD_HINT = "pip install --no-build-isolation -e .  (or `make build`)"

_state = {"loaded": None, "error": None, "warned": False, "info": None, "cuda": False}


class RelaxOutput(NamedTuple):
    embeds: Tensor  # (N, D) in table.dtype
    weight: Tensor  # (N,) float32, the gate w actually used


# ----------------------------------------------------------------------------- loading


def _load() -> bool:
    """Import the compiled library once (its static initialisers register the ops) and register
    autograd and fake kernels for them."""
    if _state["loaded"] is not None:
        return _state["loaded"]
    try:
        importlib.import_module("entrgi_core._C")
        info = json.loads(torch.ops.entrgi.build_info())
    except (ImportError, OSError, AttributeError, RuntimeError) as exc:  # missing, or built against another torch
        _state.update(loaded=False, error=f"{type(exc).__name__}: {exc}")
        return False
    _register()
    _state.update(loaded=True, info=info, cuda=bool(info["cuda"]))
    return True


def extension_available() -> bool:
    """True when the compiled op library is importable (CPU kernels; CUDA ones if built)."""
    return _load()


def build_info() -> dict:
    """Facts about the compiled library: version, whether CUDA kernels were built, arch list."""
    if not _load():
        return {"available": False, "error": _state["error"]}
    return {"available": True, **_state["info"]}


def _warn_fallback(reason: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            f"entrgi: using the pure-PyTorch relaxation ({reason}); it keeps N x V tensors for "
            f"backward and is slower. Rebuild the compiled op with: {REBUILD_HINT}",
            RuntimeWarning,
            stacklevel=3,
        )


FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_op_args(logits, table, hard_ids=None, gate_weight=None) -> None:
    """What the compiled op checks (ranks, sizes, dtypes, devices), for its fake kernels: a traced
    graph refuses the same calls the kernels would."""
    torch._check_value(logits.dim() == 2, lambda: f"entrgi.relax: logits must be [N, V], got {tuple(logits.shape)}")
    torch._check_value(table.dim() == 2, lambda: f"entrgi.relax: table must be [V, D], got {tuple(table.shape)}")
    torch._check_value(logits.shape[1] == table.shape[0], lambda: f"entrgi.relax: logits have V={logits.shape[1]} "
                       f"columns but the table has {table.shape[0]} rows")
    torch._check_value(logits.dtype in FLOATING and table.dtype in FLOATING,
                       lambda: f"entrgi.relax: logits and table must be floating, got {logits.dtype}, {table.dtype}")
    n = logits.shape[0]
    for name, t in (("table", table), ("hard_ids", hard_ids), ("gate_weight", gate_weight)):
        torch._check_value(t is None or t.device == logits.device,
                           lambda: f"entrgi.relax: {name} on {t.device} but logits on {logits.device}")
    if hard_ids is not None:
        torch._check_value(hard_ids.dim() == 1 and hard_ids.shape[0] == n and hard_ids.dtype == torch.long,
                           lambda: f"entrgi.relax: hard_ids must be int64 [N] with N={n}")
    if gate_weight is not None:
        torch._check_value(gate_weight.dim() == 1 and gate_weight.shape[0] == n and gate_weight.dtype in FLOATING,
                           lambda: f"entrgi.relax: gate_weight must be floating [N] with N={n}")


def _register() -> None:
    """Autograd and fake kernels for the ops the compiled library defined."""
    @torch.library.register_fake("entrgi::relax_fwd")
    def _fake_fwd(logits, table, hard_ids, gate_weight, temperature, entropy_temperature, chunk_rows):
        _check_op_args(logits, table, hard_ids, gate_weight)
        n = logits.shape[0]
        acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
        return (
            logits.new_empty((n, table.shape[1]), dtype=table.dtype),
            logits.new_empty((n,), dtype=torch.float32),
            logits.new_empty((n, 2), dtype=acc),
        )

    @torch.library.register_fake("entrgi::relax_bwd")
    def _fake_bwd(grad_embeds, logits, table, stats, temperature, chunk_rows):
        _check_op_args(logits, table)
        torch._check_value(grad_embeds.shape == (logits.shape[0], table.shape[1]),
                           lambda: f"entrgi.relax: grad must be [N, D], got {tuple(grad_embeds.shape)}")
        torch._check_value(stats.shape == (logits.shape[0], 2), lambda: "entrgi.relax: stats must be [N, 2]")
        return torch.empty_like(logits)

    def _setup_context(ctx, inputs, output):
        logits, table, _ids, _gw, temperature, _th, chunk_rows = inputs
        if ctx.needs_input_grad[0]:        # only the logits get a gradient: keep nothing otherwise
            ctx.save_for_backward(logits, table, output[2])
        ctx.temperature = temperature
        ctx.chunk_rows = chunk_rows

    def _backward(ctx, grad_embeds, _grad_weight, _grad_stats):
        grad_logits = None
        if ctx.needs_input_grad[0]:
            logits, table, stats = ctx.saved_tensors
            grad_logits = torch.ops.entrgi.relax_bwd(
                grad_embeds, logits, table, stats, ctx.temperature, ctx.chunk_rows
            )
        return grad_logits, None, None, None, None, None, None

    torch.library.register_autograd("entrgi::relax_fwd", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- validation


def _check(logits, table, hard_ids, gate, temperature, entropy_temperature, validate: bool):
    """Shape and type checks (no host sync); value checks too when ``validate`` (syncs on GPU)."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise InputError(f"relax_embeddings: logits must be a 2-D tensor [N, V], got {_shape(logits)}")
    if not isinstance(table, Tensor) or table.dim() != 2:
        raise InputError(f"relax_embeddings: table must be a 2-D tensor [V, D], got {_shape(table)}")
    if not isinstance(hard_ids, Tensor) or hard_ids.dim() != 1:
        raise InputError(f"relax_embeddings: hard_ids must be a 1-D tensor [N], got {_shape(hard_ids)}")
    n, v = logits.shape
    if table.shape[0] != v:
        raise InputError(f"relax_embeddings: logits have V={v} columns but the table has {table.shape[0]} rows")
    if v < 2:
        raise InputError(f"relax_embeddings: the vocabulary needs V >= 2, got V={v}")
    if hard_ids.shape[0] != n:
        raise InputError(f"relax_embeddings: hard_ids has {hard_ids.shape[0]} entries for N={n} logit rows")
    if hard_ids.dtype != torch.long:
        raise InputError(f"relax_embeddings: hard_ids must be int64, got {hard_ids.dtype}")
    floating = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    for name, t in (("logits", logits), ("table", table)):
        if t.dtype not in floating:
            raise InputError(f"relax_embeddings: {name} must be float32/float64/float16/bfloat16, got {t.dtype}")
    if len({logits.device, table.device, hard_ids.device}) != 1:
        raise InputError(
            f"relax_embeddings: logits ({logits.device}), table ({table.device}) and hard_ids "
            f"({hard_ids.device}) must be on one device"
        )
    if not (temperature > 0 and math.isfinite(temperature)):
        raise InputError(f"relax_embeddings: temperature must be > 0, got {temperature}")
    if isinstance(gate, str):
        if gate not in GATES:
            raise InputError(f"relax_embeddings: gate must be one of {GATES} or a tensor [N], got {gate!r}")
        if gate == "entropy" and not (entropy_temperature > 0 and math.isfinite(entropy_temperature)):
            raise InputError(f"relax_embeddings: entropy_temperature must be > 0, got {entropy_temperature}")
    elif isinstance(gate, Tensor):
        if gate.dim() != 1 or gate.shape[0] != n:
            raise InputError(f"relax_embeddings: a gate tensor must be [N] with N={n}, got {tuple(gate.shape)}")
        if gate.device != logits.device:
            raise InputError(f"relax_embeddings: gate on {gate.device} but logits on {logits.device}")
    else:
        raise InputError(f"relax_embeddings: gate must be a string or a tensor, got {type(gate).__name__}")
    if not validate or n == 0 or torch.compiler.is_compiling():
        return                        # value checks branch on data: skipped inside torch.compile graphs
    with torch.no_grad():
        if torch.isnan(logits).any() or torch.isposinf(logits).any():
            raise NonFiniteLogitsError("relax_embeddings: logits contain NaN or +inf")
        all_neg_inf = torch.isneginf(logits).all(dim=1)
        if all_neg_inf.any():
            row = int(all_neg_inf.nonzero()[0, 0])
            raise NonFiniteLogitsError(f"relax_embeddings: row {row} of the logits is all -inf (no token left to relax)")
        lo, hi = int(hard_ids.min()), int(hard_ids.max())
        if lo < 0 or hi >= v:
            raise InputError(f"relax_embeddings: hard_ids must lie in [0, {v}), got values in [{lo}, {hi}]")
        if isinstance(gate, Tensor):
            if not torch.isfinite(gate).all() or (gate < 0).any() or (gate > 1).any():
                raise InputError("relax_embeddings: a gate tensor must hold values in [0, 1]")


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


# ----------------------------------------------------------------------------- public API


def relax_embeddings(logits: Tensor, table: Tensor, hard_ids: Tensor, *, gate: str | Tensor = "entropy",
                     temperature: float = 1.0, entropy_temperature: float = 1.0, chunk_rows: int = 0,
                     validate: bool = True) -> RelaxOutput:
    """Gated relaxation of ``logits`` (N, V) into embeddings (N, D) of ``table`` (V, D).

    ``hard_ids`` (N,) are the sampled tokens for the hard branch. ``gate`` is "entropy"
    (EntRGi), "ste" (straight-through / APS, w = 1), "soft" (Expectation, w = 0) or a tensor (N,)
    of weights in [0, 1]. ``chunk_rows`` bounds the transient (rows, V) buffer (0 = automatic:
    about 2^23 elements on CPU, 2^26 on GPU). ``validate=False`` skips the value checks that
    synchronise with the device (the sampler validates its logits once per denoising step
    instead); non-finite logits then give NaN outputs on every device.
    Returns ``RelaxOutput(embeds (N, D) in table.dtype, weight (N,) float32)``.
    """
    _check(logits, table, hard_ids, gate, temperature, entropy_temperature, validate)
    reason = None if _load() else f"compiled op unavailable: {_state['error']}"
    if reason is None and logits.is_cuda and not _state["cuda"]:
        reason = "the compiled op was built without CUDA kernels"
    if reason is not None:
        _warn_fallback(reason)
        return relax_embeddings_reference(
            logits, table, hard_ids, gate=gate, temperature=temperature,
            entropy_temperature=entropy_temperature, validate=False,
        )
    if isinstance(gate, Tensor):
        gate_weight = gate.detach()
    elif gate == "entropy":
        gate_weight = None                                   # the op computes w from the entropy
    else:
        gate_weight = logits.new_full((logits.shape[0],), 1.0 if gate == "ste" else 0.0, dtype=torch.float32)
    embeds, weight, _stats = torch.ops.entrgi.relax_fwd(
        logits, table.detach(), hard_ids, gate_weight, float(temperature), float(entropy_temperature),
        int(chunk_rows),
    )
    return RelaxOutput(embeds, weight)


def relax_embeddings_reference(logits: Tensor, table: Tensor, hard_ids: Tensor, *, gate: str | Tensor = "entropy",
                               temperature: float = 1.0, entropy_temperature: float = 1.0, chunk_rows: int = 0,
                               validate: bool = True) -> RelaxOutput:
    """Pure-PyTorch specification of :func:`relax_embeddings` (same signature; ``chunk_rows`` is
    accepted and ignored). Keeps the (N, V) softmax for autograd."""
    _check(logits, table, hard_ids, gate, temperature, entropy_temperature, validate)
    wide = torch.float64 if torch.float64 in (logits.dtype, table.dtype) else torch.float32
    n, v = logits.shape
    x = logits.to(wide)
    q = torch.softmax(x / temperature, dim=-1)                      # (N, V)
    soft = q @ table.detach().to(wide)                              # (N, D)
    hard = table.detach()[hard_ids].to(wide)                        # (N, D)
    if isinstance(gate, Tensor):
        w = gate.detach().to(wide)
    elif gate == "ste":
        w = x.new_ones(n)
    elif gate == "soft":
        w = x.new_zeros(n)
    else:
        with torch.no_grad():
            ph = torch.softmax(x / entropy_temperature, dim=-1)
            w = (torch.special.entr(ph).sum(-1) / math.log(v)).clamp(0.0, 1.0)
    embeds = soft + w.unsqueeze(1) * (hard - soft).detach()
    return RelaxOutput(embeds.to(table.dtype), w.to(torch.float32))
