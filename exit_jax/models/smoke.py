"""A tiny randomly-initialised LM with a sentencepiece tokenizer trained on the task corpus.

Used by smoke runs and tests: it exercises every code path of a real model (chat template, stop ids,
sampling, GRPO updates) at a few seconds per training iteration on a CPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from typing import Sequence

import jax.numpy as jnp

from exit_jax.models import transformer
from exit_jax.models.config import ModelConfig, preset
from exit_jax.models.lm import LM
from exit_jax.models.tokenizer import CHATML_TEMPLATE, Tokenizer

SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>")


def train_sentencepiece(corpus: Sequence[str], vocab_size: int, path: str, split_digits: bool = False) -> str:
    """Trains a BPE sentencepiece model on `corpus` (deterministic: one thread, whole corpus).

    `split_digits` makes every digit its own piece, so a number has the same tokens wherever it appears
    (`$118$`, `118,`): small models trained from scratch then learn to copy and add numbers.
    """
    import sentencepiece as spm
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for text in corpus for line in text.splitlines() if line.strip()]),
        model_writer=model, vocab_size=vocab_size, model_type="bpe", character_coverage=1.0,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, split_digits=split_digits,
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=2, user_defined_symbols=list(SPECIAL_TOKENS),
        minloglevel=2)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, path)  # atomic: concurrent test workers never read a half-written model
    return path


def smoke_lm(corpus: Sequence[str], cache_dir: str, vocab_size: int = 512, seed: int = 0,
             config: ModelConfig | None = None, split_digits: bool = False) -> LM:
    """The smoke model. The tokenizer is cached in `cache_dir` under a hash of its corpus (and options)."""
    import sentencepiece as spm
    digest = hashlib.sha256("\x00".join(corpus).encode()).hexdigest()[:16]
    suffix = f"_v{vocab_size}_digits" if split_digits else ""
    path = train_sentencepiece(corpus, vocab_size, split_digits=split_digits,
                               path=os.path.join(cache_dir, f"smoke_sp_{digest}{suffix}.model"))
    processor = spm.SentencePieceProcessor(model_file=path)
    tokenizer = Tokenizer(backend=processor, chat_template=CHATML_TEMPLATE, bos_token=None,
                          eos_token="<|im_end|>", pad_token="<pad>", add_bos=False,
                          special_tokens=SPECIAL_TOKENS)
    base = config or preset("tiny")
    config = dataclasses.replace(base, vocab_size=processor.get_piece_size(), name="smoke")
    params = transformer.init_params(config, seed=seed)
    return LM(config=config, params=params, tokenizer=tokenizer, dtype=jnp.float32,
              generation_config={"temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                 "eos_token_id": list(tokenizer.eos_ids),
                                 "pad_token_id": tokenizer.pad_id})
