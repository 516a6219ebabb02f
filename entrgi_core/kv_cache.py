"""A block KV cache for the dLLM (Fast-dLLM's block caches; approximate, off by default).

With blocks (``DenoiseConfig.block_length``), a row's first step in a block runs the full canvas
and keeps every layer's keys and values (a **refresh**); its later steps in the block run only
some columns against the kept keys and values:

- ``"prefix"``: the current and later blocks run; the prompt and earlier blocks are read from the
  refresh (they are committed, but a bidirectional model's keys there depend on the later
  columns, which have changed since: hence approximate);
- ``"dual"``: only the current block runs; prompt, earlier and later blocks are read from the
  refresh (the later blocks' logits, which guidance reads for its relaxed input, are the
  refresh's too).

``cache_refresh=r`` also refreshes every r steps within a block; ``r = 1`` refreshes at every
step, which is exactly the uncached sampler (tested). Keys and values enter the model through
transformers' cache interface: a ``DynamicCache`` holding the prefix, to which the model appends
the run columns' own ("prefix"), or a cache whose layers also append the kept suffix ("dual").
A model adapter offers the modes its model can take (``DiffusionLM.cache_modes``).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _dual_cache(prefix: list, suffix: list):
    """A transformers cache whose layer l returns ``[prefix keys | the run columns' keys | suffix keys]``
    (and the same for values), keeping nothing of the run."""
    from transformers import Cache
    from transformers.cache_utils import DynamicLayer

    class SuffixLayer(DynamicLayer):
        def __init__(self, pk, pv, sk, sv):
            super().__init__()
            self.keys, self.values, self.suffix = pk, pv, (sk, sv)
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            sk, sv = self.suffix
            return torch.cat([self.keys, key_states, sk], -2), torch.cat([self.values, value_states, sv], -2)

    return Cache(layers=[SuffixLayer(pk, pv, sk, sv) for (pk, pv), (sk, sv) in zip(prefix, suffix)])


class BlockCache:
    """The kept keys and values of R rows, each from its own last refresh."""

    def __init__(self, mode: str, refresh_every: int, rows: int, device):
        self.mode, self.refresh_every = mode, refresh_every
        self.keys: list[Tensor] | None = None      # per layer (R, H, S, Dh), from each row's last refresh
        self.values: list[Tensor] | None = None
        self.logits: Tensor | None = None          # (R, L, V) response logits of each row's last refresh
        self.block = torch.full((rows,), -1, dtype=torch.long, device=device)   # block of that refresh

    def reorder(self, ancestors: Tensor) -> None:
        """Rows take their ancestors' canvases (particle resampling): and their kept keys and values."""
        if self.keys is not None:
            self.keys = [k[ancestors] for k in self.keys]
            self.values = [v[ancestors] for v in self.values]
            self.logits = self.logits[ancestors]
        self.block = self.block[ancestors]

    def masked_logits(self, model, ids: Tensor, attn: Tensor, pos: Tensor, width: int, idx: Tensor, blocks,
                      row_tokens: Tensor, r: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Logits (N, V) at the masked positions ``(r, c)`` (rows of the canvas) and the tokens each
        of the rows ``idx`` (n,) ran (n,): a refresh for rows that start a block (or are due), a
        cached run for the others, grouped by block; kept logits where nothing ran (dual).
        ``blocks`` is the rows' ``entrgi_core.schedules.Blocks``."""
        block, block_len = blocks.block, blocks.length
        need = self.block[idx] != block[idx]
        if self.refresh_every > 0:
            need |= blocks.local[idx] % self.refresh_every == 0
        tokens = torch.empty(len(idx), dtype=torch.long, device=ids.device)
        fresh = need.nonzero().squeeze(1)                             # host sync: which rows refresh
        if fresh.numel():
            self.refresh(model, ids, attn, pos, width, idx[fresh], block)
            tokens[fresh] = row_tokens[idx[fresh]]
        kept = (~need).nonzero().squeeze(1)
        for b in block[idx[kept]].unique().tolist():                  # rows of one block run together
            group = kept[block[idx[kept]] == b]
            tokens[group] = self.run(model, ids, attn, pos, width, idx[group], b, block_len)
        return self.logits[r, c].float(), tokens

    def refresh(self, model, ids, attn, pos, width: int, rows: Tensor, block: Tensor) -> Tensor:
        """Full forward of ``rows``, keeping their keys, values and response logits (returned)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=getattr(model.model, "config", None))
        logits = model.logits(ids[rows], attn[rows], pos[rows], cache=cache)[:, width:]
        if len(cache.layers) == 0 or cache.get_seq_length() == 0:
            raise RuntimeError(f"{type(model).__name__}: the model did not fill the KV cache it was given")
        if self.keys is None:                                          # allocate at the first refresh
            r = len(self.block)
            self.keys = [layer.keys.new_zeros((r, *layer.keys.shape[1:])) for layer in cache.layers]
            self.values = [layer.values.new_zeros((r, *layer.values.shape[1:])) for layer in cache.layers]
            self.logits = logits.new_zeros((r, *logits.shape[1:]))
        for kept, layer in zip(self.keys, cache.layers):
            kept[rows] = layer.keys
        for kept, layer in zip(self.values, cache.layers):
            kept[rows] = layer.values
        self.logits[rows] = logits
        self.block[rows] = block[rows]
        return logits

    def run(self, model, ids, attn, pos, width: int, rows: Tensor, b: int, block_len: int) -> Tensor:
        """Run the columns of block ``b`` (and the later ones, "prefix") of ``rows`` against the kept
        keys and values, writing their response logits over the kept ones; (n,) the columns run."""
        from transformers import DynamicCache

        shift = int(model.shift_logits)                                # Dream: column i's logits predict i + 1
        length = ids.shape[1] - width
        start = width + b * block_len - shift                          # the first column run
        end = ids.shape[1] if self.mode == "prefix" else width + (b + 1) * block_len - shift
        prefix = [(k[rows, :, :start], v[rows, :, :start]) for k, v in zip(self.keys, self.values)]   # (n, H, P, Dh)
        if self.mode == "prefix":                                      # keys: [prefix | run]
            cache = DynamicCache(ddp_cache_data=prefix, config=getattr(model.model, "config", None))
        else:                                                          # keys: [prefix | run | suffix]
            cache = _dual_cache(prefix, [(k[rows, :, end:], v[rows, :, end:]) for k, v in zip(self.keys, self.values)])
        raw = model.forward_logits(ids[rows, start:end], attn[rows], pos[rows, start:end], cache=cache)   # (n, Q, V)
        first = start + shift - width                                  # response column of the first prediction
        n = min(end - start, length - first)
        self.logits[rows, first:first + n] = raw[:, :n].to(self.logits.dtype)
        return torch.full((len(rows),), end - start, dtype=torch.long, device=ids.device)
