"""GGUF import: tiny fixtures written the way llama.cpp's converter writes them must load back to the
same model (q/k rows permuted for llama, 1 folded into nothing here, quantized blocks dequantized)."""
import json
import os

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file

from exit_jax import models

PARITY = os.path.join(os.path.dirname(__file__), "fixtures", "parity")
GGUF_NAMES = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
              "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
              "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
              "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.weight": "attn_output.weight",
              "post_attention_layernorm.weight": "ffn_norm.weight",
              "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight", "self_attn.o_proj.bias": "attn_output.bias",
              "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight"}


def llama_cpp_permute(w, n_head):
    # llama.cpp's convert script: rotate_half rows -> interleaved pairs per head.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{GGUF_NAMES[rest]}"


def rope_freqs(cfg):
    """llama.cpp's rope_freqs.weight for HF llama3 rope scaling: per-frequency divisors."""
    rp = cfg["rope_parameters"]
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    inv = 1.0 / rp["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    wavelen = 2 * np.pi / inv
    low, high = (rp["original_max_position_embeddings"] / rp[k] for k in ("low_freq_factor",
                                                                          "high_freq_factor"))
    smooth = (rp["original_max_position_embeddings"] / wavelen - rp["low_freq_factor"]) / (
        rp["high_freq_factor"] - rp["low_freq_factor"])
    return np.where(wavelen < high, 1.0, np.where(
        wavelen > low, rp["factor"], 1 / ((1 - smooth) / rp["factor"] + smooth))).astype(np.float32)


def write_bpe_vocab(w, src, cfg, tok_cfg):
    tok = json.load(open(os.path.join(src, "tokenizer.json")))
    w.add_tokenizer_model("gpt2")
    if cfg["model_type"] in ("qwen2", "qwen3"):  # its tokenizer.json splits with Qwen2's regex first
        w.add_tokenizer_pre("qwen2")
    vocab = sorted(tok["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = {t["id"]: t["content"] for t in tok["added_tokens"]}
    tokens = [added.get(i, t) for t, i in vocab]
    w.add_token_list(tokens)
    w.add_token_types([3 if i in added else 1 for i in range(len(tokens))])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_eos_token_id(tokens.index(tok_cfg["eos_token"]))
    if tok_cfg.get("bos_token"):
        w.add_bos_token_id(tokens.index(tok_cfg["bos_token"]))
        w.add_add_bos_token(cfg["model_type"] == "llama")
    w.add_pad_token_id(tokens.index(tok_cfg["pad_token"]))
    w.add_chat_template(open(os.path.join(src, "chat_template.jinja")).read())


def write_sentencepiece_vocab(w, src, tok_cfg):
    # As llama.cpp's converter does for Gemma: pieces, scores and piece types from the proto.
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(open(os.path.join(src, "tokenizer.model"), "rb").read())
    tokens = [p.piece for p in proto.pieces]
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types([p.type for p in proto.pieces])
    w.add_add_space_prefix(proto.normalizer_spec.add_dummy_prefix)
    w.add_bos_token_id(tokens.index(tok_cfg["bos_token"]))
    w.add_eos_token_id(tokens.index(tok_cfg["eos_token"]))
    w.add_pad_token_id(tokens.index(tok_cfg["pad_token"]))
    w.add_unk_token_id(tokens.index("<unk>"))
    w.add_add_bos_token(True)
    w.add_chat_template(tok_cfg["chat_template"])


def write_gguf(fixture, path, qtype=gguf.GGMLQuantizationType.F32, odd_tensor=None, arch=None):
    src = os.path.join(PARITY, fixture)
    cfg = json.load(open(os.path.join(src, "config.json")))
    tok_cfg = json.load(open(os.path.join(src, "tokenizer_config.json")))
    arch_name = arch or cfg["model_type"]
    w = gguf.GGUFWriter(str(path), arch_name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])
    if cfg["model_type"] == "gemma":
        write_sentencepiece_vocab(w, src, tok_cfg)
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    else:
        write_bpe_vocab(w, src, cfg, tok_cfg)
        if cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]) * cfg["num_attention_heads"] != \
                cfg["hidden_size"]:  # llama.cpp records a head size that hidden / heads does not give
            w.add_key_length(cfg["head_dim"])
            w.add_value_length(cfg["head_dim"])
    w.add_sampling_temp(0.7)
    rope = cfg.get("rope_parameters") or {}
    if rope.get("rope_type") in ("linear", "yarn"):
        w.add_rope_scaling_type(gguf.RopeScalingType(rope["rope_type"]))
        w.add_rope_scaling_factor(rope["factor"])
        if rope["rope_type"] == "yarn":
            w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    if rope.get("rope_type") == "llama3":
        w.add_rope_scaling_orig_ctx_len(cfg["rope_parameters"]["original_max_position_embeddings"])
        w.add_tensor("rope_freqs.weight", rope_freqs(cfg))
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    for name, t in load_file(os.path.join(src, "model.safetensors")).items():
        if cfg["model_type"] == "llama" and "q_proj" in name:
            t = llama_cpp_permute(t, heads)
        elif cfg["model_type"] == "llama" and "k_proj" in name:
            t = llama_cpp_permute(t, kv_heads)
        if cfg["model_type"] == "gemma" and name.endswith("norm.weight"):
            t = t + 1.0  # llama.cpp folds Gemma's (1 + w) into the stored norm weights
        if name == odd_tensor:
            w.add_tensor(gguf_name(name), t.astype(np.float64))
        elif t.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            w.add_tensor(gguf_name(name), gguf.quantize(t, qtype), raw_dtype=qtype)
        else:  # llama.cpp keeps 1-D tensors (norms, biases) in F32
            w.add_tensor(gguf_name(name), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


@pytest.mark.parametrize("fixture, qtype", [
    ("llama_gqa_tied", gguf.GGMLQuantizationType.F32),
    ("llama_mha_untied_rope3", gguf.GGMLQuantizationType.F32),
    ("qwen2_bias", gguf.GGMLQuantizationType.F32),
    ("gemma_head_dim", gguf.GGMLQuantizationType.F32),
    ("qwen3_qknorm", gguf.GGMLQuantizationType.F32),
    ("llama_attention_bias", gguf.GGMLQuantizationType.F32),
    ("llama_linear_rope", gguf.GGMLQuantizationType.F32),
    ("qwen2_yarn", gguf.GGMLQuantizationType.F32),
    ("qwen2_bias", gguf.GGMLQuantizationType.BF16),
    ("llama_gqa_tied", gguf.GGMLQuantizationType.F16),
    ("llama_gqa_tied", gguf.GGMLQuantizationType.Q8_0),
    ("llama_gqa_tied", gguf.GGMLQuantizationType.Q4_0),
    ("llama_gqa_tied", gguf.GGMLQuantizationType.Q4_1),
])
def test_gguf_loads_like_the_hf_directory(tmp_path, fixture, qtype):
    from exit_jax.models import hf
    src = os.path.join(PARITY, fixture)
    ref = models.load(src)
    lm = models.load(write_gguf(fixture, tmp_path / "m.gguf", qtype))
    assert lm.config.family == ref.config.family and lm.config.tie_embeddings == ref.config.tie_embeddings
    assert (lm.config.num_kv_heads, lm.config.head_dim) == (ref.config.num_kv_heads, ref.config.head_dim)
    assert lm.config.rope_scaling == ref.config.rope_scaling
    # Reference: the HF weights after the same quantization round trip (matrices only, as written).
    rounded = ((name, gguf.dequantize(gguf.quantize(t, qtype), qtype).reshape(t.shape)
                if t.ndim == 2 else t) for name, t in load_file(os.path.join(src, "model.safetensors")).items())
    ref_params = hf.params_from_hf(rounded, ref.config, np.float32, "reference")
    tokens = np.load(os.path.join(src, "tokens.npy"))
    want = np.asarray(models.LM(ref.config, ref_params, ref.tokenizer).logits(tokens))
    delta = float(np.abs(np.asarray(lm.logits(tokens)) - want).max())
    print(f"{fixture} {qtype.name}: max |dlogits| = {delta:.2e}")
    assert delta <= 1e-5, (qtype.name, delta)
    # The embedded tokenizer (byte-level BPE, or sentencepiece for Gemma) is the same tokenizer.
    messages = [{"role": "user", "content": "Hello, world!  def add(a, b)\n\tÜnïcödé ✓"}]
    text = ref.tokenizer.apply_chat_template(messages)
    assert lm.tokenizer.apply_chat_template(messages) == text
    assert lm.tokenizer.is_sentencepiece == ref.tokenizer.is_sentencepiece
    assert lm.tokenizer.encode(text) == ref.tokenizer.encode(text)
    assert lm.tokenizer.encode(" spaced  text") == ref.tokenizer.encode(" spaced  text")
    assert lm.tokenizer.decode(lm.tokenizer.encode(text)) == text
    assert lm.tokenizer.eos_ids == ref.tokenizer.eos_ids
    assert lm.generation_config["temperature"] == pytest.approx(0.7)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    from exit_jax.models.gguf_io import unpermute_qk
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(w, 8), 8), w)
    assert not np.array_equal(llama_cpp_permute(w, 8), w)


def test_gguf_errors(tmp_path):
    odd = write_gguf("llama_gqa_tied", tmp_path / "odd.gguf",
                     odd_tensor="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError, match="tensor 'blk.1.ffn_up.weight' has type F64, which we cannot "
                                         "dequantize"):
        models.load(odd)
    arch = write_gguf("llama_gqa_tied", tmp_path / "arch.gguf", arch="falcon")
    with pytest.raises(ValueError, match="general.architecture='falcon'"):
        models.load(arch)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        models.load(str(tmp_path / "junk.gguf"))
