"""exit_jax's own checkpoint format: an orbax params tree + a JSON file with the model config.

Layout of a directory written by `save`:
    exit_jax_model.json   {"config": ModelConfig fields, "generation_config": {...}}
    params/               orbax StandardCheckpointer tree
    tokenizer files       written by Tokenizer.save
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp

from exit_jax.models.config import ModelConfig, RopeScaling

MARKER = "exit_jax_model.json"


def is_orbax_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, MARKER))


def config_to_dict(config: ModelConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict, where: str) -> ModelConfig:
    d = dict(d)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown ModelConfig fields {unknown}.")
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    return ModelConfig(**d)


def save(out_dir: str, config: ModelConfig, params, generation_config: dict) -> None:
    import orbax.checkpoint as ocp
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(out_dir, "params"), params, force=True)
    ckpt.wait_until_finished()
    with open(os.path.join(out_dir, MARKER), "w") as f:
        json.dump({"config": config_to_dict(config), "generation_config": generation_config}, f,
                  indent=2)


def load(path: str, dtype, shardings=None) -> tuple:
    """-> (ModelConfig, generation_config dict, params cast to `dtype`); with `shardings` (abstract tree
    -> Shardings) orbax restores each array straight into its shards."""
    import orbax.checkpoint as ocp
    from exit_jax.models.hf import expected_shapes
    path = os.path.abspath(path)
    where = os.path.join(path, MARKER)
    with open(where) as f:
        meta = json.load(f)
    config = config_from_dict(meta["config"], where)
    params_dir = os.path.join(path, "params")
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f"{path!r} has {MARKER} but no params/ checkpoint.")
    shapes = expected_shapes(config)
    target = {}
    for keys, shape in shapes.items():
        node = target
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = jax.ShapeDtypeStruct(shape, dtype)
    if shardings is not None:
        target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target,
                              shardings(target))
    try:
        params = ocp.StandardCheckpointer().restore(params_dir, target)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{params_dir!r} does not match the config in {MARKER}: {e}") from None
    except Exception as e:  # noqa: BLE001 - truncated or garbled array files (tensorstore errors)
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{params_dir!r} cannot be read ({type(e).__name__}: {first}); the checkpoint is "
                         "damaged: write it again.") from None
    if shardings is None:
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
    return config, meta.get("generation_config", {}), params
