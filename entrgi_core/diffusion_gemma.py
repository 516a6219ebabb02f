"""DiffusionGemma through its own ``generate()``: the model adapter behind ``entrgi predict`` and
``GuidedDenoiser`` for transformers' ``DiffusionGemmaForBlockDiffusion``.

DiffusionGemma is a uniform-noise block diffusion model with its own sampler (entropy-bounded
acceptance, renoising, canvases of ``canvas_length`` tokens), so entrgi does not run its masked
sampler on it: ``generate()`` (``entrgi_core.sampler``) hands the batch to
``DiffusionGemmaLM.generate_own``, which runs the model's ``generate()`` with
``guidance.GuidanceLogitsProcessor`` and returns the same ``GenerationResult`` (K samples, Top@1,
Avg@N, compute). How ``DenoiseConfig`` maps onto it:

- ``steps``: denoising steps per canvas (``max_denoising_steps``); ``max_new_tokens``: the response
  length, written in ``ceil(L / canvas_length)`` canvases and cut to L;
- ``temperature``: applied as a constant (the checkpoint's ``t_min`` / ``t_max`` schedule is not
  used, so that one setting means the same for every model); ``top_p`` must be 1 and ``top_k``,
  ``block_length`` and ``schedule`` unset (DiffusionGemma's sampler has no such settings);
  ``alg`` and ``deprioritize_eos`` do not apply (acceptance is by DiffusionGemma's entropy bound);
- ``seed``: each prompt's K samples are drawn in their own ``generate()`` call with torch's
  generator seeded from (seed, prompt id), so a prompt's samples do not depend on its batch or on
  the number of devices.
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import Tensor, nn

from entrgi_core import rng
from entrgi_core.hub import as_dtype, check_remote_code, check_source
from entrgi_core.models import DiffusionLM


class _Temperature:
    """Divides DiffusionGemma's canvas logits by a constant temperature; counts the steps."""

    def __init__(self, temperature: float):
        self.temperature, self.calls = temperature, 0

    def __call__(self, input_ids: Tensor, scores: Tensor, cur_step: Tensor | None = None) -> Tensor:
        self.calls += 1
        return scores if self.temperature == 1.0 else scores / self.temperature


