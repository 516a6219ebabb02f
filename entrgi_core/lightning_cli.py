"""The ``predict`` and ``fit`` commands of ``entrgi``, on LightningCLI (``entrgi_core.cli`` is the
front door that dispatches here, and the place the command line is documented).

Top-level groups: ``dlm`` (a DiffusionLM), ``reward`` (a RewardAdapter, optional), ``guidance``
(a Guidance strategy; none = unguided), ``sampling`` (DenoiseConfig), ``data`` (PromptDataModule),
``output_dir``, ``resume``, ``overwrite``, and Lightning's ``trainer``. Predictions go to
``output_dir`` (resumable JSON lines, see entrgi_core.writer).
"""
from __future__ import annotations

import difflib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import guidance
from entrgi_core.config import DenoiseConfig
from entrgi_core.contract import Guidance
from entrgi_core.data import PromptDataModule
from entrgi_core.errors import InputError
from entrgi_core.models import DiffusionLM, DiffusionModel
from entrgi_core.module import GuidedDenoiser
from entrgi_core.progress import PromptProgressBar
from entrgi_core.schedules import SCHEDULES
from entrgi_core.writer import JsonlPredictionWriter
from rewards.base import RewardAdapter


def known_classes() -> dict[str, list[str]]:
    """What a misspelled class_path is compared with."""
    return {
        "--dlm": ["entrgi_core.models.DreamLM", "entrgi_core.models.LLaDALM", "entrgi_core.models.MaskedLM",
                  "entrgi_core.diffusion_gemma.DiffusionGemmaLM"],
        "--reward": ["rewards.HFRewardModel", "rewards.TextReward", "rewards.Sum", "rewards.CallableReward"],
        "--guidance": [f"guidance.{c.__name__}" for c in guidance.STRATEGIES + guidance.PARTICLE_STRATEGIES],
        "--sampling.schedule": [f"entrgi_core.schedules.{c.__name__}" for c in SCHEDULES],
    }


def condense(message: str) -> str:
    """One paragraph from jsonargparse's nested validation messages: a misspelled class names the
    known ones; a failed instantiation keeps only the underlying error."""
    not_a_path = re.search(r"Expected a dot import path string: (\S+)", message)
    if not_a_path:                                         # e.g. the old spelling --sampling.schedule threshold
        name = not_a_path.group(1)
        known = {c.rsplit(".", 1)[1].lower(): c for cs in known_classes().values() for c in cs}
        close = difflib.get_close_matches(name.lower().replace("_", ""), list(known), n=1, cutoff=0.6)
        hint = f" Did you mean {known[close[0]]!r}?" if close else ""
        return f"expected a class path (module.Class), got {name!r}.{hint}"
    bad_class = re.search(r"class_path '([^']+)'", message)
    if bad_class and ("has no attribute" in message or "No module named" in message or "not a subclass" in message):
        name = bad_class.group(1)
        known = [c for cs in known_classes().values() for c in cs]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        lists = "; ".join(f"{opt}: {', '.join(cs)}" for opt, cs in known_classes().items())
        return f"unknown class {name!r}.{hint} Known classes ({lists})."
    bullets = [b.strip() for b in re.findall(r"^\s*- (.+)$", message, re.M)
               if not b.startswith(("Expected a <class 'NoneType'>", "Problem with given class_path"))]
    if "Does not validate against any of the Union subtypes" in message and bullets:
        return " ".join(bullets)
    lines = [ln for ln in message.splitlines() if ln.strip()]
    return " ".join(ln.strip() for ln in lines[:3]) if lines else message


class _Parser(LightningArgumentParser):
    def error(self, message: str, ex: Exception | None = None):
        if os.environ.get("ENTRGI_DEBUG") == "1":
            return super().error(message, ex)
        sys.stderr.write(f"entrgi: error: {condense(message)}\n(`entrgi predict --help` lists the options)\n")
        sys.exit(2)


