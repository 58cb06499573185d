"""Logit and tokenizer parity with transformers, against fixtures made by
tests/fixtures/make_parity_fixtures.py (torch is never imported here)."""
import json
import os

import numpy as np
import pytest

from exit_jax import models

PARITY = os.path.join(os.path.dirname(__file__), "fixtures", "parity")
TINY = ["llama_gqa_tied", "llama_mha_untied_rope3", "qwen2_bias", "gemma_head_dim", "qwen3_qknorm",
        "llama_attention_bias", "llama_linear_rope", "qwen2_yarn"]
WINDOWED = ["mistral_sliding", "qwen2_sliding", "gemma2_softcap", "gemma3_local_rope"]  # 24-token rows, window 8
TINY += WINDOWED


@pytest.mark.parametrize("name", TINY)
def test_tiny_logits_match_transformers(name):
    path = os.path.join(PARITY, name)
    lm = models.load(path)
    tokens = np.load(os.path.join(path, "tokens.npy"))  # [2, 12]
    want = np.load(os.path.join(path, "logits.npy"))  # [2, 12, V]
    got = np.asarray(lm.logits(tokens))
    assert got.shape == want.shape and got.dtype == np.float32
    delta = float(np.abs(got - want).max())
    print(f"{name}: max |dlogits| = {delta:.2e}")
    assert delta <= 1e-4, delta


@pytest.mark.parametrize("name", ["qwen3_qknorm", "llama_attention_bias", "llama_linear_rope", "qwen2_yarn"]
                         + WINDOWED)
def test_tiny_greedy_decoding_through_the_kv_cache_matches_transformers(name):
    path = os.path.join(PARITY, name)
    lm = models.load(path)
    prompt = np.load(os.path.join(path, "tokens.npy"))[0].tolist()
    want = np.load(os.path.join(path, "greedy.npy")).tolist()  # transformers' generate, 32 tokens
    assert models.greedy_generate(lm, prompt, 32, stop_at_eos=False) == want


def test_tiny_configs_cover_the_family_switches():
    cfgs = {n: models.load(os.path.join(PARITY, n)).config for n in TINY}
    assert cfgs["llama_gqa_tied"].tie_embeddings and cfgs["llama_gqa_tied"].num_kv_heads == 2
    rope3 = cfgs["llama_mha_untied_rope3"]
    assert not rope3.tie_embeddings and rope3.num_kv_heads == rope3.num_heads
    assert rope3.rope_scaling == models.RopeScaling(8.0, 1.0, 4.0, 64) and rope3.rope_theta == 5e5
    assert cfgs["qwen2_bias"].qkv_bias and not cfgs["qwen2_bias"].o_bias
    qwen3 = cfgs["qwen3_qknorm"]
    assert qwen3.family == "qwen3" and qwen3.qk_norm and not qwen3.qkv_bias and qwen3.tie_embeddings
    assert cfgs["llama_attention_bias"].qkv_bias and cfgs["llama_attention_bias"].o_bias
    assert cfgs["llama_linear_rope"].rope_scaling == models.RopeScaling(factor=2.0, rope_type="linear")
    yarn = cfgs["qwen2_yarn"].rope_scaling
    assert (yarn.rope_type, yarn.factor, yarn.original_max_position_embeddings) == ("yarn", 4.0, 64)
    gemma = cfgs["gemma_head_dim"]
    assert gemma.family == "gemma" and gemma.head_dim * gemma.num_heads != gemma.hidden_size
    assert cfgs["mistral_sliding"].layer_types == ("sliding_attention",) * 2
    assert cfgs["qwen2_sliding"].layer_types == ("full_attention", "sliding_attention")
    gemma2 = cfgs["gemma2_softcap"]
    assert gemma2.sandwich_norms and (gemma2.attn_logit_softcapping, gemma2.final_logit_softcapping) == (2.0, 5.0)
    assert gemma2.layer_types == ("sliding_attention", "full_attention") and gemma2.query_pre_attn_scalar == 24
    gemma3 = cfgs["gemma3_local_rope"]
    assert gemma3.qk_norm and gemma3.sandwich_norms and gemma3.attn_logit_softcapping is None
    assert (gemma3.rope_theta, gemma3.rope_local_theta) == (1e6, 1e4) and gemma3.rope_scaling.rope_type == "linear"
    assert all(cfgs[n].sliding_window == 8 for n in WINDOWED)


