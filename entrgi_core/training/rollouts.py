"""Rollouts as training data for any trainer: one JSON line per response,

    {"prompt", "completion", "reward", "method", "step", "prompt_id", "sample", "best",
     "select_score", "judges": {name: score}, "seed", ...}

``prompt`` / ``completion`` with a scalar ``reward``: the fields TRL's and d1's trainers read.
``entrgi predict --export_rollouts true`` writes ``rollouts.jsonl`` beside the predictions (from
them, so it resumes with them); ``entrgi fit`` writes every training step's rollouts through
``RolloutWriter``: each rank appends ``rollouts-rank{R}.jsonl`` as a step ends (flushed and
fsynced); at the end rank 0 merges the shards into ``rollouts.jsonl`` (by step, prompt position,
sample). A run resumed from a checkpoint at step s first drops the lines of steps >= s (written
after that checkpoint), so no step's rollouts are lost or duplicated.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback

from entrgi_core.jsonl import append_lines, read_jsonl, write_lines

ROLLOUTS = "rollouts.jsonl"


def rollout_lines(record: dict, step: int | None = None, **extra) -> list[dict]:
    """The K rollout lines of one generation record (``GenerationResult.record``); ``extra``
    fields are added to (or replace those of) every line."""
    out = []
    for k, completion in enumerate(record["responses"]):
        line = {"prompt": record["prompt"], "completion": completion,
                "reward": record["rewards"][k] if "rewards" in record else None, "method": record.get("method"),
                "step": step, "prompt_id": record["prompt_id"], "sample": k, "best": k == record.get("best_index")}
        if "select_scores" in record:
            line["select_score"] = record["select_scores"][k]
        if record.get("judges"):
            line["judges"] = {name: j["scores"][k] for name, j in record["judges"].items()}
        if record.get("seed") is not None:
            line["seed"] = record["seed"]
        line.update(extra)
        out.append(line)
    return out


class RolloutWriter(Callback):
    """Every training step's rollouts to ``output_dir`` (see the module docstring)."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)

    def shard(self, rank: int) -> Path:
        return self.output_dir / f"rollouts-rank{rank}.jsonl"

    def on_train_start(self, trainer, pl_module) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        shard, start = self.shard(trainer.global_rank), trainer.global_step
        kept = [ln for ln in read_jsonl(shard) if ln.get("step") is not None and ln["step"] < start]
        write_lines(shard, kept)                     # a fresh run starts empty; a resumed one at its checkpoint

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        lines = outputs.get("rollouts") if isinstance(outputs, dict) else None
        if not lines:
            return
        append_lines(self.shard(trainer.global_rank), lines)

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier("entrgi-rollouts-merge")
        if trainer.is_global_zero:
            lines = [ln for s in sorted(self.output_dir.glob("rollouts-rank*.jsonl")) for ln in read_jsonl(s)]
            lines.sort(key=lambda ln: (ln["step"], ln.get("position", 0), ln["sample"]))
            write_lines(self.output_dir / ROLLOUTS, lines)
        trainer.strategy.barrier("entrgi-rollouts-merged")
