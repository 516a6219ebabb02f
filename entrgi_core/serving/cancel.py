"""Requests whose clients left, shared between the HTTP process and the model's workers.

The HTTP side (``OpenAIGate``) gives each request an id and marks it here when its client
disconnects before the answer; a worker reads the marks before it starts a batch (a marked
request is dropped) and after every denoising step (a generate all of whose requests are marked
stops). A mark is an empty file named by the id in one folder that the server makes at start and
removes at exit: the HTTP process and LitServe's workers are separate processes, and a file is
what both see without a server of its own. Imports no torch.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

ID = re.compile(r"^[0-9a-f]{32}$")            # uuid4().hex: a file name, never a path


class Cancellations:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @classmethod
    def create(cls) -> "Cancellations":
        return cls(tempfile.mkdtemp(prefix="entrgi-serve-cancel-"))

    def _path(self, rid: str) -> Path:
        if not ID.match(rid or ""):
            raise ValueError(f"Cancellations: a request id is 32 lowercase hex digits, got {rid!r}")
        return self.folder / rid

    def mark(self, rid: str) -> None:
        self._path(rid).touch()

    def gone(self, rid: str) -> bool:
        """Whether ``rid``'s client left (False for a request without an id: nothing marks it)."""
        return bool(rid) and self._path(rid).exists()

    def clear(self, rid: str) -> None:
        if rid:
            self._path(rid).unlink(missing_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
