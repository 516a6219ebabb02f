"""Log-likelihood estimators of responses under a masked diffusion LM, for training
(``entrgi_core.training.finetune``). A masked dLLM has no exact log-likelihood; trainers estimate it from
masked predictions:

- ``"one_step"`` (d1's diffu-GRPO, RGRL): the response fully masked and each prompt token masked
  with probability ``p_mask_prompt``; one forward; token i's term is ``log p(y_i | canvas)``.
- ``"elbo"`` (the masked-diffusion evidence lower bound LLaDA trains on): per Monte Carlo sample a
  mask rate ``t ~ U(0, 1)`` per row, each response token masked with probability
  ``p = eps + (1 - eps) t``, the prompt unmasked; token i's term is ``1[masked] log p(y_i | x_t) / p``,
  averaged over ``mc_samples``.

A response counts up to and including its first stop token (what the sampler's stop rule keeps).
``TokenTerms`` holds the per-token log-probabilities ``logp`` (N, J*L) and their weights
``weight`` (N, J*L) such that a row's estimate is ``sum(weight * logp) / length``, the
length-normalised log-likelihood RGRL and d1 train on. The masks are counter-based
(``entrgi_core.rng``) from each row's key and a counter: a row gets the same masks alone, batched
or on any rank, and GRPO reads its old and new policy under the same masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from entrgi_core import checks, rng
from entrgi_core.errors import InputError

ESTIMATORS = ("one_step", "elbo")
ELBO_EPS = 1e-3        # the smallest mask probability of an ELBO sample


@dataclass
class TokenTerms:
    """The per-token terms of N rows' log-likelihood estimates."""

    logp: Tensor       # (N, T) log p of each response token under its masked canvas (T = J * L)
    weight: Tensor     # (N, T) its weight in the row's estimate (0: not counted)
    length: Tensor     # (N,) response tokens counted (up to and including the first stop), >= 1

    def sequence(self) -> Tensor:
        """(N,) each row's length-normalised log-likelihood estimate."""
        read = self.weight > 0                             # an unread token's logp may be -inf: 0 * -inf
        return torch.where(read, self.weight * self.logp, torch.zeros_like(self.logp)).sum(1) / self.length

    def read_mean(self, values: Tensor) -> Tensor:
        """(N,) the plain mean of ``values`` (N, T) over the tokens the estimate reads (weight > 0):
        GRPO's per-token average (with one_step, every counted token; with elbo, the masked ones).
        Unread tokens are selected out, never multiplied by zero: their values (an unmasked token's
        prediction of itself) may be infinite. A row that reads no token (an ELBO sample that masked
        none of a short response) gives 0 and no gradient."""
        read = self.weight > 0
        return torch.where(read, values, torch.zeros_like(values)).sum(1) / read.sum(1).clamp(min=1)


def counted_positions(responses: Tensor, stop_ids: Tensor) -> Tensor:
    """(N, L) bool: the response positions up to and including each row's first stop token."""
    stop = torch.isin(responses, stop_ids)
    length = responses.shape[1]
    first = torch.where(stop.any(1), stop.int().argmax(1), torch.full_like(stop[:, 0], length, dtype=torch.long))
    return torch.arange(length, device=responses.device)[None, :] <= first[:, None]


@dataclass(frozen=True)
class Estimator:
    """``kind``: "one_step" or "elbo"; ``p_mask_prompt`` (one_step): the probability of masking
    each prompt token; ``mc_samples`` (elbo): masks averaged, one forward each."""

    kind: str = "one_step"
    p_mask_prompt: float = 0.15
    mc_samples: int = 1

    def __post_init__(self):
        checks.one_of(self.kind, ESTIMATORS, who="Estimator", name="estimator")
        checks.real(self.p_mask_prompt, who="Estimator", name="p_mask_prompt", rule="lie in [0, 1)",
                    ok=lambda v: 0 <= v < 1)
        checks.integer(self.mc_samples, who="Estimator", name="mc_samples", minimum=1)
        if self.kind == "one_step" and self.mc_samples != 1:
            raise InputError("Estimator: mc_samples applies to estimator='elbo'; one_step is one forward")

    @property
    def forwards(self) -> int:
        """dLLM forwards per row (J)."""
        return self.mc_samples if self.kind == "elbo" else 1

    def __call__(self, model, encoded: list[list[int]], responses: Tensor, keys: Tensor, counter: int) -> TokenTerms:
        """Terms of the responses (N, L) after the prompts ``encoded`` (N lists of ids) under
        ``model``'s current weights (with autograd), with masks from ``keys`` (N,) and ``counter``."""
        device = responses.device
        n, length = responses.shape
        ids, attn, pos, width = (t.to(device) if isinstance(t, Tensor) else t for t in model.canvas(encoded, length))
        stops = torch.as_tensor(list(model.stop_ids), dtype=torch.long, device=device)
        counted = counted_positions(responses, stops)                              # (N, L)
        cols = torch.arange(ids.shape[1], device=device)
        logps, weights = [], []
        for j in range(self.forwards):
            u = rng.uniform(rng.derive(keys[:, None], rng.TRAIN_MASK, counter, j, cols[None, :]))   # (N, S)
            if self.kind == "one_step":                    # response all masked, prompt tokens at p_mask_prompt
                canvas = torch.where((u < self.p_mask_prompt) & attn & (cols[None, :] < width), model.mask_id, ids)
                weight = counted.double()
            else:                                          # prompt clean, response masked at rate p
                p = ELBO_EPS + (1 - ELBO_EPS) * rng.uniform(rng.derive(keys, rng.TRAIN_RATE, counter, j))  # (N,)
                masked = u[:, width:] < p[:, None]
                canvas = ids.clone()
                canvas[:, width:] = torch.where(masked, model.mask_id, responses)
                weight = (masked & counted).double() / p[:, None]
            logits = model.position_logits(canvas, attn, pos)[:, width:]          # (N, L, V)
            logp = -F.cross_entropy(logits.float().flatten(0, 1), responses.flatten(), reduction="none")
            logps.append(logp.view(n, length))
            weights.append((weight / self.forwards).float())
        return TokenTerms(torch.cat(logps, 1), torch.cat(weights, 1), counted.sum(1).clamp(min=1).float())