def add_generation_arguments(parser, dlm: type = DiffusionModel) -> None:
    """The groups both commands share, linked into the module: dlm, reward, select, judges,
    guidance and sampling."""
    parser.add_subclass_arguments(dlm, "dlm", required=True, help="the diffusion LM")
    parser.add_subclass_arguments(RewardAdapter, "reward", required=False, help="the reward model (guides)")
    parser.add_subclass_arguments(RewardAdapter, "select", required=False,
                                  help="what picks Top@1 (default: the reward), e.g. rewards.TextReward")
    parser.add_argument("--judges", type=Optional[list[RewardAdapter]], default=None,
                        help="rewards that only score the final responses (evaluation), a list of class paths")
    parser.add_subclass_arguments(Guidance, "guidance", required=False,
                                  help="the guidance strategy (none: unguided, i.e. Best-of-N)")
    parser.add_class_arguments(DenoiseConfig, "sampling", help="sampler settings")
    for src, dst in (("dlm", "model.model"), ("reward", "model.reward"), ("guidance", "model.guidance"),
                     ("sampling", "model.config"), ("select", "model.select")):
        parser.link_arguments(src, dst, apply_on="instantiate")
    parser.link_arguments("judges", "model.judges", apply_on="parse")    # a list: instantiated with the model


class EntrgiCLI(LightningCLI):
    """``entrgi predict``: guided generation (GuidedDenoiser) over a prompt file."""

    def add_arguments_to_parser(self, parser):
        add_generation_arguments(parser)
        parser.add_argument("--output_dir", type=str, default="outputs/predict", help="where predictions go")
        parser.add_argument("--resume", type=bool, default=True, help="skip prompts already in output_dir")
        parser.add_argument("--overwrite", type=bool, default=False, help="replace outputs of another config")
        parser.add_argument("--export_rollouts", type=bool, default=False,
                            help="also write rollouts.jsonl: one {prompt, completion, reward, ...} line per response")
        parser.add_argument("--diagnose", type=bool, default=False,
                            help="record the reward after each guidance update (one more RM forward per step)")
        parser.link_arguments("diagnose", "model.diagnose")
        parser.add_argument("--baseline", type=bool, default=False,
                            help="also run Best-of-N at the same K and seeds and record each prompt's gain over it "
                                 "under the reward and each judge (its compute reported apart)")
        parser.link_arguments("baseline", "model.baseline")
        parser.set_defaults({"trainer.inference_mode": False, "trainer.logger": False,
                             "trainer.enable_checkpointing": False, "trainer.enable_model_summary": False})

    def _cfg(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def add_core_arguments_to_parser(self, parser) -> None:
        """Lightning's trainer and model groups; the data group is parsed here and built in
        ``before_instantiate_classes``, once, before any model loads."""
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=self.subclass_mode_model)
        parser.add_class_arguments(PromptDataModule, "data", instantiate=False, fail_untyped=False)

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        _check_devices(cfg.trainer)
        if cfg.data.get("shuffle_seed") is None:       # the paper's slices are tied to the sampling seed
            cfg.data.shuffle_seed = cfg.sampling.seed
        # the data module reads and validates the prompts: a bad file fails before any model loads
        self.data = PromptDataModule(**cfg.data.as_dict())

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self.datamodule = self.data                    # the one built above (the parser leaves "data" as settings)

    def instantiate_trainer(self, **kwargs):
        cfg = self._cfg()
        extra = [JsonlPredictionWriter(cfg.output_dir, resume=cfg.resume, overwrite=cfg.overwrite,
                                       export_rollouts=cfg.export_rollouts)]
        if cfg.trainer.get("enable_progress_bar") is not False:
            extra.append(PromptProgressBar())
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + extra
        return super().instantiate_trainer(**kwargs)


