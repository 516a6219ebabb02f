"""The tiny world: a review grammar with an exact sentiment oracle, two tokenizers, a tiny
masked diffusion LM and a tiny reward model trained on it (``python -m entrgi_core.tinyworld.train``)."""
