"""The training wing: ``trainer.fit`` of the diffusion LM on its own guided rollouts.

``finetune.GuidedFineTuner`` (the LightningModule), ``likelihood`` (log-likelihood estimators),
``objectives`` (sft, rwr, grpo), ``rollouts`` (rollouts as JSON lines for any trainer),
``outputs.FitOutputs`` (the output directory of ``entrgi fit``) and ``metrics.FitLogger`` (its
metrics.csv, through Lightning's CSVLogger), ``collapse`` (degenerate rollouts, and ``CollapseGuard``,
which stops a collapsing run and keeps the checkpoint from before it).
"""
from entrgi_core.training.collapse import CollapseGuard, Degeneracy
from entrgi_core.training.finetune import GuidedFineTuner, RolloutBatch
from entrgi_core.training.metrics import FitLogger
from entrgi_core.training.outputs import FitOutputs
from entrgi_core.training.rollouts import RolloutWriter, rollout_lines

__all__ = ["CollapseGuard", "Degeneracy", "GuidedFineTuner", "RolloutBatch", "FitLogger", "FitOutputs", "RolloutWriter", "rollout_lines"]
