"""Commit schedules: which masked positions each denoising step commits (``base`` has the
contract, ``fixed`` the reference samplers' schedules, ``parallel_rules`` the parallel ones, ``blocks``
the per-row block state). ``DenoiseConfig(schedule=None)`` uses the model's own default (Dream's
for Dream and masked LMs, LLaDA's for LLaDA)."""
from entrgi_core.schedules.base import CommitSchedule, CommitView, FixedSchedule, ParallelSchedule
from entrgi_core.schedules.blocks import Blocks
from entrgi_core.schedules.fixed import Dream, LLaDA
from entrgi_core.schedules.parallel_rules import EntropyBound, Factor, Threshold

SCHEDULES = (Dream, LLaDA, Threshold, Factor, EntropyBound)   # every schedule the package ships

__all__ = ["CommitSchedule", "CommitView", "FixedSchedule", "ParallelSchedule", "Blocks", "Dream", "LLaDA",
           "Threshold", "Factor", "EntropyBound", "SCHEDULES"]
