"""entrgi: reward-guided sampling of masked diffusion language models (EntRGi and friends)."""
from entrgi_core.ops import RelaxOutput, extension_available, relax_embeddings, relax_embeddings_reference

__version__ = "0.1.0"

__all__ = ["RelaxOutput", "extension_available", "relax_embeddings", "relax_embeddings_reference", "__version__"]
