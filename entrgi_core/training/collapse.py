"""Collapse of a training run: degenerate rollouts, and the guard that stops ``entrgi fit``.

Reward-model-only training can collapse onto outputs the reward model overpays (the EntRGi
authors record math prompts collapsing to bare ``\\boxed{guess}`` answers). ``Degeneracy`` says
which of a step's rollouts are degenerate, and ``GuidedFineTuner`` logs the shares every step
next to the reward (``metrics.csv``: ``degenerate``, ``empty``, ``repeats``, ``short`` and
``low_<judge>`` for each judge floor given):

    empty     the completion has no word
    repeats   the share of its word n-grams that repeat an earlier n-gram of it is >= repeat_share
    short     some words, but fewer than ``short`` times the median length of the run's first rollouts
    low_J     judge J scored it below the floor given for J (``judges={"oracle": 0.5}``)

``CollapseGuard`` (a Lightning callback; ``entrgi fit`` adds one, ``--guard.*`` sets it) stops
training once the degenerate share exceeds ``max_share`` for ``patience`` steps in a row, with
one message, and keeps ``checkpoints/before-collapse.ckpt``: the newest checkpoint whose weights
drew rollouts under the rule (a hard link to the checkpoint file ``ModelCheckpoint`` wrote, so
keeping it costs no copy; a copy where links are not possible).
"""
from __future__ import annotations

import os
import shutil
import statistics
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from entrgi_core import checks
from entrgi_core.errors import InputError
from entrgi_core.settings import settings

BEFORE_COLLAPSE = "before-collapse.ckpt"


def one_word_share(prompts: list[str], responses: list[str]) -> list[float]:
    """A reward that pays for collapse: the share of each response's words that are its most
    frequent word (0 for an empty one). Train on it to see a guard stop a run
    (``rewards.TextReward("entrgi_core.training.collapse:one_word_share")``)."""
    out = []
    for text in responses:
        words = text.split()
        out.append(max(words.count(w) for w in set(words)) / len(words) if words else 0.0)
    return out


class Degeneracy:
    """Args:
        ngram: n of the repeated n-gram share (words, whitespace-split).
        repeat_share: a completion whose repeated n-gram share is at least this is degenerate.
        short: a completion with fewer words than this times the first rollouts' median is degenerate
            (0: never).
        judges: ``{judge name: floor}``: a completion the judge scores below its floor is degenerate.
    """

    def __init__(self, ngram: int = 2, repeat_share: float = 0.5, short: float = 0.25,
                 judges: dict[str, float] | None = None):
        who = "Degeneracy"
        self.ngram = checks.integer(ngram, who=who, name="ngram", minimum=1)
        self.repeat_share = checks.real(repeat_share, who=who, name="repeat_share", rule="lie in (0, 1]",
                                        ok=lambda v: 0 < v <= 1)
        self.short = checks.real(short, who=who, name="short", rule="lie in [0, 1]", ok=lambda v: 0 <= v <= 1)
        if judges is not None and not (isinstance(judges, dict) and all(isinstance(k, str) for k in judges)):
            raise InputError(f"{who}: judges must be a dict {{judge name: floor}}, got {judges!r}")
        self.judges = {k: checks.real(v, who=who, name=f"judges[{k!r}]", rule="be a finite number",
                                      ok=lambda x: True) for k, v in (judges or {}).items()}

    def settings(self) -> dict:
        return settings(self)

    def repeated_share(self, words: list[str]) -> float:
        """The share of ``words``' n-grams that repeat an earlier n-gram of them (0 with none)."""
        grams = [tuple(words[i: i + self.ngram]) for i in range(len(words) - self.ngram + 1)]
        return 1.0 - len(set(grams)) / len(grams) if grams else 0.0

    def shares(self, lines: list[dict], median_words: float | None) -> dict[str, float]:
        """The shares of ``lines`` (rollout lines: ``completion``, ``judges``) that are degenerate,
        in all and by each test; ``median_words`` is the first rollouts' median length (None: the
        length test is off)."""
        if not lines:
            return {}
        known = {n for ln in lines for n in (ln.get("judges") or {})}
        missing = sorted(set(self.judges) - known)
        if missing:
            raise InputError(f"Degeneracy: judge floors for {missing}, but the run's judges are "
                                    f"{sorted(known) or 'none'}: give those judges (--judges) or drop the floors")
        flags = {"empty": [], "repeats": [], "short": [], **{f"low_{n}": [] for n in self.judges}}
        for ln in lines:
            words = str(ln.get("completion") or "").split()
            flags["empty"].append(not words)
            flags["repeats"].append(self.repeated_share(words) >= self.repeat_share)
            flags["short"].append(bool(words and self.short > 0 and median_words
                                       and len(words) < self.short * median_words))
            for n, floor in self.judges.items():
                flags[f"low_{n}"].append(float(ln["judges"][n]) < floor)
        out = {"degenerate": sum(any(f[i] for f in flags.values()) for i in range(len(lines))) / len(lines)}
        out.update({name: sum(f) / len(f) for name, f in flags.items()})
        return out

    @staticmethod
    def median_words(lines: list[dict]) -> float:
        return float(statistics.median(len(str(ln.get("completion") or "").split()) for ln in lines))


