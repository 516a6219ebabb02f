"""Guidance inside other libraries' generation loops: a core concern (it builds the same
``GuidanceStep`` as entrgi's sampler and shares its ``RewardSide``), re-exported from ``guidance``.

- ``canvas.CanvasGuide``: one guided step on a canvas another loop owns;
- ``logits_processor.GuidanceLogitsProcessor``: transformers' DiffusionGemma ``generate()``;
- ``dream_hook.DreamGuidanceHook``: Dream's ``diffusion_generate`` logits hook;
- ``block_diffusion``: DiffusionGemma's own loop behind ``DiffusionGemmaLM`` (``generate``,
  ``GuidedDenoiser``, ``entrgi predict``).
"""
from entrgi_core.integrations.canvas import CanvasGuide
from entrgi_core.integrations.dream_hook import DreamGuidanceHook
from entrgi_core.integrations.logits_processor import GuidanceLogitsProcessor

__all__ = ["CanvasGuide", "DreamGuidanceHook", "GuidanceLogitsProcessor"]
