"""A tiny, randomly initialised DiffusionGemma on the tiny world's dLLM tokenizer: the real
transformers architecture (``DiffusionGemmaForBlockDiffusion``, its encoder, decoder and
``generate()``), small enough for CPU tests and the README's examples. Untrained: its text is
random words, which is what makes reward guidance visible.

    python -m entrgi_core.tinyworld.diffusion_gemma OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path


def tiny_diffusion_gemma(seed: int = 0, canvas_length: int = 8, hidden: int = 32):
    """(model, tokenizer): a random-weight ``DiffusionGemmaForBlockDiffusion`` (2 layers, 2 experts,
    a 1-layer vision tower) whose vocabulary is the tiny world's dLLM tokenizer's, with a
    generation config (entropy bound 1, 8 denoising steps, no temperature schedule: temperature 1)."""
    import torch
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig
    from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
        DiffusionGemmaGenerationConfig,
        EntropyBoundSamplerConfig,
    )

    from entrgi_core.tinyworld.tokenizers import build_dlm_tokenizer

    tok = build_dlm_tokenizer()
    n = len(tok)
    text = DiffusionGemmaTextConfig(
        vocab_size=n, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=16, max_position_embeddings=512, sliding_window=64,
        num_experts=2, top_k_experts=1, moe_intermediate_size=hidden, layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=64)
    # image token ids outside the text vocabulary: prompts never contain them
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                  boi_token_id=n + 1, eoi_token_id=n + 2, image_token_id=n + 3)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    model.generation_config = DiffusionGemmaGenerationConfig(
        max_denoising_steps=8, sampler_config=EntropyBoundSamplerConfig(entropy_bound=1.0),
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return model, tok


def save_tiny_diffusion_gemma(path: str | Path, seed: int = 0, canvas_length: int = 8) -> Path:
    """Write the tiny DiffusionGemma (weights, config, generation config, tokenizer) to ``path``."""
    path = Path(path)
    model, tok = tiny_diffusion_gemma(seed=seed, canvas_length=canvas_length)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m entrgi_core.tinyworld.diffusion_gemma OUT_DIR")
    print(save_tiny_diffusion_gemma(sys.argv[1]))
