"""A run's policy as files other tools read: a Hugging Face directory with the weights (LoRA adapters merged
into them), and with LoRA also a PEFT adapter folder for the base model."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from exit_jax import models
from exit_jax.models import lora


def export(out_dir: str, lm, params, lora_config: Optional[lora.LoraConfig], base_model: str) -> list:
    """Writes out_dir/hf (config, safetensors, tokenizer: transformers and vLLM load it) and, with LoRA,
    out_dir/adapter (`peft.PeftModel.from_pretrained(<base_model>, out_dir/adapter)`). params: host arrays
    in the per-layer layout. Returns the directories written."""
    written = [os.path.join(out_dir, "hf")]
    if lora_config is not None:
        written.append(os.path.join(out_dir, "adapter"))
        lora.save_peft(lora.split(params)[1], lora_config, base_model, written[1])
        params = lora.merge(params, lora_config)
    models.save_hf(dataclasses.replace(lm, params=params), written[0])
    return written
