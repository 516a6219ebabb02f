"""Guidance strategies: one small file each. ``Guidance`` (abstract) and the step contract come
from ``entrgi_core.contract``; the gated strategies share ``GatedGuidance``'s gradient loop;
``SMC`` resamples a prompt's samples as particles, with any of the others as its proposal;
``GuidanceLogitsProcessor`` and ``DreamGuidanceHook`` run a strategy inside transformers'
DiffusionGemma ``generate()`` and Dream's ``diffusion_generate``."""
from guidance.base import GatedGuidance, Guidance, GuidanceOutput, GuidanceStep
from guidance.dream_hook import DreamGuidanceHook
from guidance.entrgi import EntRGi
from guidance.expectation import Expectation
from guidance.logits_processor import GuidanceLogitsProcessor
from guidance.none import NoGuidance
from guidance.smc import SMC
from guidance.straight_through import StraightThrough

STRATEGIES = (EntRGi, StraightThrough, Expectation, NoGuidance)   # each guides one sample on its own
PARTICLE_STRATEGIES = (SMC,)                                         # the K samples together

__all__ = ["Guidance", "GuidanceOutput", "GuidanceStep", "GatedGuidance", "EntRGi", "StraightThrough", "Expectation",
           "NoGuidance", "SMC", "STRATEGIES", "PARTICLE_STRATEGIES", "GuidanceLogitsProcessor", "DreamGuidanceHook"]
