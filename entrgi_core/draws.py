"""Token draws and commit confidences over (N, V) logits, in row chunks.

Randomness comes in as one uniform per row (``u``), so the draw is inverse-CDF sampling of the
(top-p / top-k filtered) distribution: batch-invariant and device-invariant by construction.
"""
from __future__ import annotations

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22  # rows per chunk = this / V: bounds the transient (rows, V) buffers


def _chunks(n: int, v: int):
    rows = max(1, CHUNK_ELEMENTS // max(v, 1))
    for r0 in range(0, n, rows):
        yield slice(r0, min(n, r0 + rows))


def _filtered_probs(logits: Tensor, temperature: float, top_p: float, top_k: int | None):
    """Probabilities after temperature and top-p / top-k, renormalised. Returns (probs, order)
    where order is the descending sort permutation when a filter needed one, else None;
    probs are then in sorted order, over V columns or only the leading ones a filter can keep."""
    z = logits.float()
    if temperature > 0:
        z = z / temperature
    probs = torch.softmax(z, dim=-1)
    if top_p >= 1.0 and top_k is None:
        return probs, None
    sorted_p, order = _sorted_descending(probs, top_p, top_k)
    keep = torch.ones_like(sorted_p, dtype=torch.bool)
    if top_p < 1.0:
        keep &= (sorted_p.cumsum(-1) - sorted_p) < top_p     # always keeps the first token
    if top_k is not None:
        keep[:, top_k:] = False
    sorted_p = sorted_p * keep
    return sorted_p / sorted_p.sum(-1, keepdim=True), order


CANDIDATES = 1024   # the filters are first tried on each row's largest probabilities only


def _sorted_descending(probs: Tensor, top_p: float, top_k: int | None) -> tuple[Tensor, Tensor]:
    """``torch.sort(probs, descending=True, stable=True)`` (n, V) in every column the top-p / top-k
    filters can keep, without sorting all of V: the ``CANDIDATES`` largest probabilities of each
    row, ordered as the stable sort orders them (value down, then index up), suffice for a row
    whose filtered set closes inside them at a value strictly above the smallest candidate; the
    other columns then hold 0 (which no filter keeps, so the renormalised distribution, its
    cumulative sums and every draw are bit for bit the full sort's). Other rows are fully sorted.
    When every row closes inside its candidates, only those columns are returned, (n, CANDIDATES):
    the zero columns change no draw, confidence or probability, and an (n, V) index tensor is spared."""
    n, v = probs.shape
    if v <= 2 * CANDIDATES:
        return torch.sort(probs, dim=-1, descending=True, stable=True)
    vals, idx = torch.topk(probs, CANDIDATES, dim=-1, sorted=False)
    idx, by_index = idx.sort(dim=-1)                                      # index up ...
    vals, by_value = vals.gather(1, by_index).sort(dim=-1, descending=True, stable=True)   # ... then value down
    idx = idx.gather(1, by_value)
    kept = torch.ones_like(vals, dtype=torch.bool)
    if top_p < 1.0:
        kept &= (vals.cumsum(-1) - vals) < top_p
    if top_k is not None:
        kept[:, top_k:] = False
    last = kept.sum(1)                                                    # (n,) kept candidates, >= 1
    inside = (last < CANDIDATES) & (vals.gather(1, (last - 1)[:, None])[:, 0] > vals[:, -1])
    outside = (~inside).nonzero().squeeze(1)                              # host sync: rows to sort fully
    if not outside.numel():
        return vals, idx                        # (n, CANDIDATES): every column a filter can keep
    sorted_p = torch.zeros_like(probs)
    order = torch.zeros(n, v, dtype=torch.long, device=probs.device)
    sorted_p[:, :CANDIDATES], order[:, :CANDIDATES] = vals, idx
    sorted_p[outside], order[outside] = torch.sort(probs[outside], dim=-1, descending=True, stable=True)
    return sorted_p, order


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    cdf = probs.cumsum(-1)                                   # (n, V) or (n, CANDIDATES)
    target = u.to(cdf.dtype).clamp(max=1.0 - 2**-24).unsqueeze(1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target).squeeze(1).clamp_(max=probs.shape[1] - 1)


@torch.no_grad()
def sample_tokens(logits: Tensor, u: Tensor, *, temperature: float, top_p: float = 1.0,
                  top_k: int | None = None, confidence: str | None = None) -> tuple[Tensor, Tensor | None]:
    """Sample one token per row of ``logits`` (N, V) with uniforms ``u`` (N,).

    ``temperature == 0`` takes the argmax. ``confidence`` (commit scores): Dream's "maskgit_plus"
    (probability of the sampled token), "topk_margin" (top-1 minus top-2 probability), "entropy"
    (sum p log p, higher = more certain); LLaDA's "low_confidence" (probability of the sampled
    token under the untempered, unfiltered softmax of ``logits``); or None. Returns (tokens (N,), confidence (N,) or None).
    """
    n, v = logits.shape
    tokens = torch.empty(n, dtype=torch.long, device=logits.device)
    conf = torch.empty(n, dtype=torch.float32, device=logits.device) if confidence else None
    for sl in _chunks(n, v):
        probs, order = _filtered_probs(logits[sl], temperature, top_p, top_k)
        if temperature > 0:
            idx = _inverse_cdf(probs, u[sl])
        else:
            idx = probs.argmax(-1)
        tokens[sl] = idx if order is None else order.gather(1, idx[:, None]).squeeze(1)
        if confidence == "low_confidence":
            conf[sl] = torch.softmax(logits[sl].float(), dim=-1).gather(1, tokens[sl, None]).squeeze(1)
        elif confidence is not None:
            conf[sl] = _confidence(probs, idx, confidence)
    return tokens, conf


def _confidence(probs: Tensor, idx: Tensor, kind: str) -> Tensor:
    if kind == "maskgit_plus":
        return probs.gather(1, idx[:, None]).squeeze(1)
    if kind == "topk_margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[:, 0] - top2[:, 1]
    if kind == "entropy":
        return -torch.special.entr(probs).sum(-1)
    raise ValueError(f"unknown confidence {kind!r}")


@torch.no_grad()
def neg_entropy(logits: Tensor, *, temperature: float, top_p: float = 1.0, top_k: int | None = None) -> Tensor:
    """Dream's "entropy" commit confidence, sum p log p (N,), of the filtered distribution of
    ``logits`` (N, V); it does not depend on the sampled token."""
    n, v = logits.shape
    conf = torch.empty(n, dtype=torch.float32, device=logits.device)
    for sl in _chunks(n, v):
        conf[sl] = -torch.special.entr(_filtered_probs(logits[sl], temperature, top_p, top_k)[0]).sum(-1)
    return conf


@torch.no_grad()
def token_log_probs(logits: Tensor, tokens: Tensor, *, temperature: float, top_p: float = 1.0,
                    top_k: int | None = None) -> Tensor:
    """log q(tokens) (N,) float64 under the distribution ``sample_tokens`` draws from (temperature,
    then top-p / top-k, renormalised) for ``logits`` (N, V) and ``tokens`` (N,); -inf for a token
    the filters drop. Needs ``temperature > 0``."""
    if not temperature > 0:
        raise ValueError("token_log_probs: a greedy sampler (temperature 0) has no token probabilities")
    n, v = logits.shape
    out = torch.empty(n, dtype=torch.float64, device=logits.device)
    for sl in _chunks(n, v):
        probs, order = _filtered_probs(logits[sl], temperature, top_p, top_k)
        if order is not None:                                # the token's column in sorted order (0 if dropped)
            probs = (probs * (order == tokens[sl, None])).sum(-1, keepdim=True)
            out[sl] = probs.squeeze(1).double().log()
        else:
            out[sl] = probs.gather(1, tokens[sl, None]).squeeze(1).double().log()
    return out
