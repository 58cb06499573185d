"""Hugging Face checkpoints: config.json <-> ModelConfig, safetensors <-> our parameter tree.

HF stores linear weights [out, in]; flax Dense kernels are [in, out], so matrices are transposed on
the way in and out. Shards are read one at a time and each tensor is cast to the target dtype as soon
as it is read, so peak host memory is one shard plus the converted tree.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

from exit_jax.models.config import FAMILIES, ROPE_TYPES, ModelConfig, RopeScaling

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                  "gemma": "GemmaForCausalLM"}
_ACTIVATIONS = {"llama": ("silu",), "qwen2": ("silu",), "qwen3": ("silu",),
                "gemma": ("gelu", "gelu_pytorch_tanh")}  # transformers maps Gemma's legacy "gelu" to tanh
_TIE_DEFAULT = {"llama": False, "qwen2": False, "qwen3": False, "gemma": True}
_ATTENTION_BIAS = ("llama", "qwen3")  # families whose config.json may set attention_bias

# HF name (after "model.layers.{i}.") -> path inside our "layers_{i}" subtree, and whether to transpose.
_LAYER_MAP = {
    "input_layernorm.weight": (("attn_norm", "scale"), False),
    "self_attn.q_proj.weight": (("attn", "q", "kernel"), True),
    "self_attn.k_proj.weight": (("attn", "k", "kernel"), True),
    "self_attn.v_proj.weight": (("attn", "v", "kernel"), True),
    "self_attn.o_proj.weight": (("attn", "o", "kernel"), True),
    "self_attn.q_proj.bias": (("attn", "q", "bias"), False),
    "self_attn.k_proj.bias": (("attn", "k", "bias"), False),
    "self_attn.v_proj.bias": (("attn", "v", "bias"), False),
    "self_attn.o_proj.bias": (("attn", "o", "bias"), False),
    "self_attn.q_norm.weight": (("attn", "q_norm", "scale"), False),
    "self_attn.k_norm.weight": (("attn", "k_norm", "scale"), False),
    "post_attention_layernorm.weight": (("mlp_norm", "scale"), False),
    "mlp.gate_proj.weight": (("mlp", "gate", "kernel"), True),
    "mlp.up_proj.weight": (("mlp", "up", "kernel"), True),
    "mlp.down_proj.weight": (("mlp", "down", "kernel"), True),
}
_GLOBAL_MAP = {"model.embed_tokens.weight": (("embed", "embedding"), False),
               "model.norm.weight": (("final_norm", "scale"), False),
               "lm_head.weight": (("lm_head", "kernel"), True)}


# ---- config ---------------------------------------------------------------------------------------
# config.json fields that change what a model computes and that this decoder does not implement, with
# the test for their neutral value: set to anything else, the config is refused, never silently ignored.
_NEUTRAL = {
    "use_bidirectional_attention": lambda v: not v,
    "attn_logit_softcapping": lambda v: v is None,
    "final_logit_softcapping": lambda v: v is None,
    "partial_rotary_factor": lambda v: v in (None, 1, 1.0),
    "attention_chunk_size": lambda v: v is None,
    "layer_types": lambda v: v is None or all(t == "full_attention" for t in v),
}
def _rope(cfg: dict, where: str) -> tuple:
    """(rope_theta, RopeScaling | None) from either the 4.x (`rope_scaling`) or 5.x (`rope_parameters`)
    config layout."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return theta, None
    if kind not in ROPE_TYPES:
        # "dynamic" NTK rescales with the longest sequence a model instance has seen so far (state
        # transformers keeps between calls), which a jitted decoder cannot reproduce call for call.
        raise ValueError(f"{where}: rope scaling type {kind!r} is not supported (supported: "
                         f"{', '.join(ROPE_TYPES)}).")
    try:
        if kind == "linear":
            return theta, RopeScaling(factor=float(scaling["factor"]), rope_type="linear")
        if kind == "yarn":
            original = int(scaling.get("original_max_position_embeddings") or cfg["max_position_embeddings"])
            factor = scaling.get("factor") or cfg["max_position_embeddings"] / original
            optional = {k: float(scaling[k]) for k in ("beta_fast", "beta_slow", "attention_factor", "mscale",
                                                         "mscale_all_dim") if scaling.get(k) is not None}
            return theta, RopeScaling(factor=float(factor), original_max_position_embeddings=original,
                                      rope_type="yarn", truncate=bool(scaling.get("truncate", True)), **optional)
        return theta, RopeScaling(
            factor=float(scaling["factor"]), low_freq_factor=float(scaling["low_freq_factor"]),
            high_freq_factor=float(scaling["high_freq_factor"]),
            original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
    except KeyError as e:
        raise ValueError(f"{where}: rope scaling {kind!r} lacks the field {e.args[0]!r}.") from None


def config_from_hf(cfg: dict, where: str = "config.json") -> ModelConfig:
    """Translate an HF config.json dict; one clear error for each field value we do not compute."""
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{where}: model_type {family!r} is an unknown family; supported: {FAMILIES}.")
    act = cfg.get("hidden_activation") or cfg.get("hidden_act", _ACTIVATIONS[family][-1])
    if act not in _ACTIVATIONS[family]:
        raise ValueError(f"{where}: hidden_act {act!r} is not supported for {family} "
                         f"(expected one of {_ACTIVATIONS[family]}).")
    for field, neutral in _NEUTRAL.items():
        if not neutral(cfg.get(field)):
            raise ValueError(f"{where}: {field}={json.dumps(cfg[field])[:80]} changes the model's math in a way "
                             "exit_jax does not implement; this checkpoint cannot be loaded.")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{where}: mlp_bias=true is not supported.")
    if cfg.get("attention_bias") and family not in _ATTENTION_BIAS:
        raise ValueError(f"{where}: attention_bias=true is not supported for {family}.")
    if family in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        raise ValueError(f"{where}: use_sliding_window=true is not supported (full attention only).")
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size"):
        if not isinstance(cfg.get(field), int):
            raise ValueError(f"{where}: field {field!r} must be an integer, got {cfg.get(field)!r}.")
    theta, scaling = _rope(cfg, where)
    heads = cfg["num_attention_heads"]
    return ModelConfig(
        family=family, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        intermediate_size=cfg["intermediate_size"], rope_theta=theta, rope_scaling=scaling,
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", _TIE_DEFAULT[family])),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 8192)),
        attention_bias=bool(cfg.get("attention_bias")) and family in _ATTENTION_BIAS,
        name=str(cfg.get("_name_or_path", "")))


def config_to_hf(config: ModelConfig, bos_id: Optional[int], eos_ids: tuple,
                 pad_id: Optional[int], dtype: str) -> dict:
    c = config
    out = {
        "architectures": [_ARCHITECTURES[c.family]], "model_type": c.family,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads, "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_embeddings, "attention_dropout": 0.0,
        "hidden_act": "gelu_pytorch_tanh" if c.family == "gemma" else "silu",
        "bos_token_id": bos_id, "dtype": dtype, "eos_token_id": list(eos_ids) if len(eos_ids) > 1 else
        (eos_ids[0] if eos_ids else None), "pad_token_id": pad_id, "torch_dtype": dtype,
        "use_cache": True,
    }
    if c.family == "gemma":
        out["hidden_activation"] = "gelu_pytorch_tanh"
    if c.family in _ATTENTION_BIAS:
        out.update(attention_bias=c.attention_bias, mlp_bias=False)
    if c.family in ("qwen2", "qwen3"):
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)
    rs = c.rope_scaling
    if rs is not None and rs.rope_type == "linear":
        out["rope_scaling"] = {"rope_type": "linear", "factor": rs.factor}
    elif rs is not None and rs.rope_type == "yarn":
        out["rope_scaling"] = {"rope_type": "yarn", "factor": rs.factor, "beta_fast": rs.beta_fast,
                               "beta_slow": rs.beta_slow, "truncate": rs.truncate,
                               "original_max_position_embeddings": rs.original_max_position_embeddings}
        out["rope_scaling"].update({k: getattr(rs, k) for k in ("attention_factor", "mscale", "mscale_all_dim")
                                    if getattr(rs, k)})
    elif rs is not None:
        out["rope_scaling"] = {"rope_type": "llama3", "factor": rs.factor,
                               "low_freq_factor": rs.low_freq_factor,
                               "high_freq_factor": rs.high_freq_factor,
                               "original_max_position_embeddings":
                                   rs.original_max_position_embeddings}
    return out


