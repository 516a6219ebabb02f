"""entrgi: reward-guided sampling of masked diffusion language models (EntRGi and friends).

The public names below load on first use (PEP 562), so ``import entrgi_core`` and the ``entrgi``
command's front door (``entrgi --help``) cost no torch import; ``from entrgi_core import
generate`` works as always."""
import importlib

__version__ = "0.1.0"

_WHERE = {                                   # public name -> the module that defines it
    "DenoiseConfig": "config", "InputError": "errors", "NonFiniteLogitsError": "errors",
    "DiffusionLM": "models", "DiffusionModel": "models", "DreamLM": "models", "LLaDALM": "models",
    "MaskedLM": "models", "OwnLoopLM": "models", "RelaxOutput": "ops", "extension_available": "ops",
    "relax_embeddings": "ops", "relax_embeddings_reference": "ops", "GenerationResult": "result",
    "generate": "sampler", "generate_steps": "sampler",
}

__all__ = [
    "DenoiseConfig", "DiffusionModel", "DiffusionLM", "OwnLoopLM", "DreamLM", "LLaDALM", "MaskedLM",
    "GenerationResult", "generate", "generate_steps", "InputError", "NonFiniteLogitsError",
    "RelaxOutput", "extension_available", "relax_embeddings", "relax_embeddings_reference", "__version__",
]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"entrgi_core.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    try:                                     # a submodule (entrgi_core.tinyworld, ...)
        return importlib.import_module(f"entrgi_core.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"entrgi_core.{name}":
            raise
    raise AttributeError(f"module 'entrgi_core' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
