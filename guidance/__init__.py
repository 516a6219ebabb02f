"""Guidance strategies: one small file each. ``Guidance`` (abstract) and the step contract come
from ``entrgi_core.contract``; the gated strategies share ``GatedGuidance``'s gradient loop."""
from guidance.base import GatedGuidance, Guidance, GuidanceOutput, GuidanceStep
from guidance.entrgi import EntRGi
from guidance.expectation import Expectation
from guidance.none import NoGuidance
from guidance.straight_through import StraightThrough

STRATEGIES = (EntRGi, StraightThrough, Expectation, NoGuidance)

__all__ = ["Guidance", "GuidanceOutput", "GuidanceStep", "GatedGuidance", "EntRGi", "StraightThrough", "Expectation",
           "NoGuidance", "STRATEGIES"]
