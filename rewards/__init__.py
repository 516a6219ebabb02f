"""Reward adapters: differentiable reward models for guidance."""
from rewards.base import RewardAdapter, RewardContext
from rewards.callable import CallableReward
from rewards.hf import HFRewardModel
from rewards.vocab import VocabAlignment, align_vocab, normalize_token

__all__ = ["RewardAdapter", "RewardContext", "CallableReward", "HFRewardModel", "VocabAlignment", "align_vocab",
           "normalize_token"]
