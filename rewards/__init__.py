"""Reward adapters: differentiable reward models that guide (``HFRewardModel``, ``CallableReward``),
text rewards that select and judge (``TextReward``), and weighted sums of both (``Sum``)."""
from rewards.base import RewardAdapter, RewardContext
from rewards.callable import CallableReward
from rewards.composite import Sum
from rewards.hf import HFRewardModel
from rewards.text import TextReward
from rewards.vocab import VocabAlignment, align_vocab, normalize_token

__all__ = ["RewardAdapter", "RewardContext", "CallableReward", "HFRewardModel", "Sum", "TextReward", "VocabAlignment",
           "align_vocab", "normalize_token"]