class EntrgiFitCLI(EntrgiCLI):
    """``entrgi fit``: train the dLLM on its own guided rollouts (GuidedFineTuner). The output
    directory is ``entrgi_core.training.outputs``'s; ``--ckpt_path last`` resumes."""

    def add_arguments_to_parser(self, parser):
        add_generation_arguments(parser, DiffusionLM)
        parser.add_argument("--output_dir", type=str, default="outputs/fit",
                            help="run.json, metrics.csv (Lightning's CSVLogger), checkpoints/, model/, rollouts.jsonl, "
                                 "curves.png")
        parser.add_argument("--overwrite", type=bool, default=False, help="replace another run in output_dir")
        parser.add_argument("--export_rollouts", type=bool, default=True,
                            help="write every step's rollouts (rollouts.jsonl: prompt, completion, reward, step, ...)")
        parser.add_argument("--checkpoint_every", type=int, default=1, help="save checkpoints/last.ckpt every N steps")
        from entrgi_core.training.collapse import CollapseGuard
        parser.add_class_arguments(CollapseGuard, "guard", instantiate=False,
                                   help="stop a collapsing run (entrgi_core.training.collapse)")
        parser.set_defaults({"trainer.logger": False, "trainer.enable_model_summary": False,
                             "trainer.num_sanity_val_steps": 0, "trainer.log_every_n_steps": 1})

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        if isinstance(cfg.checkpoint_every, bool) or cfg.checkpoint_every < 1:
            raise InputError(f"entrgi fit: --checkpoint_every must be an integer >= 1, got {cfg.checkpoint_every}")
        if cfg.trainer.get("max_steps") in (None, -1):
            raise InputError("entrgi fit: set --trainer.max_steps (the most updates; each is one rollout batch)")
        super().before_instantiate_classes()

    def instantiate_trainer(self, **kwargs):
        from lightning.pytorch.callbacks import ModelCheckpoint

        from entrgi_core.training import FitLogger, FitOutputs, RolloutWriter
        from entrgi_core.training.outputs import CHECKPOINTS

        cfg = self._cfg()
        out = Path(cfg.output_dir)
        from entrgi_core.training.collapse import CollapseGuard

        extra = [FitOutputs(str(out), overwrite=cfg.overwrite), CollapseGuard(**dict(cfg.guard)),
                 ModelCheckpoint(dirpath=out / CHECKPOINTS, filename="step{step}", save_top_k=0, save_last=True,
                                 every_n_train_steps=cfg.checkpoint_every)]
        if cfg.export_rollouts:
            extra.append(RolloutWriter(str(out)))
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + extra
        given = self._get(self.config_init, "trainer", default={}).get("logger")     # a user's loggers come too
        given = [] if given in (None, False, True) else list(given) if isinstance(given, (list, tuple)) else [given]
        kwargs["logger"] = [FitLogger(str(out))] + given                             # metrics.csv, always
        return LightningCLI.instantiate_trainer(self, **kwargs)


def _check_devices(trainer_cfg) -> None:
    devices, accel = trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)             # "--trainer.devices 4" arrives as a string
    if not isinstance(devices, int) or devices == -1:
        return
    if devices < 1:
        raise InputError(f"entrgi: --trainer.devices must be >= 1 (or -1 for all), got {devices}")
    if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available()):
        have = torch.cuda.device_count()
        if devices > have:
            raise InputError(f"entrgi: --trainer.devices {devices} but only {have} CUDA device(s) are available")
    elif devices > (os.cpu_count() or 1):
        raise InputError(f"entrgi: --trainer.devices {devices} CPU processes but this machine has "
                         f"{os.cpu_count()} cores")


def predict(argv: list[str]) -> None:
    """``entrgi predict ...``: guided sampling of a prompt file (GuidedDenoiser under trainer.predict)."""
    EntrgiCLI(GuidedDenoiser, PromptDataModule, subclass_mode_model=False, save_config_callback=None,
              auto_configure_optimizers=False, args=argv, parser_class=_Parser,
              parser_kwargs={"description": __doc__, "default_env": False})


def fit(argv: list[str]) -> None:
    """``entrgi fit ...``: train the dLLM on its own guided rollouts (GuidedFineTuner under trainer.fit)."""
    from entrgi_core.training.finetune import GuidedFineTuner

    warnings.filterwarnings("ignore", message=r".*configure_optimizers` will be overridden")  # --optimizer
    EntrgiFitCLI(GuidedFineTuner, PromptDataModule, subclass_mode_model=False, save_config_callback=None,
                 args=argv, parser_class=_Parser, parser_kwargs={"description": __doc__, "default_env": False})
