"""DiffusionGemma through its own ``generate()``: the model adapter behind ``entrgi predict`` and
``GuidedDenoiser`` for transformers' ``DiffusionGemmaForBlockDiffusion``.

DiffusionGemma is a uniform-noise block diffusion model with its own sampler (entropy-bounded
acceptance, renoising, canvases of ``canvas_length`` tokens), so it is an ``OwnLoopLM``: entrgi
does not run its masked sampler on it but guides DiffusionGemma's ``generate()`` from inside with
``GuidanceLogitsProcessor`` (``entrgi_core.integrations.block_diffusion``), and finishes the
result as for every model (K samples, Top@1, Avg@N, compute). How ``DenoiseConfig`` maps onto it:

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

from torch import nn

from entrgi_core import checks
from entrgi_core.errors import InputError
from entrgi_core.integrations.block_diffusion import sample_canvases
from entrgi_core.models import OwnLoopLM


class DiffusionGemmaLM(OwnLoopLM):
    """``DiffusionGemmaForBlockDiffusion`` (e.g. google/diffusiongemma-26B-A4B-it) run through its
    own ``generate()``, guided by a logits processor.

    Args:
        path: hub name or local directory (weights, config, tokenizer).
        dtype: weights' dtype.
        entropy_bound: the sampler's entropy bound (default: the checkpoint's generation config).
    """

    auto_class = "DiffusionGemmaForBlockDiffusion"

    def __init__(self, path: str = "google/diffusiongemma-26B-A4B-it", *, dtype: str = "bfloat16",
                 trust_remote_code: bool = False, entropy_bound: float | None = None):
        super().__init__(path, dtype=dtype, trust_remote_code=trust_remote_code, entropy_bound=entropy_bound)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer, *, name: str | None = None, entropy_bound: float | None = None):
        return super().from_model(model, tokenizer, name=name, entropy_bound=entropy_bound)

    def _setup(self, model: nn.Module, tokenizer, name: str | None, entropy_bound: float | None = None) -> None:
        config = getattr(model, "config", None)
        if getattr(config, "model_type", None) != "diffusion_gemma" or not hasattr(model, "generate"):
            raise InputError(f"DiffusionGemmaLM needs a DiffusionGemmaForBlockDiffusion, got {type(model).__name__} "
                             f"(model_type {getattr(config, 'model_type', None)!r}); for masked diffusion LMs use "
                             "MaskedLM, DreamLM or LLaDALM")
        if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
            raise InputError("DiffusionGemmaLM needs the model's tokenizer")
        super()._setup(model, tokenizer, name)
        self.canvas_length = int(config.canvas_length)
        entropy_bound = checks.real(entropy_bound, who="DiffusionGemmaLM", name="entropy_bound", rule="be > 0",
                                    ok=lambda v: v > 0, none_means="the checkpoint's")
        sampler = getattr(model.generation_config, "sampler_config", None)
        if entropy_bound is None and sampler is None:
            raise InputError("DiffusionGemmaLM: the checkpoint's generation config has no sampler_config; pass "
                             "entropy_bound=...")
        self.entropy_bound = entropy_bound if entropy_bound is not None else float(sampler.entropy_bound)

    def _output_vocab(self) -> int:
        return self.model.config.text_config.vocab_size

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config.text_config, "max_position_embeddings", None)

    def check(self, config, guidance=None) -> None:
        """Refuse sampler settings DiffusionGemma's own sampler cannot honour, and particle strategies."""
        if guidance is not None and guidance.particles:
            raise InputError(f"DiffusionGemmaLM: {type(guidance).__name__} acts on a prompt's samples together and "
                             "needs a sampler that resamples rows; DiffusionGemma's own generate() cannot. Use a "
                             "per-sample strategy (EntRGi, Expectation, StraightThrough) or none")
        bad = []
        if config.top_p != 1.0:
            bad.append(f"top_p={config.top_p} (set --sampling.top_p 1.0)")
        if config.top_k is not None:
            bad.append(f"top_k={config.top_k}")
        if config.block_length is not None:
            bad.append(f"block_length={config.block_length} (canvases are {self.canvas_length} tokens)")
        if config.schedule is not None:
            bad.append(f"schedule={config.schedule!r} (it accepts by its own entropy bound, entropy_bound=...)")
        if config.cache is not None:
            bad.append(f"cache={config.cache!r} (its generate() keeps its own)")
        if not config.temperature > 0:
            bad.append("temperature=0 (its sampler always samples)")
        if bad:
            raise InputError("DiffusionGemmaLM: its own sampler has no " + ", ".join(bad) + "; nothing was run")

    def sample(self, plan, batch, *, diagnose: bool = False):
        return sample_canvases(self, plan, batch)
