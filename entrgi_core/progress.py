"""A predict progress bar that shows prompts done, the running mean Top@1 reward and tokens
committed per dLLM forward."""
from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class PromptProgressBar(TQDMProgressBar):
    def __init__(self, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self._prompts = 0
        self._best, self._tpf = [], []

    def on_predict_start(self, trainer, pl_module):
        super().on_predict_start(trainer, pl_module)
        self._prompts, self._best, self._tpf = 0, [], []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._prompts += len(outputs)
        self._best += [r["best_reward"] for r in outputs if r.get("best_reward") is not None]
        self._tpf += [r["tokens_per_forward"] for r in outputs if r.get("tokens_per_forward") is not None]
        postfix = {"prompts": self._prompts}
        if self._best:
            postfix["top1"] = f"{sum(self._best) / len(self._best):.3f}"
        if self._tpf:
            postfix["tok/fwd"] = f"{sum(self._tpf) / len(self._tpf):.2f}"
        if self.predict_progress_bar is not None:
            self.predict_progress_bar.set_postfix(postfix)