class CollapseGuard(Callback):
    """Stops training when the share of degenerate rollouts exceeds ``max_share`` for ``patience``
    steps in a row (see the module docstring); ``enabled=False`` keeps the logging only."""

    def __init__(self, max_share: float = 0.5, patience: int = 2, enabled: bool = True):
        self.max_share = checks.real(max_share, who="CollapseGuard", name="max_share", rule="lie in [0, 1)",
                                     ok=lambda v: 0 <= v < 1)
        self.patience = checks.integer(patience, who="CollapseGuard", name="patience", minimum=1)
        self.enabled = bool(enabled)
        self.streak = 0
        self.healthy: set[int] = set()      # steps whose rollouts were under the rule
        self.saved_step: int | None = None  # the global step of the newest checkpoint written
        self.kept_step: int | None = None   # the step of before-collapse.ckpt
        self.message: str | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.saved_step = int(checkpoint.get("global_step", trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = getattr(pl_module, "step_metrics", {}) or {}
        share = metrics.get("degenerate")
        if share is None or not self.enabled:
            return
        step = trainer.global_step - 1                     # the step just taken (its rollouts' weights: step)
        if share > self.max_share:
            self.streak += 1
        else:
            self.streak = 0
            self.healthy.add(step)
            self._keep(trainer)
        if self.streak >= self.patience:
            parts = ", ".join(f"{k} {metrics[k]:.0%}" for k in metrics if k in ("empty", "repeats", "short")
                              or k.startswith("low_"))
            kept = (f"the last checkpoint from before it is {self._kept_path(trainer)} (step {self.kept_step}, "
                    "whose weights drew healthy rollouts)" if self.kept_step is not None else
                    "no checkpoint from before it was kept (the collapse began before the first healthy checkpoint)")
            self.message = (f"entrgi fit: stopped at step {step}: {share:.0%} of the rollouts were degenerate "
                            f"({parts}) for {self.patience} step(s) in a row (the guard's rule: more than "
                            f"{self.max_share:.0%}); {kept}. Lower the learning rate, add a KL weight, or "
                            "loosen the rule with --guard.max_share / --guard.patience")
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(self.message, file=sys.stderr, flush=True)

    def _last(self, trainer) -> Path | None:
        ckpt = getattr(trainer, "checkpoint_callback", None)
        path = getattr(ckpt, "last_model_path", "") if ckpt is not None else ""
        return Path(path) if path else None

    def _kept_path(self, trainer) -> Path | None:
        last = self._last(trainer)
        return None if last is None else last.parent / BEFORE_COLLAPSE

    def _keep(self, trainer) -> None:
        """Link the newest checkpoint to before-collapse.ckpt when its weights drew healthy rollouts
        (ModelCheckpoint writes after this callback's hook: the file is still the previous one)."""
        last = self._last(trainer)
        if last is None or self.saved_step is None or self.saved_step not in self.healthy or not last.exists():
            return
        if not trainer.is_global_zero:
            self.kept_step = self.saved_step
            return
        dest, tmp = last.parent / BEFORE_COLLAPSE, last.parent / (BEFORE_COLLAPSE + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)                 # ModelCheckpoint replaces last.ckpt by a rename: the link keeps it
        except OSError:
            shutil.copyfile(last, tmp)
        os.replace(tmp, dest)
        self.kept_step = self.saved_step

    def state_dict(self) -> dict:
        return {"streak": self.streak, "healthy": sorted(self.healthy), "saved_step": self.saved_step,
                "kept_step": self.kept_step}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state.get("streak", 0))
        self.healthy = set(state.get("healthy", []))
        self.saved_step, self.kept_step = state.get("saved_step"), state.get("kept_step")
