"""Reward guidance inside Dream's own sampler, as its ``generation_logits_hook_func``.

    hook = DreamGuidanceHook(reward, EntRGi(steps=3), tokenizer=tok, prompts=prompts,
                             temperature=0.2, top_p=0.95)
    out = model.diffusion_generate(input_ids, attention_mask=attn, max_new_tokens=128, steps=128,
                                   temperature=0.2, top_p=0.95, alg="entropy",
                                   generation_logits_hook_func=hook)

Dream's ``diffusion_generate`` (remote code of Dream-v0-*-7B) calls ``hook(step, x, logits)`` each
denoising step with the canvas ``x`` (B, prompt + response), whose masked positions hold the mask
id, and the (already shifted) logits (B, prompt + response, V), and samples the masked positions
from what the hook returns. The hook refines the masked positions' logits of the response; the
reward model sees the committed response tokens as themselves and the masked ones relaxed. Give
the hook the sampler's temperature and top-p (the relaxation uses them). One hook per
``diffusion_generate`` call; it reads the prompt width at step 0.
"""
from __future__ import annotations

from torch import Tensor

from entrgi_core import checks
from entrgi_core.contract import Guidance
from entrgi_core.errors import InputError
from entrgi_core.integrations.canvas import CanvasGuide


class DreamGuidanceHook(CanvasGuide):
    """Dream's ``generation_logits_hook_func``. See ``entrgi_core.integrations.canvas.CanvasGuide``
    for the arguments (give ``generation_config=model.generation_config`` and the hook ends
    responses exactly where ``DreamLM`` does); in addition ``mask_id`` (default: the tokenizer's mask
    token) and ``steps`` (the ``steps`` given to ``diffusion_generate``, for strategies guiding only
    part of the steps; default: all steps are treated alike)."""

    who = "DreamGuidanceHook"

    def __init__(self, reward, strategy, *, tokenizer, prompts, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, generation_config=None, stop_ids: list[int] | None = None, mask_id: int | None = None,
                 steps: int | None = None):
        mask_id = getattr(tokenizer, "mask_token_id", None) if mask_id is None else mask_id
        if mask_id is None:
            raise InputError(f"{self.who}: the tokenizer has no mask token; pass mask_id=...")
        steps = checks.integer(steps, who=self.who, name="steps", minimum=1, optional=True)
        if steps is None and isinstance(strategy, Guidance) and strategy.uses_total:
            raise InputError(f"{self.who}: {type(strategy).__name__} guides only the steps with start <= step / T < "
                             "stop; give the hook diffusion_generate's steps (steps=T) so it knows T")
        super().__init__(reward, strategy, tokenizer=tokenizer, prompts=prompts, temperature=temperature, top_p=top_p,
                         seed=seed, generation_config=generation_config, stop_ids=stop_ids, mask_id=int(mask_id))
        self.mask_id, self.steps = int(mask_id), steps
        self.prompt_length = None

    def __call__(self, step: int, x: Tensor, logits: Tensor) -> Tensor:
        if logits is None or logits.dim() != 3 or x.shape != logits.shape[:2]:
            raise InputError(f"{self.who}: expected x (B, S) and logits (B, S, V) from Dream's diffusion_generate, "
                             f"got {None if x is None else tuple(x.shape)} and "
                             f"{None if logits is None else tuple(logits.shape)}")
        masked = x == self.mask_id                                     # (B, S)
        if step == 0 or self.prompt_length is None:
            if not masked.any():
                return logits
            self.prompt_length = int(masked.int().argmax(1)[masked.any(1)].min())   # first masked column
        p = self.prompt_length
        tokens = x[:, p:]                                              # (B, L) response canvas
        rows, cols = masked[:, p:].nonzero(as_tuple=True)              # (N,) one host sync
        total = max(self.steps or 0, int(step) + 1)                    # without steps, every step is alike
        phi0 = logits[:, p:][rows, cols]                               # (N, V)
        phi = self.refine(tokens, rows, cols, phi0, int(step), total)
        if phi is phi0:                                                # not guided at this step
            return logits
        out = logits.clone()
        out[:, p:][rows, cols] = phi
        return out
