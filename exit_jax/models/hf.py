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

from exit_jax.models.config import FAMILIES, GEMMAS, ROPE_TYPES, ModelConfig, RopeScaling

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM", "gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                  "gemma3_text": "Gemma3ForCausalLM"}
# transformers maps Gemma's legacy "gelu" to tanh
_ACTIVATIONS = {f: ("gelu", "gelu_pytorch_tanh") if f in GEMMAS else ("silu",) for f in FAMILIES}
_TIE_DEFAULT = {f: f in GEMMAS for f in FAMILIES}
_ATTENTION_BIAS = ("llama", "qwen3")  # families whose config.json may set attention_bias
_SOFTCAPPED = ("gemma2", "gemma3_text")  # families whose models apply soft-capping and query_pre_attn_scalar
# transformers' defaults for fields a config.json may leave out (an explicit null stays null).
_HF_DEFAULTS = {
    "mistral": {"sliding_window": 4096},
    "gemma2": {"query_pre_attn_scalar": 256, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0},
    "gemma3_text": {"query_pre_attn_scalar": 256, "sliding_window": 4096, "rope_theta": 1000000.0,
                    "rope_local_base_freq": 10000.0},
}

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
# Gemma 2/3 normalise each sub-layer's input and output: HF's post_attention_layernorm is the attention's
# output norm there, and pre_feedforward_layernorm the MLP's input norm.
_SANDWICH_MAP = _LAYER_MAP | {
    "post_attention_layernorm.weight": (("post_attn_norm", "scale"), False),
    "pre_feedforward_layernorm.weight": (("mlp_norm", "scale"), False),
    "post_feedforward_layernorm.weight": (("post_mlp_norm", "scale"), False),
}


def _layer_map(config: ModelConfig) -> dict:
    return _SANDWICH_MAP if config.sandwich_norms else _LAYER_MAP
_GLOBAL_MAP = {"model.embed_tokens.weight": (("embed", "embedding"), False),
               "model.norm.weight": (("final_norm", "scale"), False),
               "lm_head.weight": (("lm_head", "kernel"), True)}


# ---- config ---------------------------------------------------------------------------------------
# config.json fields that change what a model computes and that this decoder does not implement, with
# the test for their neutral value: set to anything else, the config is refused, never silently ignored.
_NEUTRAL = {
    "use_bidirectional_attention": lambda v: not v,
    "partial_rotary_factor": lambda v: v in (None, 1, 1.0),
    "attention_chunk_size": lambda v: v is None,
}
# ... and those that only some families compute (transformers' other models ignore them).
_NEUTRAL_UNLESS = {
    "attn_logit_softcapping": (_SOFTCAPPED, lambda v: v is None),
    "final_logit_softcapping": (_SOFTCAPPED, lambda v: v is None),
    "layer_types": (("mistral", "qwen2", "qwen3") + _SOFTCAPPED,
                    lambda v: v is None or all(t == "full_attention" for t in v)),
}


def _layer_types(cfg: dict, family: str, n: int) -> Optional[tuple]:
    """Each layer's attention ("full_attention" / "sliding_attention"): config.json's `layer_types`
    (transformers >= 4.53) or, for older files, the rule each family's model applied."""
    if cfg.get("layer_types") is not None:
        return tuple(cfg["layer_types"])
    window = cfg.get("sliding_window")
    if family == "mistral":
        sliding = [bool(window)] * n
    elif family in ("qwen2", "qwen3"):
        sliding = [bool(cfg.get("use_sliding_window")) and i >= cfg.get("max_window_layers", n) for i in range(n)]
    elif family == "gemma2":
        sliding = [i % 2 == 0 for i in range(n)]
    elif family == "gemma3_text":
        pattern = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6
        sliding = [(i + 1) % pattern != 0 for i in range(n)]
    else:
        return None
    return tuple("sliding_attention" if s else "full_attention" for s in sliding) if any(sliding) else None


