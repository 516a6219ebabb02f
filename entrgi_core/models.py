"""Diffusion-LM adapters, of two kinds over one base.

``DiffusionModel`` is what every adapter has: the checkpoint (hub name or local path), its
tokenizer, the one stop rule (``entrgi_core.stops``), prompt encoding (chat template when the
tokenizer has one), response decoding and ``check(config, guidance)``, which refuses settings
the model cannot honour before any compute.

- ``DiffusionLM``: a **masked** diffusion LM that entrgi's sampler drives: it has a mask id and
  per-position logits for a left-padded canvas (B, S) with attention mask and position ids.
  ``MaskedLM`` (any HF masked LM), ``DreamLM`` (shifted logits) and ``LLaDALM`` are of this kind.
- ``OwnLoopLM``: a diffusion LM that runs **its own** generation loop, which entrgi guides from
  inside (``entrgi_core.diffusion_gemma.DiffusionGemmaLM``). It implements ``sample``.
"""
from __future__ import annotations

import abc

import torch
from torch import Tensor, nn

from entrgi_core.errors import InputError
from entrgi_core.hub import as_dtype, check_remote_code, check_source, max_positions
from entrgi_core.schedules import CommitSchedule, Dream, LLaDA
from entrgi_core.stops import first_stop, stop_ids


class DiffusionModel(nn.Module):
    """A frozen diffusion language model, loaded from a hub name or local path.

    ``Cls(path)`` loads tokenizer and weights (the typed constructor is the YAML config) through
    ``transformers.<auto_class>``; ``from_model(model, tokenizer)`` wraps objects in memory.
    """

    auto_class: str = "AutoModelForMaskedLM"

    def __init__(self, path: str, *, dtype: str = "float32", trust_remote_code: bool = False, **options):
        super().__init__()
        import transformers

        check_source(path, f"{type(self).__name__} path")
        check_remote_code(path, trust_remote_code)
        tok = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        loader = getattr(transformers, self.auto_class)
        model = loader.from_pretrained(path, dtype=as_dtype(dtype), trust_remote_code=trust_remote_code)
        self._setup(model, tok, path, **options)

    @classmethod
    def from_pretrained(cls, path: str, *, device: str | torch.device = "cpu", **kwargs) -> "DiffusionModel":
        return cls(path, **kwargs).to(device)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str | None = None, **options):
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(model, tokenizer, name, **options)
        return self

    def _setup(self, model: nn.Module, tokenizer, name: str | None, mask_id: int | None = None) -> None:
        """Frozen weights, the tokenizer and the stop rule; ``mask_id`` is excluded from the stops."""
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        generation = getattr(model, "generation_config", None)
        eos = next((t for t in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None),
                                _first(getattr(generation, "eos_token_id", None))) if t is not None), None)
        if eos is None:
            raise InputError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has neither an EOS nor a SEP "
                             "token, and the generation config names none")
        self.eos_id = int(eos)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        self.stop_ids = stop_ids(tokenizer, generation, mask_id=mask_id)
        self.vocab_size = int(self._output_vocab())
        self.name = name or getattr(tokenizer, "name_or_path", None) or type(model).__name__

    def _output_vocab(self) -> int:
        emb = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if emb is not None and hasattr(emb, "weight"):
            return emb.weight.shape[0]
        return self.model.config.vocab_size

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def max_positions(self) -> int | None:
        """How many positions (prompt + response) the model takes, from its config (None: unstated)."""
        return max_positions(getattr(self.model, "config", None))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check(self, config, guidance=None) -> None:
        """Refuse, before any compute, sampler settings or a strategy this model cannot run."""

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, through the chat template when the tokenizer has one."""
        tok = self.tokenizer
        out = []
        for p in prompts:
            if getattr(tok, "chat_template", None):
                text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True)
                out.append(tok(text, add_special_tokens=False)["input_ids"])
            else:
                out.append(tok(p)["input_ids"])
        return out

    def save_pretrained(self, path) -> None:
        """Weights, config and tokenizer to ``path``, loadable as ``type(self)(path)``."""
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()     # as the tokenizer's own settings say

    def response_text(self, ids: list[int]) -> str:
        """The text of a response's token ids, up to its first stop token."""
        return self.decode(ids[: first_stop(ids, self.stop_ids)])


