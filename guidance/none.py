from guidance.base import Guidance


class NoGuidance(Guidance):
    """Unguided sampling; with the sampler's Top@1 selection this is Best-of-N."""

    gate = "soft"
    name = "bon"

    def __init__(self, **kwargs):
        kwargs.setdefault("steps", 0)
        super().__init__(**kwargs)

    @property
    def needs_reward(self) -> bool:
        return False

    def refine(self, phi, step):
        return phi
