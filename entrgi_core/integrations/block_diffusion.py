"""DiffusionGemma's own ``generate()``, guided from inside by ``GuidanceLogitsProcessor``: the loop
behind ``DiffusionGemmaLM.sample`` (``entrgi_core.diffusion_gemma``).

Each prompt's K samples are drawn in their own ``generate()`` call, with torch's generator seeded
from (seed, prompt id), so a prompt's samples do not depend on its batch or on the number of
devices. The sampler's temperature is applied as a constant after the guide (the checkpoint's
``t_min`` / ``t_max`` schedule is not used, so that one setting means the same for every model).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from entrgi_core import rng
from entrgi_core.integrations.logits_processor import GuidanceLogitsProcessor
from entrgi_core.result import Rollout


class ConstantTemperature:
    """Divides DiffusionGemma's canvas logits by a constant temperature; counts the steps."""

    def __init__(self, temperature: float):
        self.temperature, self.calls = temperature, 0

    def __call__(self, input_ids: Tensor, scores: Tensor, cur_step: Tensor | None = None) -> Tensor:
        self.calls += 1
        return scores if self.temperature == 1.0 else scores / self.temperature


def sample_canvases(model, plan, batch) -> Rollout:
    """K responses per prompt of ``batch`` from ``model`` (a ``DiffusionGemmaLM``) under ``plan``."""
    from transformers import LogitsProcessorList

    cfg = plan.config
    k, length = cfg.num_samples, cfg.max_new_tokens
    gc = generation_config(model, cfg)
    device = model.device
    tokens, rm_work, calls, widths = [], [], [], []
    for b, (prompt, pid, ids) in enumerate(zip(batch.prompts, batch.prompt_ids, batch.encoded)):
        seed = batch.seed_of(b, cfg.seed)
        temp = ConstantTemperature(float(cfg.temperature))
        guide = None
        if plan.guided:
            guide = GuidanceLogitsProcessor(plan.reward, plan.guidance, tokenizer=model.tokenizer, prompts=[prompt] * k,
                                            temperature=float(cfg.temperature), top_p=1.0,
                                            seed=rng.prompt_key(seed, pid), stop_ids=list(model.stop_ids))
        chain = LogitsProcessorList([guide, temp] if guide is not None else [temp])
        input_ids = torch.tensor([ids] * k, dtype=torch.long, device=device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(rng.prompt_key(seed, pid))
            out = model.model.generate(input_ids, generation_config=gc, logits_processor=chain)
        seq = out.sequences if not isinstance(out, Tensor) else out
        resp = seq[:, len(ids): len(ids) + length]
        if resp.shape[1] < length:
            resp = torch.cat([resp, resp.new_full((k, length - resp.shape[1]), model.pad_id)], dim=1)
        tokens.append(resp.cpu())
        rm_work.append(guide.side.per_prompt(k)[0] if guide is not None and guide.side is not None else {})
        calls.append(temp.calls)
        widths.append(seq.shape[1] - len(ids))
    return Rollout(tokens=torch.stack(tokens), dlm_work=dlm_work(model, batch.encoded, cfg, calls, widths),
                   rm_work=rm_work, steps=calls)


def generation_config(model, cfg):
    """The checkpoint's generation config with the sampler's steps, length and entropy bound."""
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig

    gc = copy.deepcopy(model.model.generation_config)
    gc.max_new_tokens, gc.max_denoising_steps = cfg.max_new_tokens, cfg.steps
    gc.t_min = gc.t_max = None
    gc.sampler_config = EntropyBoundSamplerConfig(entropy_bound=model.entropy_bound)
    gc.pad_token_id, gc.eos_token_id = model.pad_id, list(model.stop_ids)
    return gc


def dlm_work(model, encoded, cfg, calls, widths) -> list[tuple[int, int]]:
    """Per prompt (forwards, tokens) for ``result.account``, counted for block diffusion: decoder
    passes (K per denoising step of each canvas) over the canvas tokens, plus the encoder's tokens
    (the prompt once, each finished canvas once). FLOPs then use all parameters (an upper bound
    for a mixture of experts)."""
    k, c = cfg.num_samples, model.canvas_length
    return [(calls[i] * k, k * (calls[i] * c + len(e) + (max(1, math.ceil(widths[i] / c)) - 1) * c))
            for i, e in enumerate(encoded)]
