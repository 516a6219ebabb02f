"""Run every guidance method over prompts with trainer.predict and score the outcome against
the tiny world's exact oracle. Shared by ``make demo`` and ``benchmarks/tinyworld_eval.py``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning as L

from entrgi_core.config import DenoiseConfig
from entrgi_core.data import PromptDataModule
from entrgi_core.errors import InputError
from entrgi_core.module import GuidedDenoiser
from entrgi_core.progress import PromptProgressBar
from entrgi_core.tinyworld.judges import OracleJudge, ValidityJudge
from entrgi_core.writer import JsonlPredictionWriter, read_jsonl
from guidance import EntRGi, Expectation, NoGuidance, StraightThrough

RESPONSE_LEN = 32


def methods() -> list[tuple[str, object]]:
    """(label, strategy) in the order of the paper's comparison; paper defaults M=3, eta=0.5, tau=0.7."""
    return [("Best-of-N", NoGuidance()), ("Expectation", Expectation()), ("APS", StraightThrough()),
            ("EntRGi", EntRGi())]


def demo_config(seed: int = 0) -> DenoiseConfig:
    return DenoiseConfig(steps=32, max_new_tokens=RESPONSE_LEN, num_samples=4, temperature=0.7, top_p=0.95,
                         alg="entropy", seed=seed)


@dataclass
class MethodResult:
    method: str
    top1_reward: float        # mean over prompts of the best of K rewards (RM, on text)
    avg_reward: float         # mean over prompts of the mean of K rewards
    top1_oracle: float        # mean oracle sentiment of the Top@1 responses (an invalid one counts -1)
    valid: float              # share of all K responses that are sentences of the grammar
    top1_valid: float         # share of Top@1 responses that are
    seconds: float            # generation time for all prompts
    weight_by_step: dict      # mean entropy weight per guided step


def score(method: str, records: list[dict], summary: dict) -> MethodResult:
    n = len(records)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return MethodResult(
        method=method,
        top1_reward=mean([r["best_reward"] for r in records]),
        avg_reward=mean([r["avg_reward"] for r in records]),
        top1_oracle=mean([r["judges"]["oracle"]["top1"] for r in records]),
        valid=mean([s for r in records for s in r["judges"]["valid"]["scores"]]),
        top1_valid=mean([r["judges"]["valid"]["top1"] for r in records]),
        seconds=sum(r["seconds"] for r in records) if n else 0.0,
        weight_by_step={int(k): v for k, v in summary.get("mean_entropy_weight_by_step", {}).items()},
    )


def run_methods(dlm, rm, prompts: Path, out_dir: Path, config: DenoiseConfig, *, progress: bool = True,
                batch_size: int = 8) -> list[MethodResult]:
    """trainer.predict once per method; outputs under ``out_dir/<method>``, resumed when they hold
    this configuration's predictions and replaced (once this run has finished) when they hold
    another's: the directory is the demo's own."""
    results = []
    for label, strategy in methods():
        target = out_dir / label.lower().replace("-", "_")
        if progress:
            print(f"{label}:", flush=True)
        module = GuidedDenoiser(dlm, rm, strategy, config, judges=[OracleJudge(), ValidityJudge()])
        data = PromptDataModule(path=str(prompts), id_field="id", batch_size=batch_size)
        try:
            _predict(module, data, target, progress, overwrite=False)
        except InputError:                             # another configuration's outputs (another seed, version)
            print(f"[demo] {target} holds another configuration's predictions; replacing them.", flush=True)
            _predict(module, data, target, progress, overwrite=True)
        summary = json.loads((target / "summary.json").read_text())
        results.append(score(label, read_jsonl(target / "predictions.jsonl"), summary))
    return results


def _predict(module, data, target: Path, progress: bool, *, overwrite: bool) -> None:
    callbacks = [JsonlPredictionWriter(str(target), overwrite=overwrite)] + ([PromptProgressBar()] if progress else [])
    trainer = L.Trainer(accelerator="cpu", devices=1, inference_mode=False, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=progress, callbacks=callbacks)
    trainer.predict(module, datamodule=data, return_predictions=False)
