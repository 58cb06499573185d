"""Checkpoint formats: save_hf / orbax round trips, sharded safetensors, GGUF, and bad-input errors."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from exit_jax import models

PARITY = os.path.join(os.path.dirname(__file__), "fixtures", "parity")


def fixture(name):
    return os.path.join(PARITY, name)


def copy_fixture(name, tmp_path, **config_changes):
    out = tmp_path / name
    shutil.copytree(fixture(name), out)
    if config_changes:
        cfg = json.loads((out / "config.json").read_text())
        cfg.update(config_changes)
        (out / "config.json").write_text(json.dumps(cfg))
    return str(out)


def assert_same_lm(a, b):
    assert jax.tree.structure(a.params) == jax.tree.structure(b.params)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        assert x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y))
    assert dataclass_fields(a.config) == dataclass_fields(b.config)
    text = a.tokenizer.apply_chat_template([{"role": "user", "content": "Hi there, 123!"}])
    assert text == b.tokenizer.apply_chat_template([{"role": "user", "content": "Hi there, 123!"}])
    assert a.tokenizer.encode(text) == b.tokenizer.encode(text)
    assert a.tokenizer.eos_ids == b.tokenizer.eos_ids and a.tokenizer.pad_id == b.tokenizer.pad_id
    assert a.tokenizer.vocab_size == b.tokenizer.vocab_size


def dataclass_fields(config):
    import dataclasses
    return {k: v for k, v in dataclasses.asdict(config).items() if k != "name"}


@pytest.mark.parametrize("name", ["llama_gqa_tied", "llama_mha_untied_rope3", "qwen2_bias",
                                  "gemma_head_dim", "qwen3_qknorm", "llama_attention_bias", "llama_linear_rope",
                                  "qwen2_yarn", "mistral_sliding", "qwen2_sliding", "gemma2_softcap",
                                  "gemma3_local_rope"])
def test_save_hf_round_trip_is_exact(name, tmp_path):
    lm = models.load(fixture(name))
    out = str(tmp_path / "export")
    models.save_hf(lm, out)
    for file in ("config.json", "model.safetensors", "tokenizer_config.json",
                 "generation_config.json"):
        assert os.path.exists(os.path.join(out, file)), file
    tok_cfg = json.loads(open(os.path.join(out, "tokenizer_config.json")).read())
    assert tok_cfg["chat_template"] == lm.tokenizer.chat_template
    back = models.load(out)
    assert_same_lm(lm, back)
    tokens = np.load(os.path.join(fixture(name), "tokens.npy"))
    np.testing.assert_array_equal(np.asarray(lm.logits(tokens)), np.asarray(back.logits(tokens)))


def test_save_hf_keeps_bfloat16(tmp_path):
    lm = models.load(fixture("qwen2_bias"), dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(lm.params))
    models.save_hf(lm, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert_same_lm(lm, models.load(str(tmp_path), dtype="bfloat16"))
    logits = lm.logits(np.load(os.path.join(fixture("qwen2_bias"), "tokens.npy")))
    assert logits.dtype == jnp.float32


def test_orbax_round_trip(tmp_path):
    lm = models.load(fixture("llama_mha_untied_rope3"))
    models.save_orbax(lm, str(tmp_path / "ckpt"))
    back = models.load(str(tmp_path / "ckpt"))
    assert_same_lm(lm, back)
    assert back.config == lm.config  # the orbax format keeps the name too
    assert back.generation_config == lm.generation_config


def test_sharded_safetensors_equal_single_file(tmp_path):
    from safetensors.numpy import load_file, save_file
    src = fixture("qwen2_bias")
    out = tmp_path / "sharded"
    shutil.copytree(src, out)
    tensors = load_file(str(out / "model.safetensors"))
    os.remove(out / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(out / file))
    weight_map = {k: f for f, keys in shards.items() for k in keys}
    (out / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_lm(models.load(src), models.load(str(out)))
    os.remove(out / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        models.load(str(out))


def test_checkpoints_load_straight_into_the_learners_shards(tmp_path):
    """models.load(..., shardings=...) for HF safetensors, GGUF and orbax: every weight arrives split over
    the 4 devices as rl.parallel lays out the learner (data x tensor here), with the values of a plain
    load; the sharded params feed the sharded learner state without moving."""
    import functools
    from exit_jax.rl import parallel
    from test_models_gguf import write_gguf
    from exit_jax.rl.learner import LearnerConfig
    mesh = parallel.make_mesh(tensor=2)
    shardings = functools.partial(parallel.state_shardings, mesh=mesh)
    src = fixture("qwen2_bias")
    models.save_orbax(models.load(src), str(tmp_path / "orbax"))
    gguf = str(tmp_path / "model.gguf")
    write_gguf("llama_gqa_tied", gguf)
    for source in (src, str(tmp_path / "orbax"), gguf):
        plain, sharded = models.load(source), models.load(source, shardings=shardings)
        assert_same_lm(plain, sharded)
        q = sharded.params["layers_0"]["attn"]["q"]["kernel"]
        assert q.sharding.spec == parallel.state_shardings(plain.params, mesh)["layers_0"]["attn"]["q"][
            "kernel"].spec and q.sharding.spec[-1] == "tensor", source
        assert len({s.device for s in q.addressable_shards}) == 4
    cfg = LearnerConfig(parallel="fsdp", tensor_parallel=2, scan_layers=True)
    state = parallel.init_sharded(sharded.params, cfg, mesh)
    assert state.params["layers"]["attn"]["q"]["kernel"].sharding.spec[-1] == "tensor"


# ---- bad input: one clear sentence each -----------------------------------------------------------
def test_truncated_checkpoints_are_named_in_one_sentence(tmp_path):
    hf = copy_fixture("qwen2_bias", tmp_path)
    st = os.path.join(hf, "model.safetensors")
    with open(st, "r+b") as f:
        f.truncate(os.path.getsize(st) // 2)
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        models.load(hf)
    out = str(tmp_path / "orbax")
    models.save_orbax(models.load(fixture("qwen2_bias")), out)
    files = [os.path.join(r, n) for r, _, names in os.walk(os.path.join(out, "params")) for n in names]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    with pytest.raises(ValueError, match=r"params' cannot be read .* the checkpoint is damaged"):
        models.load(out)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a preset"):
        models.load(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load(str(tmp_path))
    path = copy_fixture("llama_gqa_tied", tmp_path)
    os.remove(os.path.join(path, "tokenizer.json"))
    with pytest.raises(FileNotFoundError, match="tokenizer.json or tokenizer.model"):
        models.load(path)
    shutil.copy(os.path.join(fixture("llama_gqa_tied"), "tokenizer.json"), path)
    os.remove(os.path.join(path, "model.safetensors"))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load(str(tmp_path / "missing.gguf"))


@pytest.mark.parametrize("changes, message", [
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "rope scaling type 'dynamic' is not supported"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "lacks the field 'factor'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"use_bidirectional_attention": True}, "use_bidirectional_attention=true changes the model's math"),
    ({"layer_types": ["sliding_attention", "full_attention"]}, "layer_types="),
    ({"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0"),
    ({"model_type": "phi3"}, "model_type 'phi3' is an unknown family"),
    ({"num_hidden_layers": "two"}, "num_hidden_layers"),
])
def test_unsupported_config_fields(tmp_path, changes, message):
    path = copy_fixture("llama_gqa_tied", tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        models.load(path)


def test_tokenizer_larger_than_embedding(tmp_path):
    path = copy_fixture("llama_gqa_tied", tmp_path, vocab_size=256)
    with pytest.raises(ValueError, match="tokenizer has 300 tokens but the embedding has only 256"):
        models.load(path)


def test_tensor_shape_mismatch(tmp_path):
    path = copy_fixture("llama_gqa_tied", tmp_path, intermediate_size=96)
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.\w+_proj.weight' has shape \(\d+, \d+\), "
                                         r"expected \(\d+, \d+\)"):
        models.load(path)


def test_bad_names_and_offline_hub(monkeypatch):
    with pytest.raises(ValueError, match="Preset 'gemma-2b-it' has no embedded weights"):
        models.load("gemma-2b-it")
    with pytest.raises(ValueError, match="dtype 'int8' is not supported"):
        models.load("smollm2-135m-instruct", dtype="int8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too; never touch the network
    with pytest.raises(ValueError, match="Could not download 'no-such-org/no-such-model'"):
        models.load("no-such-org/no-such-model")
    lm = models.load(fixture("llama_gqa_tied"))
    with pytest.raises(ValueError, match=r"int32 \[batch, time\]"):
        lm.logits(np.zeros((3,), np.int32))


@pytest.mark.parametrize("prefix", ["language_model.model.", "model.language_model."])  # transformers 4.x, 5.x
def test_a_multimodal_gemma3_checkpoint_loads_as_its_text_model(tmp_path, prefix):
    """google/gemma-3-4b-it and up are multimodal (model_type gemma3): the text config sits in
    text_config, the decoder's tensors under a language-model prefix, beside a vision tower we ignore."""
    from safetensors.numpy import load_file, save_file
    path = copy_fixture("gemma3_local_rope", tmp_path)
    text = json.loads(open(os.path.join(path, "config.json")).read())
    (tmp_path / "gemma3_local_rope" / "config.json").write_text(json.dumps(
        {"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"], "text_config": text,
         "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8}}))
    tensors = load_file(os.path.join(path, "model.safetensors"))
    renamed = {prefix + k[len("model."):]: v for k, v in tensors.items()}
    renamed[prefix.replace("language_model", "vision_tower") + "patch_embedding.weight"] = np.ones((8, 3), np.float32)
    renamed["multi_modal_projector.mm_input_projection_weight"] = np.ones((8, 64), np.float32)
    save_file(renamed, os.path.join(path, "model.safetensors"))
    ours, original = models.load(path), models.load(fixture("gemma3_local_rope"))
    assert ours.config.family == "gemma3_text"
    assert_same_lm(ours, original)


def test_fields_a_config_leaves_out_take_transformers_defaults(tmp_path):
    """Gemma 2 without its soft-caps or query scalar, Gemma 3 (4.x layout) without layer_types or RoPE
    bases, Mistral without sliding_window: what transformers' config classes would fill in."""
    def load_without(name, *fields, **extra):
        path = copy_fixture(name, tmp_path / str(len(os.listdir(tmp_path))))
        cfg = json.loads(open(os.path.join(path, "config.json")).read())
        for f in fields:
            cfg.pop(f, None)
        cfg.update(extra)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(cfg, f)
        return models.load_config(path)

    g2 = load_without("gemma2_softcap", "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar",
                      "sliding_window", "layer_types")
    assert (g2.attn_logit_softcapping, g2.final_logit_softcapping, g2.query_pre_attn_scalar) == (50.0, 30.0, 256)
    assert g2.sliding_window == 4096 and g2.layer_types == ("sliding_attention", "full_attention")
    g3 = load_without("gemma3_local_rope", "rope_parameters", "layer_types", num_hidden_layers=2,
                      sliding_window_pattern=2)
    assert (g3.rope_theta, g3.rope_local_theta, g3.rope_scaling) == (1e6, 1e4, None)
    assert g3.layer_types == ("sliding_attention", "full_attention")
    assert load_without("mistral_sliding", "sliding_window").sliding_window == 4096
    assert load_without("mistral_sliding", sliding_window=None).layer_types is None
