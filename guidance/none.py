from torch import Tensor

from entrgi_core.contract import Guidance, GuidanceOutput, GuidanceStep


class NoGuidance(Guidance):
    """Unguided sampling; with the sampler's Top@1 selection this is Best-of-N. It never reads the
    reward model during sampling, so it needs no vocabulary alignment."""

    name = "bon"

    @property
    def needs_reward(self) -> bool:
        return False

    def refine(self, phi: Tensor, step: GuidanceStep) -> GuidanceOutput:
        return GuidanceOutput(phi)
