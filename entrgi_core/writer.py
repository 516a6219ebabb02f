"""JsonlPredictionWriter: resumable, crash-safe JSON-lines output of ``trainer.predict``.

Each rank appends one line per prompt to ``shard-rank{R}.jsonl`` as soon as its batch finishes
(flushed and fsynced). At the end rank 0 merges the shards into ``predictions.jsonl`` (sorted by
prompt id, deduplicated: DDP's sampler pads by repeating prompts) and writes ``summary.json``.
With ``resume=True`` prompts already present (in predictions or shards) are skipped, so a killed
run continues where it stopped. ``run.json`` records the configuration that made the outputs; a
later run with another configuration is refused unless ``overwrite=True``.

A run that replaces outputs (``overwrite=True`` or ``resume=False``) writes its shards under
``.staging/`` and replaces ``predictions.jsonl``, ``summary.json`` and ``run.json`` only when it
has finished: a run that fails leaves the directory as it was. ``export_rollouts=True`` also
writes ``rollouts.jsonl``, one line per response (``entrgi_core.training.rollouts``), from the predictions.
"""
from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from entrgi_core.config import old_spelling
from entrgi_core.data import PromptDataModule
from entrgi_core.errors import InputError
from entrgi_core.jsonl import append_lines, read_jsonl, write_atomic, write_lines
from entrgi_core.run_lock import RunLock
from entrgi_core.training.rollouts import ROLLOUTS, rollout_lines

__all__ = ["JsonlPredictionWriter", "read_jsonl", "summarize", "total_compute"]

PREDICTIONS, SUMMARY, RUN, STAGING = "predictions.jsonl", "summary.json", "run.json", ".staging"


