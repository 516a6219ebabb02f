from guidance.base import Guidance


class StraightThrough(Guidance):
    """APS / straight-through: the reward model sees the hard sampled token (w = 1); the gradient
    flows through the soft embedding."""

    gate = "ste"
    name = "aps"
