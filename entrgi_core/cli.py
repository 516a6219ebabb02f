"""``entrgi``: the command line, on LightningCLI.

    entrgi predict --config configs/tiny.yaml
    entrgi predict --config cfg.yaml --trainer.devices 4 --trainer.strategy ddp \\
                   --guidance guidance.EntRGi --guidance.steps 3
    entrgi predict --config cfg.yaml --print_config

Top-level groups: ``dlm`` (a DiffusionLM), ``reward`` (a RewardAdapter, optional), ``guidance``
(a Guidance strategy), ``sampling`` (DenoiseConfig), ``data`` (PromptDataModule), ``output_dir``,
``resume``, ``overwrite``, and Lightning's ``trainer``. Predictions go to ``output_dir``
(resumable JSON lines, see entrgi_core.writer).
"""
from __future__ import annotations

import os
import sys
import warnings

import torch
from lightning.pytorch.cli import LightningCLI

from entrgi_core.config import DenoiseConfig
from entrgi_core.data import PromptDataModule
from entrgi_core.models import DiffusionLM
from entrgi_core.module import GuidedDenoiser
from entrgi_core.progress import PromptProgressBar
from entrgi_core.writer import JsonlPredictionWriter
from guidance.base import Guidance
from rewards.base import RewardAdapter


class EntrgiCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_subclass_arguments(DiffusionLM, "dlm", required=True, help="the diffusion LM")
        parser.add_subclass_arguments(RewardAdapter, "reward", required=False, help="the reward model")
        parser.add_subclass_arguments(Guidance, "guidance", required=True, help="the guidance strategy")
        parser.add_class_arguments(DenoiseConfig, "sampling", help="sampler settings")
        for src, dst in (("dlm", "model.model"), ("reward", "model.reward"), ("guidance", "model.guidance"),
                         ("sampling", "model.config")):
            parser.link_arguments(src, dst, apply_on="instantiate")
        parser.add_argument("--output_dir", type=str, default="outputs/predict", help="where predictions go")
        parser.add_argument("--resume", type=bool, default=True, help="skip prompts already in output_dir")
        parser.add_argument("--overwrite", type=bool, default=False, help="replace outputs of another config")
        parser.set_defaults({"trainer.inference_mode": False, "trainer.logger": False,
                             "trainer.enable_checkpointing": False, "trainer.enable_model_summary": False})

    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        _check_devices(cfg.trainer)
        # the data module reads and validates the prompts: fail on a bad file before loading models
        PromptDataModule(**cfg.data.as_dict())

    def instantiate_trainer(self, **kwargs):
        cfg = self._cfg()
        extra = [JsonlPredictionWriter(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)]
        if cfg.trainer.get("enable_progress_bar") is not False:
            extra.append(PromptProgressBar())
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + extra
        return super().instantiate_trainer(**kwargs)


def _check_devices(trainer_cfg) -> None:
    devices, accel = trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)             # "--trainer.devices 4" arrives as a string
    if not isinstance(devices, int) or devices == -1:
        return
    if devices < 1:
        raise ValueError(f"entrgi: --trainer.devices must be >= 1 (or -1 for all), got {devices}")
    if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
        have = torch.cuda.device_count()
        if devices > have:
            raise ValueError(f"entrgi: --trainer.devices {devices} but only {have} CUDA device(s) are available")
    elif devices > (os.cpu_count() or 1):
        raise ValueError(f"entrgi: --trainer.devices {devices} CPU processes but this machine has "
                         f"{os.cpu_count()} cores")


def main(args: list[str] | None = None) -> None:
    """Console entry point. Bad input ends with one line on stderr and exit status 2
    (ENTRGI_DEBUG=1 shows the traceback)."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    try:
        EntrgiCLI(GuidedDenoiser, PromptDataModule, subclass_mode_model=False, save_config_callback=None,
                  auto_configure_optimizers=False, args=args,
                  parser_kwargs={"description": __doc__, "default_env": False})
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("ENTRGI_DEBUG") == "1":
            raise
        print(f"entrgi: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
