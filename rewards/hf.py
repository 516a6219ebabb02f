"""HFRewardModel: a Hugging Face sequence-classification reward model (e.g. Skywork-Reward-V2, or an
encoder classifier such as a BERT, RoBERTa or DeBERTa reward model).

The RM reads ``[prefix | response | suffix]``: with a chat template, prefix and suffix are the
template rendered around the response; without one, the tokenizer's own pair rule around the
prompt and the response (``[CLS] prompt [SEP] response [SEP]`` for BERT, with its token types).
They are tokenised once per prompt and cached. ``score_embeds`` packs each row without gaps
(right padding) and scores it as the model itself does: a causal backbone (decoder reward models)
by the head at the last real token (their own pooling; explicit positions, an optional cached
prefix), any other through the model's own forward (its pooler, its classifier, its positions
and token types). ``score_text`` goes through the very same path with the embeddings of its token
ids, so on one-hot inputs the two agree, and both equal ``model(**tokenizer(...)).logits``: a
model whose own forward disagrees is refused when it is loaded.
"""
from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import Tensor

from entrgi_core.hub import as_dtype, check_remote_code, check_source, max_positions
from entrgi_core.errors import InputError
from rewards.base import RewardAdapter, RewardContext, pad_token_ids

_SENTINEL = "\u2063ENTRGI_RESPONSE\u2063"
PROBE = ("Was the stay good?", "Yes, the room was clean and the staff kind.")   # the load-time agreement check


class Layout(NamedTuple):
    """Token ids (and token types) around the response, for one prompt."""

    prefix: list[int]
    suffix: list[int]
    prefix_types: list[int]
    response_type: int
    suffix_types: list[int]


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
        self.max_positions = max_positions(model.config)
        self._cache: OrderedDict[str, Layout] = OrderedDict()
        self.takes_token_types = "token_type_ids" in inspect.signature(self.model.forward).parameters
        if self._causal_backbone and self.head is None:
            raise InputError(f"{self.name}: no `score` or `classifier` head found on {type(model).__name__}")
        if prefix_cache and not self._causal_backbone:
            raise InputError(f"{self.name}: prefix_cache=True reuses the prompt's keys and values, which is exact only "
                             "for a causal backbone, and this one is bidirectional; leave prefix_cache unset")
        self.check_own_forward()

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

    def _parts(self, prompt: str) -> Layout:
        """Token ids (and types) of the chat template, or of the tokenizer's pair rule, before and
        after the response; cached per prompt."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
        else:
            self._cache[prompt] = self._template_layout(prompt) if self._has_template else self._pair_layout(prompt)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return self._cache[prompt]

    @property
    def _has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def _template_layout(self, prompt: str) -> Layout:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
        if text.count(_SENTINEL) != 1:
            raise InputError(f"{self.name}: the chat template does not place the response exactly once")
        prefix, suffix = (self.tokenizer(t, add_special_tokens=False)["input_ids"] if t else []
                          for t in text.split(_SENTINEL))
        return Layout(prefix, suffix, [0] * len(prefix), 0, [0] * len(suffix))

    def _pair_layout(self, prompt: str) -> Layout:
        """The tokenizer's own rule for a (prompt, response) pair: its special tokens and token
        types around a marker response, found from the end of the pair's ids."""
        tok = self.tokenizer
        marker = tok("a", add_special_tokens=False)["input_ids"]
        enc = tok(prompt, "a")                           # token types only where the tokenizer gives them
        ids, types = enc["input_ids"], enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        starts = [i for i in range(len(ids) - len(marker), -1, -1) if ids[i: i + len(marker)] == marker]
        if not marker or not starts:
            raise InputError(f"{self.name}: its tokenizer has no chat template, and its pair rule does not keep the "
                             "response's tokens as they are alone; give the tokenizer a chat template")
        at, end = starts[0], starts[0] + len(marker)
        return Layout(ids[:at], ids[end:], types[:at], types[at], types[end:])

    def template_length(self, prompt: str) -> int:
        parts = self._parts(prompt)
        return len(parts.prefix) + len(parts.suffix)

    def prepare(self, prompts: list[str]) -> RewardContext:
        parts = [self._parts(p) for p in prompts]
        table = self.embedding_table
        pre, pre_keep = pad_token_ids([p.prefix for p in parts], self.device)    # (B, P) right-padded
        suf, suf_keep = pad_token_ids([p.suffix for p in parts], self.device)    # (B, S)
        pre_len, suf_len = pre_keep.sum(1), suf_keep.sum(1)
        with torch.no_grad():
            data = dict(prefix=table[pre], prefix_len=pre_len, suffix=table[suf], suffix_len=suf_len)
            if self.uses_prefix_cache:
                data.update(self._prefix_states(data["prefix"], pre_len))
            elif self.takes_token_types:                                           # (B, P), (B,), (B, S)
                data.update(prefix_types=pad_token_ids([p.prefix_types for p in parts], self.device)[0],
                            response_type=torch.tensor([p.response_type for p in parts], device=self.device),
                            suffix_types=pad_token_ids([p.suffix_types for p in parts], self.device)[0])
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
        return self._causal_backbone

    @property
    def _causal_backbone(self) -> bool:
        """Whether a later token leaves every earlier token's state unchanged (a decoder), probed once."""
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
        if not self.uses_prefix_cache and not self._causal_backbone:    # the model's own pooling and positions
            kwargs = {}
            if "prefix_types" in d:                                     # (B, T) token types as the pair rule sets them
                types = torch.where(pos < a_, _take(d["prefix_types"][..., None], pos)[..., 0],
                                    d["response_type"][:, None])
                types = torch.where(in_suf, _take(d["suffix_types"][..., None], pos - a_ - r_)[..., 0], types)
                kwargs["token_type_ids"] = torch.where(attention.bool(), types, torch.zeros_like(types))
            with self._autocast(x.device):
                return self.model(inputs_embeds=x, attention_mask=attention, **kwargs).logits[:, 0].float()
        with self._autocast(x.device):
            hidden = self.backbone(inputs_embeds=x, attention_mask=attention, position_ids=pos).last_hidden_state
        last = (a + r + s - 1).clamp(min=0)                             # (B,) last real token: a decoder's pooling
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
    def own_score(self, prompt: str, response: str) -> float:
        """The model's own forward on its tokenizer's input for (prompt, response): the chat template
        tokenised, or the tokenizer's pair rule."""
        tok = self.tokenizer
        if self._has_template:
            inputs = tok.apply_chat_template([{"role": "user", "content": prompt},
                                              {"role": "assistant", "content": response}],
                                             tokenize=True, return_dict=True, return_tensors="pt")
        else:
            inputs = tok(prompt, response, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")}
        return float(self.model(**inputs).logits[0, 0])

    def check_own_forward(self) -> None:
        """Refuse a model whose own forward scores a probe pair differently from ``score_text`` (an
        architecture whose pooling, positions or special tokens this adapter does not reproduce)."""
        own, ours = self.own_score(*PROBE), float(self.score_text([PROBE[0]], [PROBE[1]])[0])
        low = self.embedding_table.dtype in (torch.float16, torch.bfloat16) or self.autocast is not None
        tol = 3e-2 if low else 1e-4
        if abs(own - ours) > tol * max(1.0, abs(own)):
            raise InputError(f"{self.name}: {type(self.model).__name__} scores a probe pair {own:.6g} by its own "
                             f"forward but {ours:.6g} through entrgi's path (its pooling, positions or special tokens are "
                             "not reproduced), so guidance would read another model; it is refused")

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
