"""The trust region of the gradient strategies: reverse KL from the refined distribution to the
step's own unguided one.

``GatedGuidance(kl=beta)`` minimises ``-sum(rewards) + beta * sum_i KL(q_i || p_i)`` over the
masked positions i, with ``q_i = softmax(phi_i / tau)`` the distribution being refined and
``p_i = softmax(phi0_i / tau)`` the step's unguided one (the logits the step already has: no
extra dLLM forward). As in the authors' RGRL code (``beta * KL(softmax(phi) || p_base)``), it
penalises guidance for moving probability onto tokens the model found implausible.

The gradient is written in closed form and added to ``phi``'s gradient after the reward's
backward, so no (N, V) tensor is kept for autograd:

    d KL(q || p) / d phi_v = q_v / tau * (d_v - KL),   d_v = log q_v - log p_v,   KL = sum_u q_u d_u

(the softmax Jacobian ``dq_u / dphi_v = q_u (1[u = v] - q_v) / tau`` applied to
``dKL / dq_u = d_u + 1``; the constant 1 cancels because q sums to 1). Tokens with
``q_v = 0`` add nothing, also where p_v = 0 (0 log 0 = 0).
"""
from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22          # rows per chunk = this / V: bounds the transient (rows, V) buffers


def base_log_probs(phi0: Tensor, tau: float) -> Tensor:
    """log p = log_softmax(phi0 / tau) (N, V) float32 of the step's unguided logits, once per step."""
    return torch.log_softmax(phi0.detach().float() / tau, dim=-1)


@torch.no_grad()
def reverse_kl_(phi: Tensor, log_p: Tensor, tau: float, weight: float, grad: Tensor | None) -> Tensor:
    """KL(softmax(phi / tau) || exp(log_p)) per row (N,), and ``weight`` times its gradient with
    respect to ``phi`` (N, V) added into ``grad`` (N, V) in place (skipped when ``grad`` is None).
    Computed in float32 (float64 for float64 logits)."""
    n, v = phi.shape
    dtype = torch.promote_types(phi.dtype, torch.float32)             # float32, or float64 when given
    kl = torch.empty(n, dtype=dtype, device=phi.device)
    rows = max(1, CHUNK_ELEMENTS // max(v, 1))
    for r0 in range(0, n, rows):
        sl = slice(r0, min(n, r0 + rows))
        log_q = torch.log_softmax(phi[sl].to(dtype) / tau, dim=-1)            # (r, V)
        q = log_q.exp()
        d = torch.where(q > 0, log_q - log_p[sl], torch.zeros_like(log_q))   # 0 where q = 0 (no 0 * inf)
        kl[sl] = (q * d).sum(-1)
        if grad is not None:
            grad[sl] += (q * (d - kl[sl, None])).mul_(weight / tau).to(grad.dtype)
    return kl
