"""GuidedFineTuner: the LightningModule whose ``training_step`` trains the diffusion LM on its own
guided rollouts (RGRL: amortising guidance into the weights), for ``trainer.fit``.

Each step draws K rollouts per prompt from the *current* weights with any strategy, through the
same sampler as ``generate`` (None/NoGuidance, EntRGi, Expectation, SMC with a proposal; the
reward model stays frozen and no gradient reaches the dLLM while sampling), then updates the
dLLM with ``objective`` (``entrgi_core.training.objectives``: "sft", "rwr", "grpo") on the log-likelihood
estimate ``estimator`` (``entrgi_core.training.likelihood``: "one_step", "elbo"). With ``inner_steps`` = mu
> 1 a rollout batch serves mu updates (d1's inner iterations; the batches of the steps between are
skipped). Only the dLLM trains: all of it, or LoRA adapters (``lora={"r": 8, ...}``, needs
``peft``). The reference of the KL is the starting model, frozen (with LoRA: the adapters off).

Rollouts are keyed by the prompt's id and its position in the training stream, so a step's
rollouts are the same alone, batched, on any rank and after a resume; the data module yields
the batch of each global step (``PromptDataModule.train_dataloader``). Compute is counted in
dLLM forward-equivalents (one forward of one prompt + L row): the rollouts' own account
(``entrgi_core.result.account``) plus 3 x J per trained row (forward and backward), plus J per row
for GRPO's old policy (mu > 1) and its reference (``kl_weight > 0``). ``budget`` stops training
once that total, over all ranks, reaches it (matched training compute). Dropout stays off.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field, fields
from typing import Optional

import lightning as L
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from entrgi_core import checks, rng
from entrgi_core.config import DenoiseConfig
from entrgi_core.contract import Guidance
from entrgi_core.errors import InputError, NonFiniteLogitsError
from entrgi_core.models import DiffusionLM
from entrgi_core.plan import Plan
from entrgi_core.sampler import run
from entrgi_core.training.collapse import Degeneracy
from entrgi_core.training.likelihood import Estimator, TokenTerms
from entrgi_core.training.objectives import OBJECTIVES, WEIGHTS, grpo_loss, k3, rwr_loss, sft_loss
from entrgi_core.training.rollouts import rollout_lines

FROZEN = ("reward.", "select.", "judges.", "reference.")   # not saved in checkpoints: they never change
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None}


@dataclass
class RolloutBatch:
    """One training step's rollouts: N = B*K rows (prompt b's K samples are rows b*K .. b*K + K - 1),
    and what the updates on them read."""

    step: int                         # the global step that drew them
    encoded: list[list[int]]          # (N,) each row's prompt tokens (the dLLM's, chat template applied)
    tokens: Tensor                    # (N, L) the responses
    keys: Tensor                      # (N,) per-row keys of the likelihood estimator's masks
    rewards: Tensor                   # (B, K) each response's reward
    best: Tensor                      # (B,) each prompt's Top@1 reward
    judges: dict = field(default_factory=dict)   # judge name -> ((B,) mean over K, (B,) of Top@1)
    lines: list = field(default_factory=list)    # rollout lines for the exporter (entrgi_core.training.rollouts)
    cost: float = 0.0                 # forward-equivalents spent drawing them and on the terms below
    degenerate: dict = field(default_factory=dict)   # shares of degenerate rollouts (collapse.Degeneracy.shares)
    old: Tensor | None = None         # (N, T) the drawing policy's per-token terms (GRPO with inner_steps > 1)
    ref: Tensor | None = None         # (N, T) the reference's per-token terms (KL)

    @property
    def rows(self) -> int:
        return len(self.encoded)

    def state(self, device=None) -> dict:
        """Plain fields (tensors moved to ``device``, default the CPU) for a checkpoint."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        return apply_to_collection(state, Tensor, lambda t: t.detach().to(device or "cpu"))


