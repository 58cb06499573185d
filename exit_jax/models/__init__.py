"""Models: config presets, the flax decoder, checkpoint import/export and tokenizers.

    from exit_jax import models
    lm = models.load("smollm2-135m-instruct")  # or an HF dir, a .gguf file, an orbax dir, a hub id
    lm.logits(tokens)                          # int32 [B, T] -> float32 [B, T, V]
    models.save_hf(lm, out_dir)
"""
from exit_jax.models.config import PRESETS, ModelConfig, RopeScaling, preset
from exit_jax.models.lm import (LM, embedded_gguf_path, greedy_generate, load, load_config, save_hf,
                                save_orbax)
from exit_jax.models.tokenizer import Tokenizer

__all__ = ["LM", "ModelConfig", "PRESETS", "RopeScaling", "Tokenizer", "embedded_gguf_path",
           "greedy_generate", "load", "load_config", "preset", "save_hf", "save_orbax"]