class JsonlPredictionWriter(BasePredictionWriter):
    def __init__(self, output_dir: str = "outputs/predict", resume: bool = True, overwrite: bool = False,
                 export_rollouts: bool = False):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.resume, self.overwrite, self.export_rollouts = resume, overwrite, export_rollouts
        self._shard = None
        self._started = None
        self._config: dict = {}
        self._lock = RunLock(self.output_dir, "entrgi predict")

    # ----------------------------------------------------------------------- set-up

    @property
    def replaces(self) -> bool:
        """Whether this run replaces the directory's outputs (written under ``.staging/`` until done)."""
        return self.overwrite or not self.resume

    @property
    def _shard_dir(self) -> Path:
        return self.output_dir / STAGING if self.replaces else self.output_dir

    def _shards(self, where: Path | None = None) -> list[Path]:
        return sorted((where or self.output_dir).glob("shard-rank*.jsonl"))

    def done_records(self) -> list[dict]:
        """The records already in the directory (predictions and shards of an unfinished run)."""
        return read_jsonl(self.output_dir / PREDICTIONS) + [r for s in self._shards() for r in read_jsonl(s)]

    def _run_records(self) -> list[dict]:
        """The records this run's outputs are made of."""
        if self.replaces:
            return [r for s in self._shards(self._shard_dir) for r in read_jsonl(s)]
        return self.done_records()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Checks only: the output directory is changed in ``on_predict_start``, after every set-up
        check (the module's prompt checks included) has passed."""
        with self._lock.checking(take=trainer.is_global_zero):   # one live run per directory, before any change
            self._check(trainer, pl_module)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._lock.release()

    def _check(self, trainer, pl_module) -> None:
        self._config = self.run_identity(trainer, pl_module)
        out = self.output_dir
        run_file = out / RUN
        if trainer.is_global_zero and not self.overwrite and self.done_records():
            existing = json.loads(run_file.read_text()) if run_file.exists() else None
            if existing != self._config:
                old = old_spelling((existing or {}).get("config"))
                if old is not None:
                    raise InputError(f"{out} holds predictions this version cannot resume or extend: {old}; nothing "
                                     "was changed. Choose another output directory, or pass --overwrite true to "
                                     "replace them.")
                what = _difference(existing, self._config)
                raise InputError(
                    f"{out} holds predictions of a different {what} ({run_file}); nothing was changed. "
                    "Choose another output directory, or pass overwrite=True (CLI: --overwrite true) to replace them."
                )
        trainer.strategy.barrier("entrgi-writer-setup")
        done = {r["prompt_id"] for r in self.done_records()} if self.resume and not self.overwrite else set()
        dm = trainer.datamodule
        if done and isinstance(dm, PromptDataModule):
            dm.leave_out(done)
        self._shard = self._shard_dir / f"shard-rank{trainer.global_rank}.jsonl"

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
            if self.replaces:                                          # the old outputs stay until this run is done
                shutil.rmtree(self._shard_dir, ignore_errors=True)
                self._shard_dir.mkdir()
            else:
                write_atomic(out / RUN, json.dumps(self._config, indent=2, sort_keys=True))
        trainer.strategy.barrier("entrgi-writer-start")

    def on_exception(self, trainer, pl_module, exception) -> None:
        if trainer.is_global_zero and self.replaces:                   # a failed replacing run leaves nothing
            shutil.rmtree(self._shard_dir, ignore_errors=True)
        self._lock.release()                           # a run that failed holds the directory no longer

    # ----------------------------------------------------------------------- writing

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        append_lines(self._shard, prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier("entrgi-writer-merge")
        if trainer.is_global_zero:
            wall = time.perf_counter() - self._started if self._started is not None else None
            self.merge(pl_module, wall_seconds=wall)
        trainer.strategy.barrier("entrgi-writer-merged")

    def merge(self, pl_module=None, wall_seconds: float | None = None) -> list[dict]:
        """Fold shards into predictions.jsonl (sorted, one record per prompt) and write summary.json."""
        by_id = {}
        for rec in self._run_records():
            by_id.setdefault(rec["prompt_id"], rec)  # earlier records win: a rerun never rewrites one
        records = [by_id[k] for k in sorted(by_id, key=str)]
        write_atomic(self.output_dir / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in records))
        summary = summarize(records, self._config or None)
        summary["wall_seconds_this_run"] = wall_seconds
        write_atomic(self.output_dir / SUMMARY, json.dumps(summary, indent=2))
        if self.export_rollouts:
            write_lines(self.output_dir / ROLLOUTS, [ln for r in records for ln in rollout_lines(r)])
        if self.replaces:
            write_atomic(self.output_dir / RUN, json.dumps(self._config, indent=2, sort_keys=True))
        for s in self._shards():                                       # this run's, or an older unfinished run's
            s.unlink()
        shutil.rmtree(self.output_dir / STAGING, ignore_errors=True)   # this run's, or a killed replacing run's
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


def gain_summary(records: list[dict]) -> dict:
    """With a baseline (``--baseline true``): the mean gain over Best-of-N at the same K under the
    reward and each judge, Best-of-N's compute, and the judges that did not rise where the reward did."""
    gains = [r["gain_over_best_of_n"] for r in records if r.get("gain_over_best_of_n")]
    if not gains:
        return {}
    mean = {key: sum(g[key] for g in gains) / len(gains) for key in gains[0]}
    bon = [r["best_of_n"].get("forward_equivalents") for r in records if r.get("best_of_n")]
    return {"gain_over_best_of_n": mean,
            "best_of_n_forward_equivalents": sum(bon) if bon and None not in bon else None,
            "gain_flags": [k for k in mean if k != "reward" and mean["reward"] > 0 and mean[k] <= 0]}


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
        "selected_by": next((r["selected_by"] for r in records if r.get("selected_by")), None),
        "judges": {name: {"mean_top1": mean([(r.get("judges") or {}).get(name, {}).get("top1") for r in records]),
                          "mean_avg": mean([(r.get("judges") or {}).get(name, {}).get("avg") for r in records])}
                   for name in dict.fromkeys(n for r in records for n in (r.get("judges") or {}))},
        "mean_denoising_steps": mean([r.get("denoising_steps") for r in records]),
        "mean_entropy_weight_by_step": {s: sum(v) / len(v) for s, v in sorted(steps.items())},
        "vocabulary": (config or {}).get("vocabulary"),
        "compute": total_compute(records),
        **gain_summary(records),
        "config": config,
        "versions": {"entrgi": entrgi_core.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "lightning": lightning.__version__,
                     "python": platform.python_version()},
    }
