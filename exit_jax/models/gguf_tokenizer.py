"""Tokenizers embedded in GGUF metadata, rebuilt as real tokenizer objects.

llama.cpp stores either a byte-level BPE vocab (`tokenizer.ggml.model = "gpt2"`: tokens + merges +
the name of a pre-tokenizer, used by Llama 3, Qwen2, SmolLM2) or a sentencepiece vocab ("llama":
tokens + scores + piece types, used by Gemma and Llama 2). The first becomes a `tokenizers` BPE
tokenizer, the second a sentencepiece model proto, so that both tokenize exactly as the original.
"""
from __future__ import annotations

# GGUF token types, the same numbering as sentencepiece's piece types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes of llama.cpp pre-tokenizer names (the same patterns the HF tokenizer.json files use).
SPLIT_REGEX = {
    "llama-bpe": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                  r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "qwen2": (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+"),
}
SPLIT_REGEX["llama3"] = SPLIT_REGEX["llama-v3"] = SPLIT_REGEX["llama-bpe"]
SPLIT_REGEX["deepseek-r1-qwen"] = SPLIT_REGEX["qwen2"]


def backend_from_gguf(meta: dict) -> tuple:
    """-> (tokenizers.Tokenizer | SentencePieceProcessor, special token strings)."""
    kind = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError("This GGUF file carries no tokenizer (tokenizer.ggml.tokens is missing).")
    if kind == "gpt2":
        return _byte_level_bpe(meta)
    if kind == "llama":
        return _sentencepiece(meta)
    raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (expected 'gpt2' or 'llama'); "
                     "load the Hugging Face directory of this model instead.")


def _byte_level_bpe(meta: dict) -> tuple:
    import tokenizers
    from tokenizers import Regex, decoders, models, pre_tokenizers
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    backend = tokenizers.Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                              merges=merges, fuse_unk=False, byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                          use_regex=pre not in SPLIT_REGEX)
    if pre == "smollm":  # llama.cpp's "smollm" pre-tokenizer: single digits, then the GPT-2 regex.
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in SPLIT_REGEX:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(SPLIT_REGEX[pre]), behavior="isolated"), byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    # Control and user-defined tokens must never be split by BPE.
    special = [t for t, ty in zip(tokens, types) if ty in (CONTROL, USER_DEFINED)]
    backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                for t in special])
    return backend, special


def _sentencepiece(meta: dict) -> tuple:
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2 as pb
    tokens = list(meta["tokenizer.ggml.tokens"])
    scores = list(meta.get("tokenizer.ggml.scores", [0.0] * len(tokens)))
    types = list(meta.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)))
    proto = pb.ModelProto()
    # llama.cpp's "llama" vocab is sentencepiece BPE: merges follow the piece scores.
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = BYTE in types
    for key, field in (("unknown", "unk"), ("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        setattr(proto.trainer_spec, f"{field}_id", -1 if i is None else int(i))
        if i is not None:
            setattr(proto.trainer_spec, f"{field}_piece", tokens[int(i)])
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for token, score, kind in zip(tokens, scores, types):
        piece = proto.pieces.add()
        piece.piece, piece.score = token, float(score)
        piece.type = kind if kind in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL
    backend = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    return backend, [t for t, ty in zip(tokens, types) if ty == CONTROL]
