"""FitOutputs: the output directory of ``entrgi fit`` (``trainer.fit`` of a GuidedFineTuner).

    run.json        what made the run (the module's settings and the data's identity)
    metrics.csv     one row per step: loss, ll, kl, reward_top1, reward_avg, judges, fwd_eq, ...
                    (written by Lightning's logger, ``entrgi_core.training.metrics.FitLogger``)
    hparams.yaml    the module's hyperparameters (the logger's)
    checkpoints/    Lightning's ModelCheckpoint (``last.ckpt``; resume with ``--ckpt_path last``)
    model/          the trained dLLM (``save_pretrained``, LoRA merged), at the end
    curves.png      the metrics against steps, at the end (needs matplotlib)
    summary.json    steps, forward-equivalents spent, the last step's metrics, at the end

A directory holding another run is refused (``overwrite=True`` replaces it, once every check has
passed); one holding this run is refused unless it is resumed (``ckpt_path``) or overwritten, so
nothing written is lost by mistake. On resume the metrics of steps at or after the checkpoint
(logged after it was written) are dropped first, before the logger appends again.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from entrgi_core.config import old_spelling
from entrgi_core.errors import InputError
from entrgi_core.jsonl import write_atomic
from entrgi_core.run_lock import RunLock

RUN, METRICS, SUMMARY, MODEL, CURVES, CHECKPOINTS, HPARAMS = ("run.json", "metrics.csv", "summary.json", "model",
                                                              "curves.png", "checkpoints", "hparams.yaml")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.csv, numbers as floats (a row per step; a repeated step: the last)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                for row in csv.DictReader(f)]
    by_step = {int(r["step"]): r for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def write_metrics(path: Path, rows: list[dict]) -> None:
    keys = sorted(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def plot_curves(rows: list[dict], path: Path, title: str = "") -> bool:
    """The metrics of ``rows`` against steps as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n in rows[0] if n not in ("step", "fwd_eq")] if rows else []
    cols = 3
    fig, axes = plt.subplots((len(names) + cols - 1) // cols or 1, cols, figsize=(12, 3 * ((len(names) + 2) // 3 or 1)),
                             squeeze=False)
    steps = [r["step"] for r in rows]
    for ax, name in zip(axes.flat, names):
        ax.plot(steps, [r[name] for r in rows])
        ax.set_title(name)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


class FitOutputs(Callback):
    def __init__(self, output_dir: str = "outputs/fit", overwrite: bool = False):
        self.output_dir = Path(output_dir)
        self.overwrite = overwrite
        self._identity: dict = {}
        self._started = None
        self._lock = RunLock(self.output_dir, "entrgi fit")

    def identity(self, trainer, pl_module) -> dict:
        dm = trainer.datamodule
        return {**pl_module.run_config(), "data": dm.identity() if dm is not None and hasattr(dm, "identity") else None}

    def check(self, trainer, pl_module) -> None:
        """Refuse a directory holding another run, or this run when it is not resumed."""
        self._identity = json.loads(json.dumps(self.identity(trainer, pl_module)))
        out, run = self.output_dir, self.output_dir / RUN
        if self.overwrite or not run.exists():
            return
        existing = json.loads(run.read_text())
        old = old_spelling(existing.get("config"))
        if old is not None:
            raise InputError(f"{out} holds a training run this version cannot resume: {old}; nothing was changed. "
                             "Choose another output_dir, or pass --overwrite true to replace it.")
        if existing != self._identity:
            diff = sorted(k for k in set(existing) | set(self._identity) if existing.get(k) != self._identity.get(k))
            raise InputError(f"{out} holds another training run (different {', '.join(diff)}); nothing was changed. "
                             "Choose another output_dir, or pass --overwrite true to replace it.")
        if trainer.ckpt_path is None:
            done = read_metrics(out / METRICS)
            at = f" (at step {int(done[-1]['step']) + 1})" if done else ""
            raise InputError(f"{out} holds this training run{at}; nothing was changed. Resume it with --ckpt_path last "
                             "(trainer.fit(..., ckpt_path='last')), or pass --overwrite true to start over.")

    def on_fit_start(self, trainer, pl_module) -> None:
        """After the checkpoint (if any) is chosen and before any compute: check, then prepare."""
        self._started = time.perf_counter()
        if trainer.is_global_zero:
            with self._lock.checking():              # one live run per directory, before any change
                self.check(trainer, pl_module)
            out = self.output_dir
            out.mkdir(parents=True, exist_ok=True)
            if self.overwrite and trainer.ckpt_path is None:
                for name in (METRICS, SUMMARY, CURVES, HPARAMS):
                    (out / name).unlink(missing_ok=True)
                for name in (MODEL, CHECKPOINTS):
                    shutil.rmtree(out / name, ignore_errors=True)
                for shard in out.glob("rollouts*.jsonl"):
                    shard.unlink()
            write_atomic(out / RUN, json.dumps(self._identity, indent=2, sort_keys=True))
        trainer.strategy.barrier("entrgi-fit-start")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._lock.release()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._lock.release()                           # a run that failed holds the directory no longer

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:                       # after the checkpoint's restore: drop later rows
            rows = [r for r in read_metrics(self.output_dir / METRICS) if r["step"] < trainer.global_step]
            if rows or (self.output_dir / METRICS).exists():
                write_metrics(self.output_dir / METRICS, rows)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        out = self.output_dir
        pl_module.export(out / MODEL)
        rows = read_metrics(out / METRICS)
        plotted = bool(rows) and plot_curves(rows, out / CURVES, f"entrgi fit: {pl_module.objective}, "
                                             f"{pl_module.method} rollouts")
        summary = {"steps": trainer.global_step, "forward_equivalents": pl_module.spent,
                   "last": rows[-1] if rows else None, "model": str(out / MODEL),
                   "curves": str(out / CURVES) if plotted else None,
                   "wall_seconds_this_run": time.perf_counter() - self._started if self._started else None}
        write_atomic(out / SUMMARY, json.dumps(summary, indent=2))
