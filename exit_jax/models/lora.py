"""LoRA adapters (Hu et al., 2021) on the decoder's projections, computed by google's `qwix`.

qwix intercepts the matmul of every flax `Dense` whose module path matches a target and adds
(alpha / rank) * dropout(x) @ A @ B to its output, reading A and B from the params tree next to the
frozen kernel [.., in, out]:

    .../{q,k,v,o,gate,up,down}/kernel_lora_a   [.., in, rank]   (PEFT's lora_A.weight, transposed)
    .../{q,k,v,o,gate,up,down}/kernel_lora_b   [.., rank, out]  (PEFT's lora_B.weight, transposed)

with a leading [num_layers] in the scanned layout, so the same Transformer, scan, remat, KV cache and
sharding rules serve full fine-tuning and adapters. A starts uniform in +-1/sqrt(in) and B at zero
(PEFT's defaults), so a fresh adapter leaves the model exactly as loaded. Here the tree is split into the
frozen base and the trainable adapters, put back together, merged into plain weights (export, or a
sampler that trades exactness for speed: see `merge`), and written as a PEFT adapter folder.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
A, B = "kernel_lora_a", "kernel_lora_b"
# Our module names -> the Hugging Face ones a PEFT adapter_config lists (see models.hf).
_HF_MODULES = {"q": ("self_attn", "q_proj"), "k": ("self_attn", "k_proj"), "v": ("self_attn", "v_proj"),
               "o": ("self_attn", "o_proj"), "gate": ("mlp", "gate_proj"), "up": ("mlp", "up_proj"),
               "down": ("mlp", "down_proj")}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank > 0 trains adapters on `targets` instead of every weight (docs/lora.md)."""
    rank: int
    alpha: float = 16.0  # the update is scaled by alpha / rank (PEFT's lora_alpha)
    targets: tuple = TARGETS
    dropout: float = 0.0  # on the adapter branch's input, in the learner's forward pass only
    seed: int = 0  # draws A's initial values

    def __post_init__(self):
        unknown = sorted(set(self.targets) - set(TARGETS))
        if self.rank < 1 or not self.targets or unknown:
            raise ValueError(f"LoRA needs rank >= 1 (got {self.rank}) and targets among {TARGETS} "
                             f"(got {tuple(self.targets)}).")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1); got {self.dropout}.")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def num_params(cfg: LoraConfig, config) -> int:
    """How many adapter parameters `cfg` adds to a model of ModelConfig `config`: rank * (in + out) per
    targeted projection and layer."""
    d, f = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    sizes = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, f), "up": (d, f), "down": (f, d)}
    return config.num_layers * cfg.rank * sum(sum(sizes[t]) for t in cfg.targets)


def wrap(model, cfg: LoraConfig, train: bool = False):
    """The flax module computing with adapters (qwix interception). Dropout only when `train`: the
    sampler and the reference pass see the deterministic policy. Its apply needs a "dropout" rng then."""
    import qwix
    provider = qwix.LoraProvider(module_path=rf"(.*/)?({'|'.join(cfg.targets)})$", rank=cfg.rank,
                                 alpha=cfg.alpha, dropout=cfg.dropout if train else 0.0)
    return qwix.apply_lora_to_model(model, provider)


def init(base, cfg: LoraConfig):
    """Fresh adapters for a base params tree in the per-layer layout (arrays or ShapeDtypeStructs): a tree
    holding only the kernels' {A, B}. Traceable, so it can be built in its shards under jit."""
    def visit(node, where):
        out = {}
        for name, child in node.items():
            if name in cfg.targets and isinstance(child, dict) and "kernel" in child:
                *lead, fan_in, fan_out = child["kernel"].shape
                # Each weight's draw keyed by its path: the same values in any tree order.
                key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), zlib.crc32(f"{where}/{name}".encode()))
                bound = 1.0 / np.sqrt(fan_in)
                out[name] = {A: jax.random.uniform(key, (*lead, fan_in, cfg.rank), jnp.float32, -bound, bound),
                             B: jnp.zeros((*lead, cfg.rank, fan_out), jnp.float32)}
            elif isinstance(child, dict):
                sub = visit(child, f"{where}/{name}")
                if sub:
                    out[name] = sub
        return out
    if "layers" in base:
        raise ValueError("lora.init takes the per-layer layout (layers_{i}); stack the result afterwards.")
    adapters = visit(base, "")
    if not adapters:
        raise ValueError(f"LoRA targets {tuple(cfg.targets)} match no weight of this model.")
    return adapters


def combine(base, adapters):
    """The params tree the wrapped model reads: base with the adapters beside their kernels."""
    if adapters is None:
        return base
    out = dict(base)
    for name, child in adapters.items():
        out[name] = combine(base[name], child) if isinstance(child, dict) else child
    return out


def split(params) -> tuple[Any, Any]:
    """(base, adapters) of a combined tree; adapters is None when it holds none."""
    base, adapters = {}, {}
    for name, child in params.items():
        if name in (A, B):
            adapters[name] = child
        elif isinstance(child, dict):
            b, a = split(child)
            base[name] = b
            if a:
                adapters[name] = a
        else:
            base[name] = child
    return base, (adapters or None)


def merge(params, cfg: LoraConfig):
    """Plain weights W + (alpha / rank) * A @ B, computed in float32 and cast to the kernel's dtype: what
    transformers runs after PEFT's merge_and_unload. In bfloat16 the merged weight rounds
    away an adapter update smaller than 2^-8 of the weight, which the unmerged branch keeps."""
    def visit(node):
        if A in node:
            kernel = node["kernel"]
            delta = jnp.einsum("...ir,...ro->...io", node[A].astype(jnp.float32), node[B].astype(jnp.float32))
            merged = (kernel.astype(jnp.float32) + cfg.scale * delta).astype(kernel.dtype)
            return {k: v for k, v in node.items() if k not in (A, B)} | {"kernel": merged}
        return {k: visit(v) if isinstance(v, dict) else v for k, v in node.items()}
    return visit(params)


def save_peft(adapters, cfg: LoraConfig, base_model: str, out_dir: str) -> None:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) for the per-layer layout:
    `peft.PeftModel.from_pretrained(<the base in transformers>, out_dir)` computes what we do."""
    from safetensors.numpy import save_file
    os.makedirs(out_dir, exist_ok=True)
    tensors = {}
    for layer, modules in adapters.items():
        if not layer.startswith("layers_"):
            raise ValueError(f"save_peft needs the per-layer layout (layers_{{i}}); got {layer!r}.")
        for group in modules.values():
            for name, pair in group.items():
                block, proj = _HF_MODULES[name]
                prefix = f"base_model.model.model.layers.{layer[len('layers_'):]}.{block}.{proj}"
                tensors[f"{prefix}.lora_A.weight"] = np.ascontiguousarray(np.asarray(pair[A], np.float32).T)
                tensors[f"{prefix}.lora_B.weight"] = np.ascontiguousarray(np.asarray(pair[B], np.float32).T)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.rank, "lora_alpha": cfg.alpha,
              "lora_dropout": cfg.dropout, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "target_modules": sorted(_HF_MODULES[t][1] for t in cfg.targets),
              "base_model_name_or_path": base_model, "inference_mode": True}
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
