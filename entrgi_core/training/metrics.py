"""FitLogger: Lightning's ``CSVLogger``, writing ``<output_dir>/metrics.csv`` for ``entrgi fit``.

One row per training step (the module's ``log_dict``: loss, ll, kl, rewards, judges, fwd_eq,
...), appended as each step ends (``flush_logs_every_n_steps=1``: nothing is re-read, and a
killed run loses no finished step). Lightning's writer deletes an existing metrics file when its
directory is not empty; a run's output directory holds that run only (``FitOutputs`` refuses any
other), so this one keeps the file a resumed run continues, after ``FitOutputs`` has dropped the
rows of steps at or after the checkpoint.
"""
from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        """Keep the run's metrics (the default deletes them)."""


class FitLogger(CSVLogger):
    def __init__(self, output_dir: str):
        super().__init__(save_dir=output_dir, name="", version="", flush_logs_every_n_steps=1)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.log_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment
