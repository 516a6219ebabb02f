"""One live run per output directory.

``RunLock(output_dir, command)`` takes an exclusive lock on ``<output_dir>/.entrgi.lock`` through
``filelock`` (a maintained lock library: an OS-level ``flock`` on Unix, which the kernel releases
when the holding process dies, so a lock left by a killed run never blocks the next one) and
writes who holds it (pid, host, command, start time) to ``<output_dir>/.entrgi-run.json``. A
second run on the same directory is refused at once, before it changes anything, naming the
holder. ``entrgi predict`` (``JsonlPredictionWriter``) and ``entrgi fit`` (``FitOutputs``) hold
one from their set-up checks to their end, on the global-zero process.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from entrgi_core.errors import InputError

LOCK = ".entrgi.lock"
OWNER = ".entrgi-run.json"


class RunLock:
    def __init__(self, output_dir: str | os.PathLike, command: str):
        self.output_dir = Path(output_dir)
        self.command = command
        self._lock: FileLock | None = None
        self._created = False

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def acquire(self) -> None:
        """Hold the directory, or raise ``InputError`` naming the live run that holds it."""
        if self.held:
            return
        self._created = not self.output_dir.exists()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.output_dir / LOCK), timeout=0, thread_local=False, is_singleton=False)
        try:
            lock.acquire()
        except Timeout:
            self._tidy()
            raise InputError(f"{self.output_dir} is in use by another live run ({self._holder()}); nothing was "
                             "changed. Wait for it to finish, or choose another output directory.") from None
        self._lock = lock
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                 "argv": sys.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        (self.output_dir / OWNER).write_text(json.dumps(owner, indent=2))

    @contextlib.contextmanager
    def checking(self, take: bool = True):
        """Hold the directory (when ``take``: the global-zero process) while the run's set-up checks
        run; a check that fails lets it go again."""
        if take:
            self.acquire()
        try:
            yield
        except BaseException:
            self.release()
            raise

    def _holder(self) -> str:
        try:
            owner = json.loads((self.output_dir / OWNER).read_text())
            return (f"{owner.get('command', 'entrgi')}, pid {owner.get('pid')} on host {owner.get('host')}, "
                    f"since {owner.get('started')}")
        except (OSError, ValueError):
            return "a process that has not said who it is yet"

    def release(self) -> None:
        """Let the directory go; one this lock created and nothing else wrote to is removed."""
        if not self.held:
            return
        (self.output_dir / OWNER).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None
        (self.output_dir / LOCK).unlink(missing_ok=True)
        self._tidy()

    def _tidy(self) -> None:
        if self._created and self.output_dir.is_dir() and not any(self.output_dir.iterdir()):
            self.output_dir.rmdir()
        self._created = False
