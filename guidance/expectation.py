from guidance.base import GatedGuidance


class Expectation(GatedGuidance):
    """Continuous relaxation: the reward model sees the expected embedding q @ E (w = 0)."""

    gate = "soft"
    name = "expectation"
