from guidance.base import GatedGuidance


class StraightThrough(GatedGuidance):
    """APS / straight-through: the reward model sees the hard sampled token (w = 1); the gradient
    flows through the soft embedding."""

    gate = "ste"
    name = "aps"
