"""GuidedDenoiser: the LightningModule whose predict step runs the guided sampler.

Composed from injected objects: ``model`` (a DiffusionLM), ``reward`` (a RewardAdapter or None),
``guidance`` (a Guidance strategy) and ``config`` (DenoiseConfig). Nothing is trained: the models
are frozen and there is no optimizer. Guidance needs autograd, so run it with
``Trainer(inference_mode=False)`` (the ``entrgi`` CLI does).
"""
from __future__ import annotations

import lightning as L
import torch

from entrgi_core.config import DenoiseConfig
from entrgi_core.models import DiffusionLM
from entrgi_core.sampler import generate
from guidance.base import Guidance
from guidance.none import NoGuidance
from rewards.base import RewardAdapter


class GuidedDenoiser(L.LightningModule):
    def __init__(self, model: DiffusionLM, reward: RewardAdapter | None = None, guidance: Guidance | None = None,
                 config: DenoiseConfig | None = None, trace: bool = True):
        super().__init__()
        self.model = model
        self.reward = reward
        self.guidance = guidance if guidance is not None else NoGuidance()
        self.config = config if config is not None else DenoiseConfig()
        self.trace = trace
        if self.guidance.needs_reward and reward is None:
            raise ValueError(f"GuidedDenoiser: {type(self.guidance).__name__} needs a reward model (reward=None)")
        self.save_hyperparameters(self.run_config())

    def run_config(self) -> dict:
        """What determines the predictions: used for hparams, summary.json and the resume check."""
        g = self.guidance
        return {
            "method": g.name,
            "model": getattr(self.model, "name", type(self.model).__name__),
            "reward": getattr(self.reward, "name", type(self.reward).__name__) if self.reward is not None else None,
            "guidance": {"class": f"{type(g).__module__}.{type(g).__name__}", "steps": g.steps, "lr": g.lr,
                         "optimizer": g.optimizer, "temperature": g.temperature, "top_p": g.top_p,
                         "entropy_temperature": g.entropy_temperature, "start": g.start, "stop": g.stop},
            "config": self.config.to_dict(),
        }

    def configure_optimizers(self):
        return None

    def predict_step(self, batch: dict, batch_idx: int = 0) -> list[dict]:
        if self.guidance.needs_reward and torch.is_inference_mode_enabled():
            raise RuntimeError(
                "GuidedDenoiser: guidance differentiates the reward model, which torch.inference_mode forbids. "
                "Use Trainer(inference_mode=False) (the `entrgi` CLI sets it)."
            )
        res = generate(self.model, batch["prompt"], reward=self.reward, guidance=self.guidance, config=self.config,
                       prompt_ids=batch["id"], trace=self.trace)
        records = res.records(method=self.guidance.name, seed=self.config.seed)
        seconds = res.seconds / len(records)
        for rec in records:
            rec["seconds"] = seconds
            if res.trace:
                rec["weight_by_step"] = dict(zip(map(int, res.trace["step"]), res.trace["weight"]))
        return records
