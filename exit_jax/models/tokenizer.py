"""One tokenizer interface over HF `tokenizer.json`, sentencepiece `.model` and GGUF vocabularies.

BOS policy: `encode(text)` adds the BOS token only when the model needs one (`add_bos`, from
`tokenizer_config.json` / GGUF `add_bos_token`; true for Llama 3 and Gemma, false for SmolLM2 and
Qwen) and the text does not already start with it — chat templates of those models render BOS
themselves, so a templated prompt never gets a second one. Special-token strings inside the text
(`<|im_start|>`, `<start_of_turn>`, ...) always map to their single ids, as HF's `apply_chat_template`
tokenization does.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import re
from typing import Any, Optional, Sequence

import jinja2
import jinja2.sandbox

from exit_jax.models.config import GEMMAS

# Chat templates used when a checkpoint ships none (written for this project, same rendered text as
# the official templates of each family).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}")
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role']"
    " + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}")

# End-of-turn / end-of-text tokens that stop generation whenever the vocab has them.
STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>",
               "<eos>", "</s>")


def default_chat_template(family: str, has_token) -> str:
    """Family fallback when neither tokenizer_config.json nor GGUF metadata carries a template."""
    if family in GEMMAS:
        return GEMMA_TEMPLATE
    if family == "llama" and has_token("<|start_header_id|>"):
        return LLAMA3_TEMPLATE
    return CHATML_TEMPLATE


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


@functools.lru_cache(maxsize=16)
def _compiled_template(source: str):
    """The chat template compiled once (compiling costs ~2 ms, more than rendering a conversation)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(
        x, ensure_ascii=False, indent=indent, sort_keys=False)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _strftime_now(fmt):
    return datetime.datetime.now().strftime(fmt)


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
    """Text <-> token ids, chat templates and stop ids. Build with `from_hf_dir` or `from_gguf_fields`."""
    backend: Any  # tokenizers.Tokenizer | sentencepiece.SentencePieceProcessor
    chat_template: str
    bos_token: Optional[str]
    eos_token: Optional[str]
    pad_token: Optional[str]
    add_bos: bool
    extra_eos_ids: tuple = ()  # from generation_config.json / GGUF metadata
    special_tokens: tuple = ()  # strings that map to one id each (used by the sentencepiece path)

    # ---- vocabulary -------------------------------------------------------------------------------
    @property
    def is_sentencepiece(self) -> bool:
        return not hasattr(self.backend, "encode_batch")

    def token_to_id(self, token: str) -> Optional[int]:
        if self.is_sentencepiece:
            i = self.backend.piece_to_id(token)
            return None if i == self.backend.unk_id() and token != self.backend.id_to_piece(i) else i
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str:
        return self.backend.id_to_piece(i) if self.is_sentencepiece else self.backend.id_to_token(i)

    @property
    def vocab_size(self) -> int:
        if self.is_sentencepiece:
            return self.backend.get_piece_size()
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> Optional[int]:
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    @property
    def eos_ids(self) -> tuple:
        ids = list(self.extra_eos_ids)
        if self.eos_token is not None and self.token_to_id(self.eos_token) is not None:
            ids.append(self.token_to_id(self.eos_token))
        # End-of-turn tokens that the chat template actually emits also stop generation.
        for tok in STOP_TOKENS:
            i = self.token_to_id(tok)
            if i is not None and tok in self.chat_template:
                ids.append(i)
        return tuple(sorted(set(ids)))

    @property
    def pad_id(self) -> int:
        if self.pad_token is not None and self.token_to_id(self.pad_token) is not None:
            return self.token_to_id(self.pad_token)
        return self.eos_ids[0] if self.eos_ids else 0

    # ---- encode / decode --------------------------------------------------------------------------
    def encode(self, text: str, add_bos: Optional[bool] = None) -> list:
        """Token ids of `text`. BOS only when the model needs it (see module docstring)."""
        if add_bos is None:
            add_bos = self.add_bos and not (self.bos_token and text.startswith(self.bos_token))
        if self.is_sentencepiece:
            ids = self._encode_sentencepiece(text)
        else:
            ids = self.backend.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return list(ids)

    def _encode_sentencepiece(self, text: str) -> list:
        # sentencepiece does not parse control tokens inside text, so split on them first.
        if not self.special_tokens:
            return self.backend.encode(text)
        pattern = "(" + "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len,
                                                                reverse=True)) + ")"
        ids = []
        for piece in re.split(pattern, text):
            if piece in self.special_tokens:
                ids.append(self.backend.piece_to_id(piece))
            elif piece:
                ids.extend(self.backend.encode(piece))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if self.is_sentencepiece:
            # sentencepiece drops control pieces when decoding; HF keeps them unless asked not to.
            out, run = [], []
            for i in ids:
                if self.backend.is_control(i):
                    out.append(self.backend.decode(run))
                    run = []
                    if not skip_special_tokens:
                        out.append(self.backend.id_to_piece(i))
                else:
                    run.append(i)
            return "".join(out) + self.backend.decode(run)
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                            **kwargs) -> str:
        """Render `messages` ([{"role", "content"}]) with the model's jinja2 chat template, as HF does."""
        template = _compiled_template(self.chat_template)
        return template.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                               pad_token=self.pad_token or "", **kwargs)

    # ---- saving -------------------------------------------------------------------------------------
    def save(self, out_dir: str) -> None:
        """Write HF tokenizer files (tokenizer.json or tokenizer.model, plus tokenizer_config.json)."""
        os.makedirs(out_dir, exist_ok=True)
        config = {
            "add_bos_token": self.add_bos, "add_eos_token": False,
            "bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
            "chat_template": self.chat_template, "clean_up_tokenization_spaces": False,
            "model_max_length": 1 << 20, "extra_eos_ids": list(self.extra_eos_ids),
        }
        if self.is_sentencepiece:
            with open(os.path.join(out_dir, "tokenizer.model"), "wb") as f:
                f.write(self.backend.serialized_model_proto())
            config["tokenizer_class"] = "GemmaTokenizer"
            config["additional_special_tokens"] = [t for t in self.special_tokens
                                                   if t not in (self.bos_token, self.eos_token,
                                                                self.pad_token)]
        else:
            self.backend.save(os.path.join(out_dir, "tokenizer.json"))
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_hf_dir(cls, path: str, family: str, eos_ids: Sequence[int] = ()) -> "Tokenizer":
        """Read tokenizer.json (preferred) or tokenizer.model, plus tokenizer_config.json, from `path`."""
        cfg_path = os.path.join(path, "tokenizer_config.json")
        cfg = {}
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                cfg = json.load(f)
        json_path, sp_path = os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer.model")
        special = set()
        if os.path.exists(json_path):
            import tokenizers
            backend = tokenizers.Tokenizer.from_file(json_path)
            special = {t.content for t in backend.get_added_tokens_decoder().values()}
        elif os.path.exists(sp_path):
            import sentencepiece
            backend = sentencepiece.SentencePieceProcessor(model_file=sp_path)
            # Control pieces (<bos>, <eos>, ...) are never produced from text by sentencepiece;
            # user-defined ones already are, and tokenizer_config.json may list more below.
            special = {backend.id_to_piece(i) for i in range(backend.get_piece_size())
                       if backend.is_control(i)}
        else:
            raise FileNotFoundError(
                f"No tokenizer in {path!r}: expected tokenizer.json or tokenizer.model.")
        for key in ("additional_special_tokens",):
            special.update(_token_str(t) for t in cfg.get(key) or [])
        template = cfg.get("chat_template")
        if isinstance(template, list):  # HF allows a list of named templates; use the default one.
            template = next((t["template"] for t in template if t.get("name") == "default"),
                            template[0]["template"])
        if not template and os.path.exists(os.path.join(path, "chat_template.jinja")):
            with open(os.path.join(path, "chat_template.jinja")) as f:
                template = f.read()
        bos, eos, pad = (_token_str(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token"))
        tok = cls(backend=backend, chat_template="", bos_token=bos, eos_token=eos, pad_token=pad,
                  add_bos=bool(cfg.get("add_bos_token", family in GEMMAS)),
                  extra_eos_ids=tuple(int(i) for i in (list(eos_ids) + cfg.get("extra_eos_ids", []))),
                  special_tokens=tuple(sorted(t for t in special if t)))
        if not template:
            template = default_chat_template(family, lambda t: tok.token_to_id(t) is not None)
        if family == "llama" and "add_bos_token" not in cfg and bos is not None:
            # Llama 3's tokenizer.json prepends BOS in its post-processor; keep that behaviour.
            add = "begin_of_text" in bos
            return dataclasses.replace(tok, chat_template=template, add_bos=add)
        return dataclasses.replace(tok, chat_template=template)

    @classmethod
    def from_gguf_fields(cls, meta: dict, family: str) -> "Tokenizer":
        """Rebuild the tokenizer stored in GGUF `tokenizer.ggml.*` metadata (see gguf_tokenizer.py)."""
        from exit_jax.models.gguf_tokenizer import backend_from_gguf
        backend, special = backend_from_gguf(meta)
        tokens = meta["tokenizer.ggml.tokens"]

        def tok_at(key):
            i = meta.get(key)
            return None if i is None or int(i) >= len(tokens) else tokens[int(i)]

        extra = [int(meta["tokenizer.ggml.eot_token_id"])] if "tokenizer.ggml.eot_token_id" in meta else []
        vocab = set(tokens)
        template = meta.get("tokenizer.chat_template") or default_chat_template(
            family, lambda t: t in vocab)
        return cls(backend=backend, chat_template=template,
                   bos_token=tok_at("tokenizer.ggml.bos_token_id"),
                   eos_token=tok_at("tokenizer.ggml.eos_token_id"),
                   pad_token=tok_at("tokenizer.ggml.padding_token_id"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                   extra_eos_ids=tuple(extra), special_tokens=tuple(special))


def _token_str(t) -> Optional[str]:
    """tokenizer_config.json stores special tokens either as strings or as AddedToken dicts."""
    if isinstance(t, dict):
        return t.get("content")
    return t