# ---- weights --------------------------------------------------------------------------------------
def _target(name: str, config: ModelConfig) -> Optional[tuple]:
    """(path in our tree, transpose?) for an HF tensor name, or None for tensors we ignore."""
    if name in _GLOBAL_MAP:
        if name == "lm_head.weight" and config.tie_embeddings:
            return None  # some tied checkpoints also store the (identical) head
        return _GLOBAL_MAP[name]
    if name.startswith("model.layers."):
        _, _, layer, rest = name.split(".", 3)
        if rest in _LAYER_MAP and int(layer) < config.num_layers:
            path, transpose = _LAYER_MAP[rest]
            return (f"layers_{layer}",) + path, transpose
    if name.endswith("rotary_emb.inv_freq"):
        return None
    return "unexpected"


def _abstract_params(config: ModelConfig):
    """The parameter tree for `config` as ShapeDtypeStructs, without allocating it."""
    from exit_jax.models.transformer import init_params
    return jax.eval_shape(lambda: init_params(config))


def expected_shapes(config: ModelConfig, tree=None) -> dict:
    """{path tuple: shape} of the parameter tree for `config` (or of its abstract `tree`)."""
    tree = _abstract_params(config) if tree is None else tree
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def params_from_hf(tensors: Iterable[tuple], config: ModelConfig, dtype, where: str,
                   shardings: Optional[Callable] = None) -> dict:
    """Build the nested params dict from (hf_name, numpy array) pairs, casting each on arrival.

    shardings: abstract params tree -> tree of jax Shardings (e.g. the learner's FSDP layout): each
    tensor then goes straight into its shards on their devices as it is read, and the host holds one
    tensor at a time; without it, each lands whole on the default device."""
    abstract = _abstract_params(config)
    shapes = expected_shapes(config, abstract)
    placement = {}
    if shardings is not None:
        flat_shardings = jax.tree_util.tree_flatten_with_path(shardings(abstract))[0]
        placement = {tuple(k.key for k in path): sharding for path, sharding in flat_shardings}
    flat = {}
    for name, array in tensors:
        target = _target(name, config)
        if target is None:
            continue
        if target == "unexpected":
            raise ValueError(f"{where}: unexpected tensor {name!r} for a {config.family} model.")
        path, transpose = target
        array = np.asarray(array)
        if transpose:
            array = array.T
        if path not in shapes:
            raise ValueError(f"{where}: tensor {name!r} does not belong to this {config.family} config.")
        if tuple(array.shape) != shapes[path]:
            want = shapes[path][::-1] if transpose else shapes[path]
            got = array.shape[::-1] if transpose else array.shape
            raise ValueError(f"{where}: tensor {name!r} has shape {tuple(got)}, expected "
                             f"{tuple(want)} from the config.")
        if placement:
            flat[path] = jax.make_array_from_callback(
                array.shape, placement[path], lambda index, a=array: np.asarray(a[index], dtype=dtype))
        else:
            flat[path] = jnp.asarray(array, dtype=dtype)
    missing = sorted("/".join(p) for p in shapes if p not in flat)
    if missing:
        raise ValueError(f"{where}: missing tensors for {missing[:5]}"
                         f"{' and more' if len(missing) > 5 else ''}.")
    params: dict = {}
    for path, value in flat.items():
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return params


