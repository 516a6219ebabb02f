"""Reward guidance as a transformers logits processor, for DiffusionGemma's own ``generate()``.

    processor = GuidanceLogitsProcessor(reward, EntRGi(steps=3), tokenizer=tok, prompts=prompts)
    out = model.generate(input_ids, generation_config=gc, logits_processor=LogitsProcessorList([processor]))

transformers' ``DiffusionGemmaForBlockDiffusion.generate`` writes the response canvas by canvas
(blocks of ``canvas_length`` tokens); within a canvas, every denoising step calls
``processor(input_ids, scores, cur_step=...)`` with ``input_ids`` (B, prompt + earlier canvases)
and ``scores`` (B, C, V), then samples every canvas position from ``softmax(scores)`` (after its
own temperature schedule) and keeps the low-entropy ones. DiffusionGemma is a uniform-noise
model: every canvas position holds a token, so every position is guided; the gate of the
strategy already lets confident positions enter the reward model through their soft embedding.
The reward model sees ``[chat prefix | earlier canvases | relaxed canvas | suffix]``.

Supported: ``generate()`` as transformers calls it (under ``torch.no_grad``, ``cur_step`` a 0-d
tensor counting down, its compiled forward with a static cache). Not supported, with a clear
error: ``torch.inference_mode``, compiling the processor itself, particle strategies (SMC), a
batch whose rows do not match ``prompts``, and reusing one processor for another prompt length
(create one per ``generate()`` call, or call ``reset()``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from entrgi_core.errors import InputError
from entrgi_core.integrations.canvas import CanvasGuide


class GuidanceLogitsProcessor(CanvasGuide):
    """A ``transformers`` logits processor that refines DiffusionGemma's canvas logits with a
    guidance strategy. See ``entrgi_core.integrations.canvas.CanvasGuide`` for the arguments; in addition:

        temperature: the temperature DiffusionGemma samples at, a number, or ``(t_min, t_max)`` to
            follow its linear schedule ``t_min + (t_max - t_min) * cur_step / max_denoising_steps``
            (the generation config's ``t_min`` / ``t_max``); default 1.
    """

    who = "GuidanceLogitsProcessor"

    def __init__(self, reward, strategy, *, tokenizer, prompts, temperature: float | tuple = 1.0, top_p: float = 1.0,
                 seed: int = 0, generation_config=None, stop_ids: list[int] | None = None):
        schedule = None
        if isinstance(temperature, (tuple, list)):
            if len(temperature) != 2 or not all(isinstance(t, (int, float)) and t > 0 for t in temperature):
                raise InputError(f"{self.who}: temperature must be a number > 0 or a pair (t_min, t_max) > 0, "
                                 f"got {temperature!r}")
            schedule = (float(temperature[0]), float(temperature[1]))
            temperature = max(schedule)
        super().__init__(reward, strategy, tokenizer=tokenizer, prompts=prompts, temperature=temperature, top_p=top_p,
                         seed=seed, generation_config=generation_config, stop_ids=stop_ids)
        self.schedule = schedule
        self.reset()

    def reset(self) -> None:
        """Forget the prompt length and step count, to reuse the processor for another generate()."""
        self.prompt_length = None    # input_ids width at the first call
        self.block_start = None      # input_ids width of the current canvas
        self.block_steps = None      # cur_step at the first call of the current canvas (= its max)

    def __call__(self, input_ids: Tensor, scores: Tensor, cur_step: Tensor | int | None = None) -> Tensor:
        if scores.dim() != 3:
            raise InputError(f"{self.who} guides diffusion canvases: scores must be (batch, canvas, vocab), got "
                             f"shape {tuple(scores.shape)}. It works with DiffusionGemmaForBlockDiffusion.generate, "
                             "not with autoregressive generate()")
        if cur_step is None:
            raise InputError(f"{self.who}: cur_step was not given; it is called by DiffusionGemma's generate()")
        b, c, v = scores.shape
        width = input_ids.shape[1]
        if self.prompt_length is None:
            self.prompt_length = width
        done = width - self.prompt_length
        if done < 0 or done % c:
            raise InputError(f"{self.who}: this processor saw a prompt of {self.prompt_length} tokens and now "
                             f"{width}: create one processor per generate() call (or call reset())")
        step = int(cur_step)
        if self.block_start != width:                       # the first step of a new canvas
            self.block_start, self.block_steps = width, step
        total = max(self.block_steps, 1)
        index = total - step                                # 0 at the first denoising step of the canvas
        if self.schedule is not None:
            t_min, t_max = self.schedule
            self.temperature = t_min + (t_max - t_min) * step / total
        earlier = input_ids[:, self.prompt_length:]          # (B, done) committed canvases
        tokens = torch.cat([earlier, earlier.new_zeros(b, c)], dim=1)   # canvas slots are all relaxed
        rows = torch.arange(b, device=scores.device).repeat_interleave(c)
        cols = done + torch.arange(c, device=scores.device).repeat(b)
        phi = self.refine(tokens, rows, cols, scores.reshape(b * c, v), index, total)   # cols differ per canvas
        return phi.reshape(b, c, v)