@pytest.mark.parametrize("name", ["llama_gqa_tied", "llama_mha_untied_rope3", "qwen2_bias", "qwen3_qknorm"])
def test_tokenizer_matches_transformers(name):
    path = os.path.join(PARITY, name)
    tok = models.load(path).tokenizer
    with open(os.path.join(path, "tokenizer_reference.json")) as f:
        ref = json.load(f)
    for text, ids in zip(ref["strings"], ref["ids"]):
        assert tok.encode(text, add_bos=False) == ids
        assert tok.decode(ids) == text
    rendered = tok.apply_chat_template(ref["messages"])
    assert rendered == ref["rendered"]
    # The rendered Llama 3 prompt starts with BOS already: encode must not add a second one.
    assert tok.encode(rendered) == ref["rendered_ids"]


def test_sentencepiece_tokenizer_gemma():
    tok = models.load(os.path.join(PARITY, "gemma_head_dim")).tokenizer
    assert tok.is_sentencepiece and tok.add_bos and tok.bos_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "Hello, world!"}])
    assert text == "<bos><start_of_turn>user\nHello, world!<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(text)
    assert ids[0] == 2 and ids.count(2) == 1  # BOS from the template, not added twice
    assert tok.token_to_id("<start_of_turn>") in ids and tok.token_to_id("<end_of_turn>") in ids
    assert tok.decode(ids) == text
    assert tok.eos_ids == (1, tok.token_to_id("<end_of_turn>"))
    plain = tok.encode("Hello, world!")
    assert plain[0] == 2 and tok.decode(plain[1:]) == "Hello, world!"


# ---- SmolLM2-135M-Instruct, the embedded model --------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    with open(os.path.join(PARITY, "smollm2", "reference.json")) as f:
        ref = json.load(f)
    return models.load("smollm2-135m-instruct"), ref


@pytest.mark.slow  # ~10-20 s: a 30-layer forward pass plus 32 decode steps of a 135M model
def test_smollm2_logits_and_greedy_match_transformers(smollm2):
    lm, ref = smollm2
    want = np.load(os.path.join(PARITY, "smollm2", "logits.npy"))  # [P, V]
    logits = np.asarray(lm.logits(np.asarray([ref["prompt_ids"]], np.int32)))[0]
    delta = float(np.abs(logits[ref["positions"]] - want).max())
    print(f"smollm2: max |dlogits| = {delta:.2e}")
    assert delta <= 1e-3, delta
    greedy = models.greedy_generate(lm, ref["prompt_ids"], 32, stop_at_eos=False)
    assert greedy == ref["greedy_ids"]


def test_smollm2_tokenizer(smollm2):
    lm, ref = smollm2
    tok = lm.tokenizer
    messages = [{"role": "user", "content": "Write one sentence about the sea."}]
    prompt = tok.apply_chat_template(messages)
    assert prompt == ref["prompt"] == ref["hf_rendered"]  # default system prompt, as HF renders it
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tok.encode(prompt) == ref["prompt_ids"]
    for text, ids in zip(ref["strings"], ref["ids"]):
        assert tok.encode(text) == ids
    # SmolLM2 splits numbers into single digits (its tokenizer.json has a Digits pre-tokenizer).
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]
    assert tok.eos_ids == (tok.token_to_id("<|im_end|>"),) and tok.pad_id == 2
    assert tok.vocab_size == lm.config.vocab_size == 49152
    assert tok.bos_id == 1 and not tok.add_bos
    with_system = tok.apply_chat_template([{"role": "system", "content": "S"}] + messages, False)
    assert with_system == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n"
                           "Write one sentence about the sea.<|im_end|>\n")
    assert lm.generation_config["eos_token_id"] == [2]
