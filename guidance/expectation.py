from guidance.base import Guidance


class Expectation(Guidance):
    """Continuous relaxation: the reward model sees the expected embedding q @ E (w = 0)."""

    gate = "soft"
    name = "expectation"