def params_to_hf(params: dict, config: ModelConfig) -> Iterator[tuple]:
    """Yield (hf_name, numpy array in HF layout) for every parameter."""
    inverse = {path: (name, t) for name, (path, t) in _GLOBAL_MAP.items()}
    for i in range(config.num_layers):
        for rest, (path, t) in _LAYER_MAP.items():
            inverse[(f"layers_{i}",) + path] = (f"model.layers.{i}.{rest}", t)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = tuple(k.key for k in path)
        name, transpose = inverse[key]
        array = np.asarray(leaf)
        yield name, (array.T if transpose else array)


def _shard_files(path: str) -> list:
    index = os.path.join(path, "model.safetensors.index.json")
    single = os.path.join(path, "model.safetensors")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        for name in files:
            if not os.path.exists(os.path.join(path, name)):
                raise FileNotFoundError(f"Shard {name!r} listed in {index!r} does not exist.")
        return [os.path.join(path, name) for name in files]
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(
        f"No weights in {path!r}: expected model.safetensors or model.safetensors.index.json.")


def iter_safetensors(path: str) -> Iterator[tuple]:
    """(name, numpy array) for every tensor of an HF dir, one shard open at a time."""
    from safetensors import SafetensorError, safe_open
    for file in _shard_files(path):
        # numpy, not flax: the tensor stays on the host until it is cast (bf16 comes as ml_dtypes).
        try:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        except SafetensorError as e:  # truncated or overwritten files
            raise ValueError(f"{file} is not a readable safetensors file ({e}); download or copy it again.") from None


def read_config(path: str) -> dict:
    file = os.path.join(path, "config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(f"No config.json in {path!r} (expected a Hugging Face model directory).")
    with open(file) as f:
        return json.load(f)


def read_generation_config(path: str) -> dict:
    file = os.path.join(path, "generation_config.json")
    if not os.path.exists(file):
        return {}
    with open(file) as f:
        return json.load(f)


def write_safetensors(params: dict, config: ModelConfig, file: str) -> None:
    from safetensors.flax import save_file  # the flax writer keeps bfloat16 as bfloat16
    tensors = {name: jnp.asarray(np.ascontiguousarray(array))
               for name, array in params_to_hf(params, config)}
    save_file(tensors, file, metadata={"format": "pt"})
