"""JSON-lines files that survive a crash: appended lines flushed, whole files replaced atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (a crash mid-write) is ignored."""
    out = []
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines) - 2:  # only the last written line may be torn
                raise ValueError(f"{path}: line {n + 1} is not JSON") from None
    return out


def append_lines(path: Path, lines: list[dict]) -> None:
    """Append ``lines`` to a JSON-lines file, flushed to disk before returning."""
    with path.open("a", encoding="utf-8") as f:
        for ln in lines:
            f.write(json.dumps(ln) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_lines(path: Path, lines: list[dict]) -> None:
    """``lines`` as a JSON-lines file, replaced atomically."""
    write_atomic(path, "".join(json.dumps(ln) + "\n" for ln in lines))
