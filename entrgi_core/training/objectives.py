"""Training objectives on K rollouts per prompt (``entrgi_core.training.finetune``), each a loss averaged
over prompts (so that DDP's mean over ranks is the mean over the global batch).

``ll`` below is a rollout's length-normalised log-likelihood estimate
(``entrgi_core.training.likelihood.TokenTerms.sequence``), rows grouped by prompt: (B*K,) viewed (B, K).

- ``sft`` (RGRL's online SFT): ``-mean_b sum_k ll_bk / K``;
- ``rwr`` (reward-weighted regression): ``-mean_b sum_k w_bk ll_bk`` with ``w = softmax(r / beta)``
  per prompt (``weights="soft"``), one-hot on the best (``"best"``) or ``1/K`` (``"uniform"``);
- ``grpo`` (d1's diffu-GRPO): advantages ``A = r - mean_k r`` (no std normalisation), per token the
  clipped surrogate ``min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` with ``rho = exp(logp - logp_old)``,
  minus ``kl_weight`` times the k3 estimate ``exp(d) - d - 1``, ``d = logp_ref - logp``, of the KL
  to the frozen reference; averaged over the tokens the estimate reads (every counted token with
  one_step, the masked ones with elbo: a ratio needs no 1/t weight), then over rollouts.
"""
from __future__ import annotations

import torch
from torch import Tensor

from entrgi_core.training.likelihood import TokenTerms

OBJECTIVES = ("sft", "rwr", "grpo")
WEIGHTS = ("soft", "best", "uniform")


def sft_loss(terms: TokenTerms, k: int) -> Tensor:
    return -terms.sequence().view(-1, k).mean(1).mean()


def rwr_weights(rewards: Tensor, weights: str, beta: float) -> Tensor:
    """(B, K) per-prompt weights of the rollouts with ``rewards`` (B, K); each row sums to 1."""
    if weights == "soft":
        return torch.softmax(rewards.double() / beta, dim=1).to(rewards.dtype)
    if weights == "best":
        return torch.nn.functional.one_hot(rewards.argmax(1), rewards.shape[1]).to(rewards.dtype)
    return torch.full_like(rewards, 1.0 / rewards.shape[1])


def rwr_loss(terms: TokenTerms, rewards: Tensor, weights: str, beta: float) -> Tensor:
    w = rwr_weights(rewards, weights, beta).to(terms.logp.device)
    return -(w * terms.sequence().view(w.shape)).sum(1).mean()


LOG_RATIO_MAX = 20.0    # |log ratio| beyond this is clamped before exp (exp(20) ~ 5e8, finite in float32)


def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference): ``exp(d) - d - 1`` with ``d = ref - logp``
    (clamped to ``LOG_RATIO_MAX``)."""
    d = (ref_logp - logp).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)
    return torch.exp(d) - d - 1


def grpo_loss(terms: TokenTerms, old_logp: Tensor, ref_logp: Tensor | None, rewards: Tensor, clip: float,
              kl_weight: float) -> tuple[Tensor, dict]:
    """The loss and its statistics (``clipped``: share of read tokens whose ratio was clipped)."""
    advantage = (rewards - rewards.mean(1, keepdim=True)).reshape(-1, 1).to(terms.logp.device)   # (B*K, 1)
    # Only the read tokens enter the exponents: an unread token's log-probability (an unmasked
    # token predicting itself) may be -inf, and exp of it would poison the backward even when
    # selected out afterwards (0 * inf).
    read = terms.weight > 0
    logp = torch.where(read, terms.logp, torch.zeros_like(terms.logp))
    old_logp = torch.where(read, old_logp, torch.zeros_like(old_logp))
    ratio = torch.exp((logp - old_logp).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX))
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)
    per_token = -surrogate
    kl = k3(logp, torch.where(read, ref_logp, torch.zeros_like(ref_logp))) if ref_logp is not None \
        else torch.zeros_like(logp)
    if kl_weight > 0:
        per_token = per_token + kl_weight * kl
    clipped = (ratio - ratio.clamp(1 - clip, 1 + clip)).abs() > 0
    stats = {"clipped": (clipped & read).sum() / read.sum().clamp(min=1)}
    return terms.read_mean(per_token).mean(), stats
