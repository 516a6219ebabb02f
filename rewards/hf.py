"""HFRewardModel: a Hugging Face sequence-classification reward model (e.g. Skywork-Reward-V2).

The RM reads ``[prefix | response | suffix]`` where prefix and suffix come from its own chat
template rendered around the response, tokenised once per prompt and cached. ``score_embeds``
packs each row without gaps (right padding, explicit position ids) and reads the score at the
last real token, exactly as ``score_text`` does for discrete text, which goes through the very
same path with the embeddings of its token ids. So on one-hot inputs the two agree.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict

import torch
from torch import Tensor

from entrgi_core.hub import as_dtype, check_remote_code, check_source, max_positions
from entrgi_core.errors import InputError
from rewards.base import RewardAdapter, RewardContext, pad_token_ids

_SENTINEL = "\u2063ENTRGI_RESPONSE\u2063"


class HFRewardModel(RewardAdapter):
    """``HFRewardModel(path)`` loads an ``AutoModelForSequenceClassification`` and its tokenizer
    (hub name or local path); ``from_model(model, tokenizer)`` wraps objects in memory."""

    def __init__(self, path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                 min_coverage: float = 0.95, prefix_cache: bool | None = None, autocast: str | None = None):
        super().__init__()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        check_source(path, "HFRewardModel path")
        check_remote_code(path, trust_remote_code)
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=as_dtype(dtype),
                                                                   trust_remote_code=trust_remote_code)
        self._setup(model, tok, min_coverage, path, prefix_cache, autocast)

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | torch.device = "cpu", **kwargs) -> "HFRewardModel":
        return cls(path, **kwargs).to(device)

    @classmethod
    def from_model(cls, model, tokenizer, *, min_coverage: float = 0.95, name: str | None = None,
                   prefix_cache: bool | None = None, autocast: str | None = None):
        self = cls.__new__(cls)
        RewardAdapter.__init__(self)
        self._setup(model, tokenizer, min_coverage, name, prefix_cache, autocast)
        return self

    CACHE_SIZE = 4096   # prompts whose template token ids are kept (least recently used dropped)

    def _setup(self, model, tokenizer, min_coverage, name, prefix_cache=None, autocast=None):
        self.model = model.eval().requires_grad_(False)     # the only registered submodule
        if prefix_cache not in (None, True, False):
            raise InputError(f"HFRewardModel: prefix_cache must be None (auto), true or false, got {prefix_cache!r}")
        self.prefix_cache = prefix_cache
        self.autocast = None if autocast is None else as_dtype(autocast)
        self._causal: bool | None = None
        self.tokenizer = tokenizer
        self.min_coverage = min_coverage
        self.name = name or getattr(tokenizer, "name_or_path", None) or type(model).__name__
        if self.head is None:
            raise InputError(f"{self.name}: no `score` or `classifier` head found on {type(model).__name__}")
        self.max_positions = max_positions(model.config)
        self._cache: OrderedDict[str, tuple[list[int], list[int]]] = OrderedDict()

    @property
    def backbone(self):
        return self.model.base_model

    @property
    def head(self):
        return getattr(self.model, "score", None) or getattr(self.model, "classifier", None)

    @property
    def embedding_table(self) -> Tensor:
        return self.model.get_input_embeddings().weight

    # ----------------------------------------------------------------------- prompt parts

    def _parts(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids of the chat template before and after the response, cached per prompt."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
        else:
            tok = self.tokenizer
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template(
                    [{"role": "user", "content": prompt}, {"role": "assistant", "content": _SENTINEL}],
                    tokenize=False,
                )
                if text.count(_SENTINEL) != 1:
                    raise InputError(f"{self.name}: the chat template does not place the response exactly once")
                prefix, suffix = text.split(_SENTINEL)
            else:
                prefix, suffix = prompt + "\n", ""
            enc = lambda s: tok(s, add_special_tokens=False)["input_ids"] if s else []  # noqa: E731
            self._cache[prompt] = (enc(prefix), enc(suffix))
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return self._cache[prompt]

    def template_length(self, prompt: str) -> int:
        prefix, suffix = self._parts(prompt)
        return len(prefix) + len(suffix)

    def prepare(self, prompts: list[str]) -> RewardContext:
        parts = [self._parts(p) for p in prompts]
        table = self.embedding_table
        pre, pre_keep = pad_token_ids([a for a, _ in parts], self.device)    # (B, P) right-padded
        suf, suf_keep = pad_token_ids([b for _, b in parts], self.device)    # (B, S)
        pre_len, suf_len = pre_keep.sum(1), suf_keep.sum(1)
        with torch.no_grad():
            data = dict(prefix=table[pre], prefix_len=pre_len, suffix=table[suf], suffix_len=suf_len)
            if self.uses_prefix_cache:
                data.update(self._prefix_states(data["prefix"], pre_len))
        return RewardContext(list(prompts), data)

    # ----------------------------------------------------------------------- prefix cache

    @property
    def uses_prefix_cache(self) -> bool:
        """Whether the prompt prefix's keys and values are computed once per batch (``prepare``) and
        reused by every ``score_embeds`` call. Exact only for causal backbones: ``prefix_cache=None``
        turns it on when a probe finds the backbone causal (a later token does not change an earlier
        one's state)."""
        if self.prefix_cache is not None:
            return self.prefix_cache
        if self._causal is None:
            with torch.no_grad():
                x = torch.randn(2, 3, self.embedding_table.shape[1], generator=torch.Generator().manual_seed(0))
                x = x.to(self.device, self.embedding_table.dtype)
                y = x[:1].clone()
                y[:, 2] = x[1, 2]              # another last token (not a shift: LayerNorm would cancel one)
                hx, hy = (self.backbone(inputs_embeds=v).last_hidden_state[:, :2].float() for v in (x[:1], y))
                self._causal = bool(torch.allclose(hx, hy, atol=1e-6, rtol=1e-5))
        return self._causal

    @property
    def _cache_kwarg(self) -> str:
        """transformers >= 5.24 names the cache argument ``cache``; earlier versions ``past_key_values``."""
        return "cache" if "cache" in inspect.signature(self.backbone.forward).parameters else "past_key_values"

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)

    def _prefix_states(self, prefix: Tensor, prefix_len: Tensor) -> dict:
        """Keys/values of the right-padded prefixes (B, P, D) per layer, and the hidden state of each
        row's last prefix token (for a response and suffix that are both empty)."""
        p = prefix.shape[1]
        pos = torch.arange(p, device=prefix.device).expand(prefix.shape[0], p)
        attention = (pos < prefix_len[:, None]).long()
        with self._autocast(prefix.device):
            out = self.backbone(inputs_embeds=prefix, attention_mask=attention, position_ids=pos, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        last = (prefix_len - 1).clamp(min=0)
        h = out.last_hidden_state
        prefix_last = h.gather(1, last[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)
        return {"kv": kv, "prefix_last": prefix_last}

    # ----------------------------------------------------------------------- scoring

    def score_embeds(self, ctx: RewardContext, embeds: Tensor, keep: Tensor) -> Tensor:
        """Rewards (B,) for response embeddings (B, L, D) whose first keep.sum(1) positions count."""
        if "kv" in ctx.data:
            return self._score_after_prefix(ctx.data, embeds, keep)
        d = ctx.data
        b, length, dim = embeds.shape
        a, s = d["prefix_len"], d["suffix_len"]                        # (B,)
        r = keep.sum(1)                                                # (B,) response lengths
        total = d["prefix"].shape[1] + length + d["suffix"].shape[1]
        pos = torch.arange(total, device=embeds.device).expand(b, total)  # (B, T)
        a_, r_, s_ = a[:, None], r[:, None], s[:, None]

        x = embeds.new_zeros(b, total, dim)
        x = torch.where((pos < a_)[..., None], _take(d["prefix"].to(embeds.dtype), pos), x)
        in_resp = (pos >= a_) & (pos < a_ + r_)
        x = torch.where(in_resp[..., None], _take(embeds, pos - a_), x)
        in_suf = (pos >= a_ + r_) & (pos < a_ + r_ + s_)
        x = torch.where(in_suf[..., None], _take(d["suffix"].to(embeds.dtype), pos - a_ - r_), x)
        attention = (pos < a_ + r_ + s_).long()                         # (B, T) right padding
        with self._autocast(x.device):
            hidden = self.backbone(inputs_embeds=x, attention_mask=attention, position_ids=pos).last_hidden_state
        last = (a + r + s - 1).clamp(min=0)                             # (B,) last real token
        h = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)  # (B, H)
        return self.head(h)[:, 0].float()

    def _score_after_prefix(self, d: dict, embeds: Tensor, keep: Tensor) -> Tensor:
        """``score_embeds`` on top of the cached prefix: only ``[response | suffix]`` runs, at
        positions a + j, attending to the cached prefix keys (no gradient reaches the prefix)."""
        from transformers import DynamicCache

        b, length, dim = embeds.shape
        a, s = d["prefix_len"], d["suffix_len"]                        # (B,)
        r = keep.sum(1)                                                # (B,)
        total = length + d["suffix"].shape[1]
        pos = torch.arange(total, device=embeds.device).expand(b, total)  # (B, T)
        r_, s_ = r[:, None], s[:, None]
        x = torch.where((pos < r_)[..., None], _take(embeds, pos), embeds.new_zeros(b, total, dim))
        in_suf = (pos >= r_) & (pos < r_ + s_)
        x = torch.where(in_suf[..., None], _take(d["suffix"].to(embeds.dtype), pos - r_), x)
        p = d["kv"][0][0].shape[-2]
        cached = torch.arange(p, device=embeds.device)[None, :] < a[:, None]           # (B, P)
        attention = torch.cat([cached, pos < r_ + s_], dim=1).long()                  # (B, P + T)
        cache = DynamicCache(ddp_cache_data=d["kv"], config=self.model.config)       # fresh: forward appends
        with self._autocast(x.device):
            hidden = self.backbone(inputs_embeds=x, attention_mask=attention, position_ids=a[:, None] + pos,
                                   use_cache=True, **{self._cache_kwarg: cache}).last_hidden_state
        last = (r + s - 1).clamp(min=0)
        h = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)   # (B, H)
        h = torch.where((r + s > 0)[:, None], h, d["prefix_last"].to(h.dtype))
        return self.head(h)[:, 0].float()

    @torch.no_grad()
    def score_text(self, prompts: list[str], responses: list[str]) -> Tensor:
        if len(prompts) != len(responses):
            raise InputError(f"score_text: {len(prompts)} prompts but {len(responses)} responses")
        ids, keep = pad_token_ids([self.tokenizer(t, add_special_tokens=False)["input_ids"] if t else []
                                   for t in responses], self.device)
        return self.score_embeds(self.prepare(prompts), self.embedding_table[ids], keep)


def _take(src: Tensor, idx: Tensor) -> Tensor:
    """``src`` (B, n, D) gathered at ``idx`` (B, T), clamped into range -> (B, T, D)."""
    idx = idx.clamp(0, src.shape[1] - 1)
    return src.gather(1, idx[:, :, None].expand(-1, -1, src.shape[2]))