class DiffusionGemmaLM(DiffusionLM):
    """``DiffusionGemmaForBlockDiffusion`` (e.g. google/diffusiongemma-26B-A4B-it) run through its
    own ``generate()``, guided by a logits processor.

    Args:
        path: hub name or local directory (weights, config, tokenizer).
        dtype: weights' dtype.
        entropy_bound: the sampler's entropy bound (default: the checkpoint's generation config).
    """

    def __init__(self, path: str = "google/diffusiongemma-26B-A4B-it", *, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, entropy_bound: float | None = None):
        nn.Module.__init__(self)
        import transformers

        check_source(path, "DiffusionGemmaLM path")
        check_remote_code(path, trust_remote_code)
        tok = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=as_dtype(dtype))
        self._setup(model, tok, None, path)
        self._set_bound(entropy_bound)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str | None = None, entropy_bound: float | None = None,
                   mask_id: int | None = None):
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._setup(model, tokenizer, None, name)
        self._set_bound(entropy_bound)
        return self

    def _setup(self, model: nn.Module, tokenizer, mask_id, name: str | None) -> None:
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) != "diffusion_gemma" or not hasattr(model, "generate"):
            raise ValueError(f"DiffusionGemmaLM needs a DiffusionGemmaForBlockDiffusion, got {type(model).__name__} "
                             f"(model_type {getattr(config, 'model_type', None)!r}); for masked diffusion LMs use "
                             "MaskedLM, DreamLM or LLaDALM")
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise ValueError("DiffusionGemmaLM needs the model's tokenizer")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mask_id = None                     # uniform noise: no mask token
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config.text_config.eos_token_id
        self.eos_id = int(eos if not isinstance(eos, list) else eos[0])
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else self.eos_id
        stops = {self.eos_id, self.pad_id}
        vocab = tokenizer.get_vocab()
        for extra in ("<end_of_turn>", "<turn|>", "<|im_end|>"):
            if extra in vocab:
                stops.add(int(vocab[extra]))
        self.stop_ids = tuple(sorted(stops))
        self.vocab_size = int(config.text_config.vocab_size)
        self.canvas_length = int(config.canvas_length)
        self.name = name or getattr(tokenizer, "name_or_path", None) or type(model).__name__

    def _set_bound(self, entropy_bound: float | None) -> None:
        if entropy_bound is not None and not (isinstance(entropy_bound, (int, float)) and entropy_bound > 0):
            raise ValueError(f"DiffusionGemmaLM: entropy_bound must be None (the checkpoint's) or > 0, got "
                             f"{entropy_bound!r}")
        sampler = getattr(self.model.generation_config, "sampler_config", None)
        if entropy_bound is None and sampler is None:
            raise ValueError("DiffusionGemmaLM: the checkpoint's generation config has no sampler_config; pass "
                             "entropy_bound=...")
        self.entropy_bound = float(entropy_bound) if entropy_bound is not None else float(sampler.entropy_bound)

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def logits(self, *args, **kwargs):
        raise TypeError("DiffusionGemmaLM has no masked-canvas logits: it runs its own generate() (generate_own)")

    def check_config(self, cfg, guidance=None) -> None:
        """Refuse sampler settings DiffusionGemma's own sampler cannot honour, and particle strategies."""
        if guidance is not None and guidance.begin(1, 1, "cpu") is not None:
            raise ValueError(f"DiffusionGemmaLM: {type(guidance).__name__} acts on a prompt's samples together and "
                             "needs a sampler that resamples rows; DiffusionGemma's own generate() cannot. Use a "
                             "per-sample strategy (EntRGi, Expectation, StraightThrough) or none")
        bad = []
        if cfg.top_p != 1.0:
            bad.append(f"top_p={cfg.top_p} (set --sampling.top_p 1.0)")
        if cfg.top_k is not None:
            bad.append(f"top_k={cfg.top_k}")
        if cfg.block_length is not None:
            bad.append(f"block_length={cfg.block_length} (canvases are {self.canvas_length} tokens)")
        if cfg.schedule is not None:
            bad.append(f"schedule={cfg.schedule!r}")
        if not cfg.temperature > 0:
            bad.append("temperature=0 (its sampler always samples)")
        if bad:
            raise ValueError("DiffusionGemmaLM: its own sampler has no " + ", ".join(bad) + "; nothing was run")

    def generate_own(self, prompts: list[str], encoded: list[list[int]], *, reward, guidance, config, prompt_ids,
                     diagnose: bool = False):
        """K responses per prompt through DiffusionGemma's ``generate()`` (see the module docstring)."""
        from entrgi_core.sampler import GenerationResult, account
        from guidance.logits_processor import GuidanceLogitsProcessor
        from transformers import LogitsProcessorList
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

        cfg = config
        self.check_config(cfg, guidance)
        guided = guidance is not None and guidance.needs_reward
        k, length = cfg.num_samples, cfg.max_new_tokens
        gc = copy.deepcopy(self.model.generation_config)
        gc.max_new_tokens, gc.max_denoising_steps = length, cfg.steps
        gc.t_min = gc.t_max = None
        gc.sampler_config = EntropyBoundSamplerConfig(entropy_bound=self.entropy_bound)
        gc.pad_token_id, gc.eos_token_id = self.pad_id, list(self.stop_ids)
        device = self.device
        t0 = time.perf_counter()
        tokens, texts, usage, calls, widths = [], [], [], [], []
        for prompt, pid, ids in zip(prompts, prompt_ids, encoded):
            rep = [prompt] * k
            temp = _Temperature(float(cfg.temperature))
            chain = [temp]
            proc = None
            if guided:
                proc = GuidanceLogitsProcessor(reward, guidance, tokenizer=self.tokenizer, prompts=rep,
                                               temperature=float(cfg.temperature), top_p=1.0,
                                               seed=rng.prompt_key(cfg.seed, pid), stop_ids=list(self.stop_ids))
                chain = [proc, temp]
            input_ids = torch.tensor([ids] * k, dtype=torch.long, device=device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(rng.prompt_key(cfg.seed, pid))
                out = self.model.generate(input_ids, generation_config=gc, logits_processor=LogitsProcessorList(chain))
            seq = out.sequences if not isinstance(out, Tensor) else out
            resp = seq[:, len(ids): len(ids) + length]
            if resp.shape[1] < length:
                resp = torch.cat([resp, resp.new_full((k, length - resp.shape[1]), self.pad_id)], dim=1)
            tokens.append(resp.cpu())
            texts.append([self._text(row) for row in resp.tolist()])
            usage.append(proc.reward_work() if proc is not None else None)
            calls.append(temp.calls)
            widths.append(seq.shape[1] - len(ids))
        tokens = torch.stack(tokens)                                   # (B, K, L)
        rewards = best_i = best_r = avg_r = None
        if reward is not None:
            flat = [t for row in texts for t in row]
            rewards = reward.score_text([p for p in prompts for _ in range(k)], flat).reshape(len(prompts), k).cpu()
            best_r, best_i = rewards.max(1)
            avg_r = rewards.mean(1)
        compute = account(self, reward, prompts, encoded, texts, cfg, self.dlm_work(encoded, cfg, calls, widths),
                          [[sum(w[key]) for key in w] if w else [0, 0, 0, 0] for w in usage])
        return GenerationResult(list(prompts), list(prompt_ids), tokens, texts, rewards, best_i, best_r, avg_r,
                                time.perf_counter() - t0, compute=compute)

    def dlm_work(self, encoded, cfg, calls, widths) -> list[tuple[int, int]]:
        """Per prompt (forwards, tokens) for ``sampler.account``, counted for block diffusion: decoder
        passes (K per denoising step of each canvas) over the canvas tokens, plus the encoder's tokens
        (the prompt once, each finished canvas once). FLOPs then use all parameters (an upper bound
        for a mixture of experts)."""
        k, c = cfg.num_samples, self.canvas_length
        return [(calls[i] * k, k * (calls[i] * c + len(e) + (max(1, math.ceil(widths[i] / c)) - 1) * c))
                for i, e in enumerate(encoded)]

    def _text(self, ids: list[int]) -> str:
        stops = set(self.stop_ids)
        cut = next((i for i, t in enumerate(ids) if t in stops), len(ids))
        return self.decode(ids[:cut])
