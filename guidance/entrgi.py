from guidance.base import GatedGuidance


class EntRGi(GatedGuidance):
    """Entropy-aware reward guidance: each masked token enters the reward model as
    (1 - w) soft + w hard with w = H(softmax(phi / tau_H)) / log V (arXiv 2602.05000)."""

    gate = "entropy"
    name = "entrgi"