def _first(ids):
    """The first of a generation config's EOS ids (one id, a list, or None)."""
    if isinstance(ids, (list, tuple)):
        return ids[0] if ids else None
    return ids


class DiffusionLM(DiffusionModel):
    """A masked diffusion LM driven by entrgi's sampler (``entrgi_core.sampler``).

    Subclasses pick the loader (``auto_class``), set ``shift_logits`` (Dream predicts token i at
    position i-1) and may override ``forward_logits`` when their model takes its inputs differently.
    """

    shift_logits: bool = False
    default_schedule: CommitSchedule = Dream()   # when DenoiseConfig.schedule is None (schedules are immutable)
    cache_modes: tuple[str, ...] = ()  # block KV cache modes it offers (entrgi_core.kv_cache)
    no_cache_reason = "its forward takes no key/value cache"

    def __init__(self, path: str, *, dtype: str = "float32", trust_remote_code: bool = False,
                 mask_id: int | None = None):
        super().__init__(path, dtype=dtype, trust_remote_code=trust_remote_code, mask_id=mask_id)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, mask_id: int | None = None, name: str | None = None):
        return super().from_model(model, tokenizer, name=name, mask_id=mask_id)

    @staticmethod
    def default_mask_id(tokenizer, model) -> int | None:
        if tokenizer.mask_token_id is not None:
            return tokenizer.mask_token_id
        return getattr(getattr(model, "config", None), "mask_token_id", None)

    def _setup(self, model: nn.Module, tokenizer, name: str | None, mask_id: int | None = None) -> None:
        mask_id = self.default_mask_id(tokenizer, model) if mask_id is None else mask_id
        if mask_id is None:
            raise InputError(
                f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no mask token and none was given: "
                "a masked diffusion LM needs one (pass mask_id=...)"
            )
        self.mask_id = int(mask_id)
        super()._setup(model, tokenizer, name, mask_id=self.mask_id)

    def check(self, config, guidance=None) -> None:
        if config.cache is not None and config.cache not in self.cache_modes:
            offered = f"it offers {list(self.cache_modes)}" if self.cache_modes else self.no_cache_reason
            raise InputError(f"{type(self).__name__}: cache={config.cache!r} is not available: {offered}; "
                             "run with cache=None")

    def response_text(self, ids: list[int]) -> str:
        cut = ids[: first_stop(ids, self.stop_ids)]
        return self.decode([t for t in cut if t != self.mask_id])

    def canvas(self, encoded: list[list[int]], length: int) -> tuple[Tensor, Tensor, Tensor, int]:
        """Left-padded canvases (B, W + length) on the CPU: each prompt of ``encoded`` ending at
        column W (the longest), then ``length`` masked response positions; their bool attention
        mask and position ids; and W."""
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width + length), self.pad_id, dtype=torch.long)
        attn = torch.zeros(ids.shape, dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, width - len(e): width] = torch.tensor(e, dtype=torch.long)
            attn[i, width - len(e):] = True
        ids[:, width:] = self.mask_id
        pos = (attn.long().cumsum(1) - 1).clamp(min=0)
        return ids, attn, pos, width

    def forward_logits(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache=None) -> Tensor:
        """The model's raw logits (B, Q, V) for the columns ``input_ids`` (B, Q); ``attention_mask``
        (B, S) covers every key column (with a ``cache``, the cached ones as well)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          **self._cache_argument(cache)).logits

    def _cache_parameter(self) -> str | None:
        """The name under which the model's backbone takes a key/value cache (transformers >= 5.24:
        ``cache``; earlier: ``past_key_values``), or None when it takes none."""
        import inspect

        backbone = getattr(self.model, "base_model", self.model)
        params = inspect.signature(backbone.forward).parameters
        return next((name for name in ("cache", "past_key_values") if name in params), None)

    def _cache_argument(self, cache) -> dict:
        return {} if cache is None else {self._cache_parameter(): cache, "use_cache": True}

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache=None) -> Tensor:
        """(B, S, V) logits predicting the token at each position of the canvas (B, S); a ``cache``
        given is filled with every layer's keys and values."""
        return self.position_logits(input_ids, attention_mask, position_ids, cache)

    def position_logits(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache=None) -> Tensor:
        """``logits`` with autograd (training, ``entrgi_core.training.likelihood``)."""
        args = (input_ids, attention_mask, position_ids)
        out = self.forward_logits(*args) if cache is None else self.forward_logits(*args, cache=cache)
        if self.shift_logits:
            out = torch.cat([out[:, :1], out[:, :-1]], dim=1)  # (B, S, V): position i reads i-1
        return out


