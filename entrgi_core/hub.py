"""Loading helpers shared by the model and reward adapters (a leaf module: imports no other
entrgi module).

``check_source`` makes a model path that is neither a local directory nor reachable fail at once,
in one paragraph that names it, instead of after the hub client's retries; ``check_remote_code``
refuses models that ship their own code unless the user opted in; ``as_dtype`` reads dtype names
as written in YAML; ``max_positions`` reads a config's position limit.
"""
from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import torch

from entrgi_core.errors import InputError

_REACHABLE: dict[str, bool] = {}


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return "https://huggingface.co"


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection attempt to the hub (no retries), remembered for the process."""
    endpoint = _hub_endpoint()
    if endpoint not in _REACHABLE:
        url = urlparse(endpoint)
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=timeout).close()
            _REACHABLE[endpoint] = True
        except OSError:
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


def _cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id, or no cache: not cached
        return False


def check_source(path: str, what: str) -> None:
    """Fail at once, naming ``path``, when it is neither a local directory nor a hub name that can
    be loaded (cached, or the hub reachable). ``what`` says which argument it was."""
    if not isinstance(path, str) or not path.strip():
        raise InputError(f"{what}: expected a local directory or a hub model name, got {path!r}")
    if os.path.isdir(path):
        return
    # hub names are "org/name" or a bare legacy "name"; anything else is meant as a local path
    looks_local = path.startswith((".", "/", "~")) or path.count("/") > 1 or "\\" in path or os.path.exists(path)
    if looks_local:
        reason = "is a file, not a model directory" if os.path.isfile(path) else "does not exist"
        raise FileNotFoundError(f"{what}: {path!r} {reason}. Give the directory that holds config.json and the "
                                "weights (from save_pretrained), or a hub name such as 'org/model'.")
    if _cached(path):
        return
    if _offline() or not _hub_reachable():
        state = "offline mode is set (HF_HUB_OFFLINE)" if _offline() else f"the hub ({_hub_endpoint()}) cannot be reached"
        raise FileNotFoundError(
            f"{what}: {path!r} is not a local directory and not in the local cache, and {state}. "
            "Download it on a machine with network access (e.g. `huggingface-cli download "
            f"{path} --local-dir DIR`) and pass DIR instead.")


def check_remote_code(path: str, trust_remote_code: bool) -> None:
    """Fail with a clear message, before loading weights, when ``path`` needs remote code."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise InputError(
                f"{path} ships its own modelling code; loading it runs that code. If you trust it, pass "
                f"trust_remote_code=True (CLI: --dlm.init_args.trust_remote_code true or "
                f"--reward.init_args.trust_remote_code true)."
            ) from None
        raise


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch.dtype from a name ("bfloat16", "float32", ...) as written in YAML configs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise InputError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
    return value


def max_positions(config) -> int | None:
    """The number of positions a model's config allows (None when it states none)."""
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
