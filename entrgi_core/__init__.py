"""entrgi: reward-guided sampling of masked diffusion language models (EntRGi and friends)."""
from entrgi_core.config import DenoiseConfig
from entrgi_core.errors import InputError, NonFiniteLogitsError
from entrgi_core.models import DiffusionLM, DiffusionModel, DreamLM, LLaDALM, MaskedLM, OwnLoopLM
from entrgi_core.ops import RelaxOutput, extension_available, relax_embeddings, relax_embeddings_reference
from entrgi_core.result import GenerationResult
from entrgi_core.sampler import generate

__version__ = "0.1.0"

__all__ = [
    "DenoiseConfig", "DiffusionModel", "DiffusionLM", "OwnLoopLM", "DreamLM", "LLaDALM", "MaskedLM",
    "GenerationResult", "generate", "InputError", "NonFiniteLogitsError",
    "RelaxOutput", "extension_available", "relax_embeddings", "relax_embeddings_reference", "__version__",
]