def _rope(cfg: dict, where: str) -> tuple:
    """(rope_theta, RopeScaling | None, local theta | None) from either the 4.x (`rope_scaling`) or 5.x
    (`rope_parameters`) config layout; Gemma 3's sliding layers have their own base, unscaled (4.x:
    `rope_local_base_freq`; 5.x: `rope_parameters` per layer type)."""
    params = cfg.get("rope_parameters") or {}
    local = cfg.get("rope_local_base_freq")
    if "full_attention" in params:
        sliding = params.get("sliding_attention") or {}
        if sliding.get("rope_type", "default") != "default":
            raise ValueError(f"{where}: rope scaling on the sliding layers is not supported.")
        local = sliding.get("rope_theta", local)
        params = params["full_attention"]
    scaling = cfg.get("rope_scaling") or params
    theta = float(params.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    local = float(local) if local else None
    return (*_rope_scaling(cfg, scaling, theta, where), local)


def _rope_scaling(cfg: dict, scaling: dict, theta: float, where: str) -> tuple:
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
    """Translate an HF config.json dict; one clear error for each field value we do not compute. A
    multimodal Gemma 3 checkpoint (model_type gemma3) loads as its text model; its vision tower is
    ignored (see _target)."""
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
        cfg = {"_name_or_path": cfg.get("_name_or_path", ""), **cfg["text_config"], "model_type": "gemma3_text"}
    family = cfg.get("model_type")
    if family not in FAMILIES:
        raise ValueError(f"{where}: model_type {family!r} is an unknown family; supported: {FAMILIES}.")
    cfg = {**_HF_DEFAULTS.get(family, {}), **cfg}
    act = cfg.get("hidden_activation") or cfg.get("hidden_act", _ACTIVATIONS[family][-1])
    if act not in _ACTIVATIONS[family]:
        raise ValueError(f"{where}: hidden_act {act!r} is not supported for {family} "
                         f"(expected one of {_ACTIVATIONS[family]}).")
    neutral = dict(_NEUTRAL, **{k: test for k, (families, test) in _NEUTRAL_UNLESS.items() if family not in families})
    for field, test in neutral.items():
        if not test(cfg.get(field)):
            raise ValueError(f"{where}: {field}={json.dumps(cfg[field])[:80]} changes the model's math in a way "
                             f"exit_jax does not implement for {family}; this checkpoint cannot be loaded.")
    if cfg.get("mlp_bias"):
        raise ValueError(f"{where}: mlp_bias=true is not supported.")
    if cfg.get("attention_bias") and family not in _ATTENTION_BIAS:
        raise ValueError(f"{where}: attention_bias=true is not supported for {family}.")
    for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size"):
        if not isinstance(cfg.get(field), int):
            raise ValueError(f"{where}: field {field!r} must be an integer, got {cfg.get(field)!r}.")
    theta, scaling, local_theta = _rope(cfg, where)
    if local_theta is not None and family != "gemma3_text":
        raise ValueError(f"{where}: a separate RoPE base for sliding layers is only supported for gemma3_text.")
    layer_types = _layer_types(cfg, family, cfg["num_hidden_layers"])
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
        sliding_window=cfg.get("sliding_window") if layer_types else None, layer_types=layer_types,
        # Other families' soft-caps and local RoPE bases were refused above (None here).
        attn_logit_softcapping=cfg.get("attn_logit_softcapping"),
        final_logit_softcapping=cfg.get("final_logit_softcapping"),
        query_pre_attn_scalar=cfg.get("query_pre_attn_scalar") if family in _SOFTCAPPED else None,
        rope_local_theta=local_theta,
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
        "hidden_act": "gelu_pytorch_tanh" if c.family in GEMMAS else "silu",
        "bos_token_id": bos_id, "dtype": dtype, "eos_token_id": list(eos_ids) if len(eos_ids) > 1 else
        (eos_ids[0] if eos_ids else None), "pad_token_id": pad_id, "torch_dtype": dtype,
        "use_cache": True,
    }
    if c.family in GEMMAS:
        out["hidden_activation"] = "gelu_pytorch_tanh"
    if c.family in _ATTENTION_BIAS:
        out.update(attention_bias=c.attention_bias, mlp_bias=False)
    if c.family in ("qwen2", "qwen3"):
        sliding = [i for i in range(c.num_layers) if c.layer_types and c.layer_types[i] == "sliding_attention"]
        out.update(use_sliding_window=bool(sliding), sliding_window=c.sliding_window,
                   max_window_layers=sliding[0] if sliding else c.num_layers)
    if c.family in ("mistral",) + _SOFTCAPPED:
        out["sliding_window"] = c.sliding_window
    if c.layer_types:
        out["layer_types"] = list(c.layer_types)
    if c.family in _SOFTCAPPED:
        out.update(attn_logit_softcapping=c.attn_logit_softcapping, final_logit_softcapping=c.final_logit_softcapping,
                   query_pre_attn_scalar=c.query_pre_attn_scalar)
    if c.rope_local_theta:
        out["rope_local_base_freq"] = c.rope_local_theta
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
_MULTIMODAL_TEXT = ("language_model.model.", "model.language_model.")  # Gemma 3's text model (4.x, 5.x names)
_MULTIMODAL_OTHER = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


def _target(name: str, config: ModelConfig) -> Optional[tuple]:
    """(path in our tree, transpose?) for an HF tensor name, or None for tensors we ignore."""
    if name.startswith(_MULTIMODAL_OTHER):
        return None
    name = next(("model." + name[len(p):] for p in _MULTIMODAL_TEXT if name.startswith(p)), name)
    name = "lm_head.weight" if name == "language_model.lm_head.weight" else name
    if name in _GLOBAL_MAP:
        if name == "lm_head.weight" and config.tie_embeddings:
            return None  # some tied checkpoints also store the (identical) head
        return _GLOBAL_MAP[name]
    if name.startswith("model.layers."):
        _, _, layer, rest = name.split(".", 3)
        if rest in _layer_map(config) and int(layer) < config.num_layers:
            path, transpose = _layer_map(config)[rest]
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
        for rest, (path, t) in _layer_map(config).items():
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