class OwnLoopLM(DiffusionModel, abc.ABC):
    """A diffusion LM that runs its own generation loop; entrgi guides it from inside that loop.

    ``sample(plan, batch)`` draws K responses for each prompt of ``batch`` and returns a
    ``entrgi_core.result.Rollout`` (tokens, dLLM work, reward-model work), which ``generate``
    finishes exactly as for masked LMs (scoring, Top@1, records).
    """

    @abc.abstractmethod
    def sample(self, plan, batch, *, diagnose: bool = False):
        """A ``Rollout`` of ``plan.config.num_samples`` responses per prompt of ``batch``."""


class MaskedLM(DiffusionLM):
    """Any ``AutoModelForMaskedLM`` (BERT, ModernBERT, ...) used as a masked diffusion LM. The block
    KV cache works for models whose self-attention writes to transformers' cache (the BERT family)."""

    cache_modes = ("prefix", "dual")

    def check(self, config, guidance=None) -> None:
        if config.cache is not None and self._cache_parameter() is None:
            raise InputError(f"MaskedLM: cache={config.cache!r} is not available: {type(self.model).__name__}'s "
                             "forward takes no key/value cache; run with cache=None")
        super().check(config, guidance)

    def forward_logits(self, input_ids, attention_mask, position_ids, cache=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids,
                          token_type_ids=torch.zeros_like(input_ids), **self._cache_argument(cache)).logits


class DreamLM(DiffusionLM):
    """Dream (e.g. Dream-org/Dream-v0-Instruct-7B): logits shifted right by one position.

    Dream's modelling code takes a boolean (B, 1, S, S) attention mask; we mask padded keys only,
    so that padded queries still see real keys (no NaN rows), and pass explicit position ids.
    """

    shift_logits = True
    auto_class = "AutoModel"
    cache_modes = ("prefix", "dual")

    def __init__(self, path: str = "Dream-org/Dream-v0-Instruct-7B", *, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, mask_id: int | None = None):
        super().__init__(path, dtype=dtype, trust_remote_code=trust_remote_code, mask_id=mask_id)

    def forward_logits(self, input_ids, attention_mask, position_ids, cache=None):
        if getattr(self.model.config, "model_type", "") != "Dream":
            return super().forward_logits(input_ids, attention_mask, position_ids, cache=cache)
        keys = attention_mask.bool()[:, None, None, :].expand(-1, 1, input_ids.shape[1], -1)  # (B, 1, Q, S)
        extra = {"past_key_values": cache, "use_cache": True} if cache is not None else {}
        return self.model(input_ids, attention_mask=keys, position_ids=position_ids, **extra).logits


class LLaDALM(DiffusionLM):
    """LLaDA (e.g. GSAI-ML/LLaDA-8B-Instruct): no shift; mask id from the tokenizer or config
    (126336 for LLaDA-8B); LLaDA's own commit schedule (even split per block) by default. LLaDA's modelling code takes no position ids, so left-padded batches
    are exact only when prompts have equal length; use batch_size 1 for strict batch invariance."""

    auto_class = "AutoModel"
    default_schedule = LLaDA()
    no_cache_reason = "LLaDA's own modelling code asserts that it is given no key/value cache"

    def __init__(self, path: str = "GSAI-ML/LLaDA-8B-Instruct", *, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, mask_id: int | None = None):
        super().__init__(path, dtype=dtype, trust_remote_code=trust_remote_code, mask_id=mask_id)

    @staticmethod
    def default_mask_id(tokenizer, model) -> int | None:
        return DiffusionLM.default_mask_id(tokenizer, model) or 126336

    def forward_logits(self, input_ids, attention_mask, position_ids, cache=None):
        if getattr(self.model.config, "model_type", "") != "llada":
            return super().forward_logits(input_ids, attention_mask, position_ids, cache=cache)
        return self.model(input_ids, attention_mask=attention_mask.long()).logits
