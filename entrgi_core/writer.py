"""JsonlPredictionWriter: resumable, crash-safe JSON-lines output of ``trainer.predict``.

Each rank appends one line per prompt to ``shard-rank{R}.jsonl`` as soon as its batch finishes
(flushed and fsynced). At the end rank 0 merges the shards into ``predictions.jsonl`` (sorted by
prompt id, deduplicated: DDP's sampler pads by repeating prompts) and writes ``summary.json``.
With ``resume=True`` prompts already present (in predictions or shards) are skipped, so a killed
run continues where it stopped. ``run.json`` records the configuration that made the outputs; a
later run with another configuration is refused unless ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from entrgi_core.errors import InputError

PREDICTIONS, SUMMARY, RUN = "predictions.jsonl", "summary.json", "run.json"


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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class JsonlPredictionWriter(BasePredictionWriter):
    def __init__(self, output_dir: str = "outputs/predict", resume: bool = True, overwrite: bool = False):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.resume, self.overwrite = resume, overwrite
        self._shard = None
        self._started = None
        self._config: dict = {}

    # ----------------------------------------------------------------------- set-up

    def _shards(self) -> list[Path]:
        return sorted(self.output_dir.glob("shard-rank*.jsonl"))

    def done_records(self) -> list[dict]:
        return read_jsonl(self.output_dir / PREDICTIONS) + [r for s in self._shards() for r in read_jsonl(s)]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Checks only: the output directory is changed in ``on_predict_start``, after every set-up
        check (the module's prompt checks included) has passed."""
        self._config = self.run_identity(trainer, pl_module)
        out = self.output_dir
        run_file = out / RUN
        if trainer.is_global_zero and not self.overwrite and self.done_records():
            existing = json.loads(run_file.read_text()) if run_file.exists() else None
            if existing != self._config:
                what = _difference(existing, self._config)
                raise InputError(
                    f"{out} holds predictions of a different {what} ({run_file}); nothing was changed. "
                    "Choose another output directory, or pass overwrite=True (CLI: --overwrite true) to replace them."
                )
        trainer.strategy.barrier("entrgi-writer-setup")
        done = {r["prompt_id"] for r in self.done_records()} if self.resume and not self.overwrite else set()
        dm = trainer.datamodule
        if done and dm is not None and hasattr(dm, "skip_ids"):
            dm.skip_ids = done
        self._shard = out / f"shard-rank{trainer.global_rank}.jsonl"

    @staticmethod
    def run_identity(trainer, pl_module) -> dict:
        """The configuration that makes the outputs, and the data source they belong to."""
        config = dict(pl_module.run_config()) if hasattr(pl_module, "run_config") else {}
        dm = trainer.datamodule
        config["data"] = dm.identity() if dm is not None and hasattr(dm, "identity") else None
        return config

    def on_predict_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        out = self.output_dir
        if trainer.is_global_zero:
            out.mkdir(parents=True, exist_ok=True)
            if self.overwrite or not self.resume:
                for p in [out / PREDICTIONS, out / SUMMARY, *self._shards()]:
                    p.unlink(missing_ok=True)
            _write_atomic(out / RUN, json.dumps(self._config, indent=2, sort_keys=True))
        trainer.strategy.barrier("entrgi-writer-start")

    # ----------------------------------------------------------------------- writing

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        with self._shard.open("a", encoding="utf-8") as f:
            for rec in prediction:
                f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier("entrgi-writer-merge")
        if trainer.is_global_zero:
            wall = time.perf_counter() - self._started if self._started is not None else None
            self.merge(pl_module, wall_seconds=wall)
        trainer.strategy.barrier("entrgi-writer-merged")

    def merge(self, pl_module=None, wall_seconds: float | None = None) -> list[dict]:
        """Fold shards into predictions.jsonl (sorted, one record per prompt) and write summary.json."""
        by_id = {}
        for rec in self.done_records():
            by_id.setdefault(rec["prompt_id"], rec)  # earlier records win: a rerun never rewrites one
        records = [by_id[k] for k in sorted(by_id, key=str)]
        _write_atomic(self.output_dir / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in records))
        for s in self._shards():
            s.unlink()
        summary = summarize(records, self._config or None)
        summary["wall_seconds_this_run"] = wall_seconds
        _write_atomic(self.output_dir / SUMMARY, json.dumps(summary, indent=2))
        return records


def _difference(old: dict | None, new: dict) -> str:
    """Which part of the run identity changed, in words."""
    if not isinstance(old, dict):
        return "configuration"
    if old.get("data") != new.get("data") and {k: v for k, v in old.items() if k != "data"} == \
            {k: v for k, v in new.items() if k != "data"}:
        return "data source"
    return "configuration"


def total_compute(records: list[dict]) -> dict:
    """Sums over the records of their compute counters, and the per-prompt means."""
    keys = sorted({k for r in records for k in (r.get("compute") or {})})
    total = {k: sum((r.get("compute") or {}).get(k, 0) for r in records) for k in keys}
    total["seconds"] = sum(r.get("seconds") or 0.0 for r in records)
    n = max(len(records), 1)
    return {"total": total, "per_prompt": {k: v / n for k, v in total.items()}}


def summarize(records: list[dict], config: dict | None) -> dict:
    import lightning
    import torch
    import transformers

    import entrgi_core

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    steps: dict[int, list[float]] = {}
    for r in records:
        for s, w in (r.get("weight_by_step") or {}).items():
            steps.setdefault(int(s), []).append(w)
    return {
        "prompts": len(records),
        "mean_top1_reward": mean([r.get("best_reward") for r in records]),
        "mean_avg_reward": mean([r.get("avg_reward") for r in records]),
        "seconds_per_prompt": mean([r.get("seconds") for r in records]),
        "mean_tokens_per_forward": mean([r.get("tokens_per_forward") for r in records]),
        "mean_denoising_steps": mean([r.get("denoising_steps") for r in records]),
        "mean_entropy_weight_by_step": {s: sum(v) / len(v) for s, v in sorted(steps.items())},
        "vocabulary": (config or {}).get("vocabulary"),
        "compute": total_compute(records),
        "config": config,
        "versions": {"entrgi": entrgi_core.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "lightning": lightning.__version__,
                     "python": platform.python_version()},
    }