class GuidedFineTuner(L.LightningModule):
    """Args:
        model: the diffusion LM to train (a ``DiffusionLM``).
        reward: the reward of the rollouts (guides them when ``guidance`` reads it).
        guidance: the strategy the rollouts are drawn with (None: unguided).
        config: the rollouts' sampler settings (``num_samples`` = K per prompt).
        objective: "sft", "rwr" or "grpo". estimator: "one_step" or "elbo".
        p_mask_prompt: one_step's prompt masking probability. mc_samples: elbo's masks.
        weights, beta: rwr's weights ("soft": softmax(r / beta), "best", "uniform").
        clip, kl_weight, inner_steps: grpo's ratio clip, KL weight and updates per rollout batch.
        lr, weight_decay: AdamW's (the CLI's ``--optimizer`` / ``--lr_scheduler`` replace it).
        lora: None (full fine-tuning) or LoRA settings ``{"r", "alpha", "dropout", "target_modules"}``.
        budget: stop once this many forward-equivalents are spent (None: at ``max_steps``).
        track_kl: log the KL to the reference for every objective (one no-grad forward per row,
            evaluation, not counted in the budget unless grpo's ``kl_weight > 0`` needs it).
        select, judges: as for ``generate``; judges' scores of the rollouts are logged.
        degeneracy: which rollouts count as degenerate (``entrgi_core.training.collapse.Degeneracy``;
            None: its defaults); their shares are logged every step (``CollapseGuard`` reads them).
    """

    def __init__(self, model: DiffusionLM, reward=None, guidance: Guidance | None = None,
                 config: DenoiseConfig | None = None, objective: str = "sft", estimator: str = "one_step",
                 p_mask_prompt: float = 0.15, mc_samples: int = 1, weights: str = "soft", beta: float = 0.1,
                 clip: float = 0.2, kl_weight: float = 0.04, inner_steps: int = 1, lr: float = 1e-5,
                 weight_decay: float = 0.0, lora: Optional[dict] = None, budget: Optional[float] = None,
                 track_kl: bool = True, select=None, judges: Optional[list[torch.nn.Module]] = None,
                 degeneracy: Optional[Degeneracy] = None):
        super().__init__()
        who = "GuidedFineTuner"
        if not isinstance(model, DiffusionLM):
            raise InputError(f"{who}: model must be a masked diffusion LM (a DiffusionLM: MaskedLM, DreamLM, LLaDALM) "
                             f"to train, got {type(model).__name__}")
        if reward is None:
            raise InputError(f"{who}: a reward is needed (it scores the rollouts every objective trains on)")
        checks.one_of(objective, OBJECTIVES, who=who, name="objective")
        checks.one_of(weights, WEIGHTS, who=who, name="weights")
        self.beta = checks.real(beta, who=who, name="beta", rule="be > 0", ok=lambda v: v > 0)
        self.clip = checks.real(clip, who=who, name="clip", rule="lie in (0, 1)", ok=lambda v: 0 < v < 1)
        self.kl_weight = checks.real(kl_weight, who=who, name="kl_weight", rule="be >= 0", ok=lambda v: v >= 0)
        self.lr = checks.real(lr, who=who, name="lr", rule="be >= 0", ok=lambda v: v >= 0)
        self.weight_decay = checks.real(weight_decay, who=who, name="weight_decay", rule="be >= 0",
                                        ok=lambda v: v >= 0)
        self.inner_steps = checks.integer(inner_steps, who=who, name="inner_steps", minimum=1)
        self.budget = checks.real(budget, who=who, name="budget", rule="be > 0", ok=lambda v: v > 0,
                                  none_means="train until max_steps")
        self.estimator = Estimator(estimator, p_mask_prompt, mc_samples)
        self.plan = Plan.check(model, reward, guidance, config, select=select, judges=judges)   # once
        self.config = self.plan.config
        if objective == "grpo" and self.config.num_samples < 2:
            raise InputError(f"{who}: objective='grpo' centres rewards within a prompt's group: it needs num_samples "
                             f"(K) >= 2, got {self.config.num_samples}")
        self.objective, self.weights = objective, weights
        self.model, self.reward, self.guidance, self.select = model, reward, guidance, select
        self.judges = torch.nn.ModuleList(judges or [])
        self.lora = self._lora_settings(lora)
        self.track_kl = bool(track_kl)
        if degeneracy is not None and not isinstance(degeneracy, Degeneracy):
            raise InputError(f"{who}: degeneracy must be an entrgi_core.training.collapse.Degeneracy or None, "
                             f"got {type(degeneracy).__name__}")
        self.degeneracy = degeneracy or Degeneracy()
        self.median_words: float | None = None            # the first rollouts' median length (the length test)
        if self.lora is not None:
            self._wrap_lora()
        else:
            model.model.requires_grad_(True)
        if not any(p.requires_grad for p in self.trainable()):
            raise InputError(f"{who}: the diffusion LM {model.name!r} has no parameter to train")
        self.reference = None                              # the frozen start (full fine-tuning); LoRA: adapters off
        if self.needs_reference and self.lora is None:
            self.reference = copy.deepcopy(model).requires_grad_(False)
        self.spent = 0.0                                   # forward-equivalents over all ranks so far
        self.step_metrics: dict = {}                       # the last step's metrics, averaged over ranks
        self._rollouts: RolloutBatch | None = None         # the rollout batch the inner steps reuse
        self.save_hyperparameters(self.run_config())

    # ----------------------------------------------------------------------- set-up

    @staticmethod
    def _lora_settings(lora) -> dict | None:
        if lora is None:
            return None
        if not isinstance(lora, dict) or set(lora) - set(LORA_DEFAULTS):
            raise InputError(f"GuidedFineTuner: lora must be None or a dict with keys {sorted(LORA_DEFAULTS)}, "
                             f"got {lora!r}")
        out = {**LORA_DEFAULTS, **lora}
        checks.integer(out["r"], who="GuidedFineTuner", name="lora r", minimum=1)
        return out

    def _wrap_lora(self) -> None:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise InputError("GuidedFineTuner: lora needs the peft package (pip install 'entrgi[lora]')") from None
        cfg = LoraConfig(r=self.lora["r"], lora_alpha=self.lora["alpha"], lora_dropout=self.lora["dropout"],
                         target_modules=self.lora["target_modules"])
        try:
            self.model.model = get_peft_model(self.model.model, cfg)
        except ValueError as exc:                      # e.g. target modules not found
            raise InputError(f"GuidedFineTuner: LoRA cannot wrap {self.model.name!r}: {exc}") from None

    @property
    def needs_reference(self) -> bool:
        return self.track_kl or (self.objective == "grpo" and self.kl_weight > 0)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.model.parameters() if p.requires_grad]

    def run_config(self) -> dict:
        """What determines the training (hparams, run.json, the resume check)."""
        ident = lambda r: r.identity() if r is not None else None   # noqa: E731
        return {
            "model": self.model.name, "reward": ident(self.reward), "select": ident(self.select),
            "judges": [j.identity() for j in self.judges],
            "guidance": self.guidance.settings() if self.guidance is not None else None,
            "config": self.config.to_dict(), "objective": self.objective, "estimator": self.estimator.kind,
            "p_mask_prompt": self.estimator.p_mask_prompt, "mc_samples": self.estimator.mc_samples,
            "weights": self.weights, "beta": self.beta, "clip": self.clip, "kl_weight": self.kl_weight,
            "inner_steps": self.inner_steps, "lr": self.lr, "weight_decay": self.weight_decay, "lora": self.lora,
            "budget": self.budget,
        }

    def train(self, mode: bool = True):
        """Lightning's train mode without dropout: every submodule stays in eval mode."""
        super().train(mode)
        for child in self.children():
            child.eval()
        return self

    def setup(self, stage: str) -> None:
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")   # dropout off, by design
        if stage == "fit" and (self.trainer.max_steps is None or self.trainer.max_steps < 0):
            raise InputError("GuidedFineTuner: set trainer.max_steps (the most updates; a step is one rollout batch "
                             "and one update)")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.trainable(), lr=self.lr, weight_decay=self.weight_decay)

    # ----------------------------------------------------------------------- one step

    def _reference_terms(self, rollouts: RolloutBatch) -> Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return self._terms(rollouts, self.reference).logp
            with self.model.model.disable_adapter():
                return self._terms(rollouts, self.model).logp

    def _terms(self, rollouts: RolloutBatch, model=None) -> TokenTerms:
        return self.estimator(model or self.model, rollouts.encoded, rollouts.tokens, rollouts.keys, rollouts.step)

    def rollout(self, batch: dict, step: int) -> RolloutBatch:
        """K rollouts per prompt of ``batch`` from the current weights, and what the update reads."""
        ids = [f"{i}@{p}" for i, p in zip(batch["id"], batch["position"])]   # unique in the stream
        prompts = self.plan.batch(batch["prompt"], ids)
        try:
            with torch.enable_grad() if self.plan.guided else torch.no_grad():
                res = run(self.plan, prompts)
        except NonFiniteLogitsError as exc:
            raise NonFiniteLogitsError(f"GuidedFineTuner: at training step {step} the dLLM's logits are not finite "
                                       f"({exc}); an earlier update diverged: lower lr, clip gradients "
                                       "(trainer gradient_clip_val) or raise kl_weight") from exc
        k = self.config.num_samples
        out = RolloutBatch(
            step=step, encoded=[e for e in prompts.encoded for _ in range(k)],
            tokens=res.tokens.reshape(-1, res.tokens.shape[-1]).to(self.device),
            keys=rng.row_keys(self.config.seed, ids, k, device=self.device),
            rewards=res.rewards.to(self.device), best=res.best_reward.to(self.device),
            judges={n: (v.mean(1), v.gather(1, res.best_index[:, None])[:, 0]) for n, v in res.judge_scores.items()},
            lines=[ln for rec, pid, pos in zip(res.records(self.method, self.config.seed), batch["id"],
                                               batch["position"])
                   for ln in rollout_lines(rec, step=step, prompt_id=pid, position=pos)],
            cost=sum(res.compute["forward_equivalents"]))
        if self.median_words is None:
            self.median_words = Degeneracy.median_words(out.lines)
        out.degenerate = self.degeneracy.shares(out.lines, self.median_words)
        if self.inner_steps > 1:                          # the policy the rollouts came from, under the update's masks
            with torch.no_grad():
                out.old = self._terms(out).logp
            out.cost += out.rows * self.estimator.forwards
        if self.needs_reference:
            out.ref = self._reference_terms(out)
            if self.objective == "grpo" and self.kl_weight > 0:
                out.cost += out.rows * self.estimator.forwards
        return out

    @property
    def method(self) -> str:
        return self.guidance.name if self.guidance is not None else "bon"

    def training_step(self, batch: dict, batch_idx: int = 0):
        step = self.global_step
        if batch.get("step") is not None and int(batch["step"]) != step:
            raise RuntimeError(f"GuidedFineTuner: the data gave the batch of step {batch['step']} at step {step}")
        fresh = self._rollouts is None or step - self._rollouts.step >= self.inner_steps
        if fresh:
            self._rollouts = self.rollout(batch, step)
        ro = self._rollouts
        terms = self._terms(ro)
        k = self.config.num_samples
        kl = k3(terms.logp, ro.ref) if ro.ref is not None else None        # (N, T) per token
        stats = {}
        if self.objective == "sft":
            loss = sft_loss(terms, k)
        elif self.objective == "rwr":
            loss = rwr_loss(terms, ro.rewards, self.weights, self.beta)
        else:
            old = ro.old if ro.old is not None else terms.logp.detach()
            loss, stats = grpo_loss(terms, old, kl if self.kl_weight > 0 else None, ro.rewards, self.clip,
                                    self.kl_weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GuidedFineTuner: the {self.objective} loss at training step {step} is not finite "
                                     f"({float(loss)}): lower lr, clip gradients or raise kl_weight")
        cost = (ro.cost if fresh else 0.0) + ro.rows * 3 * self.estimator.forwards
        metrics = {"loss": loss.detach(), "ll": terms.sequence().detach().mean(),
                   "kl": terms.read_mean(kl.detach()).mean() if kl is not None else torch.tensor(float("nan")),
                   "reward_top1": ro.best.mean(), "reward_avg": ro.rewards.mean(),
                   "cost": torch.tensor(float(cost)), **stats}
        for name, (avg, top1) in ro.judges.items():
            metrics[f"{name}_top1"], metrics[f"{name}_avg"] = top1.mean(), avg.mean()
        metrics.update({name: torch.tensor(share) for name, share in ro.degenerate.items()})
        self._record(metrics)
        return {"loss": loss, "rollouts": ro.lines if fresh else []}

    def _record(self, metrics: dict) -> None:
        """Average the step's metrics over ranks (the cost is summed), log them and add the cost."""
        names = list(metrics)
        values = torch.stack([torch.as_tensor(metrics[n], dtype=torch.float64).to(self.device) for n in names])
        world = self.trainer.world_size if self._trainer is not None else 1
        if world > 1:
            values = self.trainer.strategy.reduce(values, reduce_op="sum") / world
        out = dict(zip(names, values.tolist()))
        out["cost"] *= world
        self.spent += out.pop("cost")
        out["fwd_eq"] = self.spent
        self.step_metrics = out
        if self._trainer is not None and self.trainer.is_global_zero:   # every step, whatever log_every_n_steps says
            for logger in self.loggers:                                  # (entrgi fit: FitLogger's metrics.csv)
                logger.log_metrics({n: v for n, v in out.items() if v == v}, step=self.global_step)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.budget is not None and self.spent >= self.budget:
            self.trainer.should_stop = True

    # ----------------------------------------------------------------------- checkpoints and export

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(FROZEN)}
        checkpoint["entrgi"] = {"spent": self.spent, "median_words": self.median_words,
                                "rollouts": self._rollouts.state() if self._rollouts is not None else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        own = self.state_dict()
        checkpoint["state_dict"].update({k: v for k, v in own.items() if k.startswith(FROZEN)})
        state = checkpoint.get("entrgi", {})
        self.spent = float(state.get("spent", 0.0))
        self.median_words = state.get("median_words")
        rollouts = state.get("rollouts")                    # RolloutBatch.state(): plain fields
        self._rollouts = None if rollouts is None else \
            RolloutBatch(**apply_to_collection(rollouts, Tensor, lambda t: t.to(self.device)))

    def export(self, path) -> None:
        """The trained dLLM to ``path`` (LoRA merged into a copy), loadable as ``type(model)(path)``."""
        inner = self.model.model
        if self.lora is not None:
            merged = copy.deepcopy(inner).to("cpu").merge_and_unload()
            type(self.model).from_model(merged, self.model.tokenizer, mask_id=self.model.mask_id).save_pretrained(path)
        else:
            self.model.save_pretrained(path)

