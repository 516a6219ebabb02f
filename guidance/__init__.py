"""Guidance strategies: one small file each. ``Guidance`` (abstract) and the step contract come
from ``entrgi_core.contract``; the gated strategies share ``GatedGuidance``'s gradient loop;
``SMC`` resamples a prompt's samples as particles, with any of the others as its proposal. The
gated strategies' trust region (``kl``) and strength schedules (``strength``) live in
``trust_region.py`` and ``strength.py``.
``GuidanceLogitsProcessor`` and ``DreamGuidanceHook`` (guidance inside transformers' DiffusionGemma
``generate()`` and Dream's ``diffusion_generate``) live in ``entrgi_core.integrations`` and are
re-exported here under the names users know."""
from entrgi_core.integrations import DreamGuidanceHook, GuidanceLogitsProcessor
from guidance.base import GatedGuidance, Guidance, GuidanceOutput, GuidanceStep
from guidance.entrgi import EntRGi
from guidance.expectation import Expectation
from guidance.none import NoGuidance
from guidance.smc import SMC
from guidance.straight_through import StraightThrough
from guidance.strength import STRENGTHS, Constant, LinearDecay, MaskedShare, StrengthSchedule

STRATEGIES = (EntRGi, StraightThrough, Expectation, NoGuidance)   # each guides one sample on its own
PARTICLE_STRATEGIES = (SMC,)                                         # the K samples together

__all__ = ["Guidance", "GuidanceOutput", "GuidanceStep", "GatedGuidance", "EntRGi", "StraightThrough", "Expectation",
           "NoGuidance", "SMC", "STRATEGIES", "PARTICLE_STRATEGIES", "GuidanceLogitsProcessor", "DreamGuidanceHook",
           "StrengthSchedule", "Constant", "LinearDecay", "MaskedShare", "STRENGTHS"]
