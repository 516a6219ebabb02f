"""GuidedDenoiser: the LightningModule whose predict step runs the guided sampler.

Composed from injected objects: ``model`` (a DiffusionModel), ``reward`` (a RewardAdapter or None),
``guidance`` (a Guidance strategy; None = unguided) and ``config`` (DenoiseConfig). Nothing is
trained: the models are frozen and there is no optimizer. Guidance needs autograd, so run it with
``Trainer(inference_mode=False)`` (the ``entrgi`` CLI does).
"""
from __future__ import annotations

from typing import Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from entrgi_core.config import DenoiseConfig
from entrgi_core.contract import Guidance
from entrgi_core.errors import InputError
from entrgi_core.models import DiffusionModel
from entrgi_core.plan import Plan
from entrgi_core.sampler import best_of_n_plan, run, with_baseline


class GuidedDenoiser(L.LightningModule):
    """Args:
        diagnose: also record, per prompt and guided step, the reward after each update (one more
            reward-model forward per guided step). The gate weight and the reward before the update
            are recorded whenever a step is guided: they cost nothing extra.
        baseline: also run Best-of-N at the same K and seeds on each batch (its compute reported apart)
            and record each prompt's gain over it under the reward and each judge
            (``gain_over_best_of_n``; ``summary.json`` averages them and flags a judge that did not
            rise where the reward did).
    """

    def __init__(self, model: DiffusionModel, reward=None, guidance: Guidance | None = None,
                 config: DenoiseConfig | None = None, diagnose: bool = False, select=None,
                 judges: Optional[list[torch.nn.Module]] = None, baseline: bool = False):
        super().__init__()
        self.model = model
        self.reward = reward
        self.guidance = guidance
        self.select = select
        self.judges = torch.nn.ModuleList(judges or [])                 # moved to the device with the module
        self.plan = Plan.check(model, reward, guidance, config, select=select, judges=list(self.judges))  # once
        self.config = self.plan.config
        self.diagnose = diagnose
        self.baseline = bool(baseline)
        self._baseline_plan = best_of_n_plan(self.plan) if self.baseline else None   # refused here, not mid-run
        self._prompts_checked = False
        self.save_hyperparameters(self.run_config())

    @property
    def guided(self) -> bool:
        return self.plan.guided

    @property
    def method(self) -> str:
        return self.guidance.name if self.guidance is not None else "bon"

    def run_config(self) -> dict:
        """What determines the predictions: used for hparams, summary.json and the resume check.
        A guided run computes the vocabulary alignment here, so poor coverage fails at once."""
        reports = {term.name: term.alignment(self.model.tokenizer, self.model.vocab_size).report()
                   for _, term in self._guiding_terms()}
        vocab = next(iter(reports.values())) if len(reports) == 1 else (reports or None)
        return {
            "method": self.method,
            "model": getattr(self.model, "name", type(self.model).__name__),
            "reward": self.reward.identity() if self.reward is not None else None,
            "select": self.select.identity() if self.select is not None else None,
            "judges": [j.identity() for j in self.judges],
            "guidance": self.guidance.settings() if self.guidance is not None else None,
            "config": self.config.to_dict(),
            "diagnose": self.diagnose,
            **({"baseline": True} if getattr(self, "baseline", False) else {}),
            "vocabulary": vocab,
        }

    def _guiding_terms(self) -> list:
        """The reward models guidance reads through embeddings (none when unguided)."""
        reads = self.guided and self.guidance.reads_embeddings
        return self.reward.parts() if reads else []

    def setup(self, stage: str) -> None:
        """Before anything runs: the alignment report, and every prompt of the data module within the
        models' position limits (one clear error naming the offending prompt ids otherwise); batches
        are not checked again."""
        for _, term in self._guiding_terms():
            al = term.alignment(self.model.tokenizer, self.model.vocab_size)
            rank_zero_info(f"[entrgi] vocabulary alignment {self.model.name} -> {term.name}: {al.summary()}")
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        items = getattr(dm, "items", None)
        if items:
            prompts, ids = [it["prompt"] for it in items], [it["id"] for it in items]
            self.plan.check_lengths(prompts, ids, self.model.encode_prompts(prompts))
            self._prompts_checked = True

    def configure_optimizers(self):
        return None

    def predict_step(self, batch: dict, batch_idx: int = 0) -> list[dict]:
        if self.guided and torch.is_inference_mode_enabled():
            raise InputError(
                "GuidedDenoiser: guidance differentiates the reward model, which torch.inference_mode forbids. "
                "Use Trainer(inference_mode=False) (the `entrgi` CLI sets it)."
            )
        prompts = self.plan.batch(batch["prompt"], batch["id"], check_lengths=not self._prompts_checked)
        res = run(self.plan, prompts, diagnose=self.diagnose)
        if self._baseline_plan is not None:
            res = with_baseline(res, run(self._baseline_plan, prompts))
        records = res.records(method=self.method, seed=self.config.seed)
        seconds = res.seconds / len(records)
        for rec in records:
            rec["seconds"] = seconds
        return records
