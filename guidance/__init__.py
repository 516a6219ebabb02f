"""Guidance strategies: one small file each over ``guidance.base.Guidance``."""
from guidance.base import Guidance, GuidanceStep
from guidance.entrgi import EntRGi
from guidance.expectation import Expectation
from guidance.none import NoGuidance
from guidance.straight_through import StraightThrough

STRATEGIES = (EntRGi, StraightThrough, Expectation, NoGuidance)

__all__ = ["Guidance", "GuidanceStep", "EntRGi", "StraightThrough", "Expectation", "NoGuidance", "STRATEGIES"]
