"""Read llama.cpp GGUF files: config from metadata, dequantized weights in HF layout, the tokenizer.

GGUF stores each matrix as numpy [out, in] (ggml's ne order reversed), i.e. the HF layout, but
llama.cpp's converter permutes the q/k rows of llama models for its interleaved RoPE and adds 1 to
Gemma's norm weights; both are undone here so `hf.params_from_hf` sees exactly HF tensors.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import numpy as np

from exit_jax.models.config import ModelConfig, RopeScaling

_ARCH_TO_FAMILY = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma"}

# GGUF tensor name (after "blk.{i}.") -> HF name (after "model.layers.{i}.").
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}

# Llama 3.x checkpoints ship their rope scaling in GGUF only as a tensor of per-frequency divisors;
# we recognise the published settings (factor 8 for 3.1, 32 for 3.2; low/high 1/4) by recomputing it.
_LLAMA3_FACTORS = (8.0, 16.0, 32.0)


def _reader(path: str):
    import gguf
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
    try:
        return gguf.GGUFReader(path)
    except Exception as e:  # corrupt / not a GGUF file
        raise ValueError(f"{path!r} is not a readable GGUF file: {e}") from None


def read_metadata(reader) -> dict:
    """All GGUF key/values as plain Python values (strings, numbers, lists)."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # an exotic field type we do not need
            continue
    return meta


def config_from_metadata(meta: dict, path: str, tensor_shapes: dict) -> ModelConfig:
    """ModelConfig from `{arch}.*` metadata; `tensor_shapes` maps GGUF names to numpy-order shapes."""
    arch = meta.get("general.architecture")
    if arch not in _ARCH_TO_FAMILY:
        raise ValueError(f"GGUF {path!r} has general.architecture={arch!r}; supported: "
                         f"{sorted(_ARCH_TO_FAMILY)}.")

    def get(key, default=None):
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF {path!r} lacks the metadata field {arch}.{key}.")
        return value

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or meta.get(f"{arch}.rope.dimension_count")
                   or hidden // heads)
    if "token_embd.weight" not in tensor_shapes:
        raise ValueError(f"GGUF {path!r} has no token_embd.weight tensor.")
    vocab = int(tensor_shapes["token_embd.weight"][0])  # the embedding, not the token list, sets V
    scaling_type, scaling = meta.get(f"{arch}.rope.scaling.type"), None
    if scaling_type == "linear":
        scaling = RopeScaling(factor=float(get("rope.scaling.factor")), rope_type="linear")
    elif scaling_type == "yarn":
        betas = {k: float(meta[f"{arch}.rope.scaling.yarn_{k}"]) for k in ("beta_fast", "beta_slow")
                 if f"{arch}.rope.scaling.yarn_{k}" in meta}
        scaling = RopeScaling(factor=float(get("rope.scaling.factor")), rope_type="yarn",
                              original_max_position_embeddings=int(get("rope.scaling.original_context_length")),
                              **betas)
    elif scaling_type not in (None, "none") and "rope_freqs.weight" not in tensor_shapes:
        raise ValueError(f"GGUF {path!r}: rope scaling type {scaling_type!r} is not supported "
                         "(llama3 as rope_freqs.weight, linear, yarn).")
    return ModelConfig(
        family=_ARCH_TO_FAMILY[arch], vocab_size=vocab, hidden_size=hidden,
        num_layers=int(get("block_count")), num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv") or heads), head_dim=head_dim,
        intermediate_size=int(get("feed_forward_length")),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)), rope_scaling=scaling,
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in tensor_shapes,
        # GGUF has no attention_bias field: llama / qwen3 checkpoints with it carry the bias tensors.
        attention_bias=arch in ("llama", "qwen3") and "blk.0.attn_q.bias" in tensor_shapes,
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 8192)),
        name=str(meta.get("general.name", os.path.basename(path))))


def _match_rope_freqs(config: ModelConfig, factors: np.ndarray, original: int,
                      path: str) -> ModelConfig:
    import dataclasses
    from exit_jax.models.rope import rope_inv_freq
    plain = rope_inv_freq(config)
    for factor in _LLAMA3_FACTORS:
        cand = RopeScaling(factor, 1.0, 4.0, original)
        scaled = rope_inv_freq(dataclasses.replace(config, rope_scaling=cand))
        if factors.shape == plain.shape and np.allclose(plain / scaled, factors, rtol=1e-3):
            return dataclasses.replace(config, rope_scaling=cand)
    raise ValueError(f"GGUF {path!r}: its rope_freqs.weight matches no Llama 3 rope scaling we know "
                     f"(tried factors {list(_LLAMA3_FACTORS)} with low/high 1/4 and original context "
                     f"{original}).")


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Invert llama.cpp's `permute`: rows (head, pair, 2) interleaved -> HF rotate_half (head, 2, pair)."""
    out = w.shape[0]
    return w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_name(gguf_name: str) -> Optional[str]:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name.startswith("blk."):
        _, layer, rest = gguf_name.split(".", 2)
        if rest in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[rest]}"
    return None


def iter_hf_tensors(reader, config: ModelConfig, path: str) -> Iterator[tuple]:
    """Yield (hf_name, float32 numpy [out, in]) one tensor at a time, dequantized and un-permuted."""
    import gguf
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue
        name = hf_name(t.name)
        if name is None:
            raise ValueError(f"GGUF {path!r} has an unexpected tensor {t.name!r}.")
        try:
            w = gguf.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"GGUF {path!r}: tensor {t.name!r} has type {t.tensor_type.name}, which "
                             "we cannot dequantize.") from None
        shape = tuple(int(d) for d in reversed(t.shape))  # ggml ne order -> numpy order
        w = np.asarray(w, dtype=np.float32).reshape(shape)
        if config.family == "llama" and t.name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute_qk(w, config.num_heads)
        elif config.family == "llama" and t.name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute_qk(w, config.num_kv_heads)
        if config.family == "gemma" and t.name.endswith("norm.weight"):
            w = w - 1.0  # llama.cpp stores Gemma's (1 + w) norm weights with the 1 folded in.
        yield name, w


def load_gguf(path: str):
    """-> (ModelConfig, iterator of HF-named float32 tensors, metadata dict)."""
    reader = _reader(path)
    meta = read_metadata(reader)
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    config = config_from_metadata(meta, path, shapes)
    if "rope_freqs.weight" in shapes:
        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        original = int(meta.get(f"{meta['general.architecture']}.rope.scaling.original_context_length",
                                8192))
        config = _match_rope_freqs(config, np.asarray(t.data, np.float32).reshape(-1), original, path)
    return config, iter_hf_tensors(reader, config, path), meta
