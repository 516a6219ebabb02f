"""entrgi: reward-guided sampling of masked diffusion language models (EntRGi and friends)."""
from entrgi_core.config import DenoiseConfig
from entrgi_core.models import DiffusionLM, DreamLM, LLaDALM, MaskedLM
from entrgi_core.ops import RelaxOutput, extension_available, relax_embeddings, relax_embeddings_reference
from entrgi_core.sampler import GenerationResult, generate

__version__ = "0.1.0"

__all__ = [
    "DenoiseConfig", "DiffusionLM", "DreamLM", "LLaDALM", "MaskedLM", "GenerationResult", "generate",
    "RelaxOutput", "extension_available", "relax_embeddings", "relax_embeddings_reference", "__version__",
]
