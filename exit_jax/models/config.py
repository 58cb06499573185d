"""Model configurations: one frozen dataclass covering the llama, mistral, qwen2, qwen3, gemma, gemma2 and
gemma3_text families, plus presets.

Each field mirrors the Hugging Face `config.json` field it comes from, so that the decoder computes
exactly what `transformers` computes for that family.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
GEMMAS = ("gemma", "gemma2", "gemma3_text")
LAYER_TYPES = ("full_attention", "sliding_attention")
FULL_WINDOW = 1 << 30  # the window of a full-attention layer: every earlier token


ROPE_TYPES = ("llama3", "linear", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE scaling as HF `rope_scaling` / `rope_parameters` define it: "llama3" (Llama 3.x's frequency-
    dependent scaling: factor, low/high_freq_factor, original context), "linear" (every frequency divided
    by factor) or "yarn" (NTK-by-parts between beta_fast and beta_slow rotations of the original context,
    and cos/sin scaled by attention_factor, by default 0.1 ln(factor) + 1, or the mscale ratio)."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: Optional[float] = None
    mscale: float = 0.0
    mscale_all_dim: float = 0.0
    truncate: bool = True

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"RopeScaling.rope_type={self.rope_type!r}; supported: {ROPE_TYPES}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str  # "llama" | "qwen2" | "qwen3" | "gemma"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    max_position_embeddings: int = 8192
    # HF `attention_bias` (llama, qwen3): biases on the q/k/v and output projections.
    attention_bias: bool = False
    # Sliding-window attention (Mistral, Gemma 2/3, Qwen with use_sliding_window): a layer whose
    # `layer_types` entry is "sliding_attention" attends to the `sliding_window` most recent tokens (its
    # own included); None: every layer attends to all earlier tokens.
    sliding_window: Optional[int] = None
    layer_types: Optional[tuple] = None
    attn_logit_softcapping: Optional[float] = None  # Gemma 2: scores -> cap * tanh(scores / cap)
    final_logit_softcapping: Optional[float] = None  # Gemma 2: the same on the logits
    query_pre_attn_scalar: Optional[float] = None  # Gemma 2/3: queries times its -1/2 (else head_dim's)
    rope_local_theta: Optional[float] = None  # Gemma 3: the sliding layers' RoPE base, without scaling
    name: str = ""

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown model family {self.family!r}; expected one of {FAMILIES}.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads} (GQA).")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ValueError(f"layer_types={list(self.layer_types)} must give one of {LAYER_TYPES} for "
                                 f"each of the {self.num_layers} layers.")
            if "sliding_attention" in self.layer_types and not (self.sliding_window or 0) > 0:
                raise ValueError(f"layer_types has sliding layers but sliding_window={self.sliding_window}.")

    # Family switches, derived so that a config cannot contradict its family.
    @property
    def qkv_bias(self) -> bool:  # Qwen2 has biases on q/k/v projections only.
        return self.family == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def qk_norm(self) -> bool:  # Qwen3 and Gemma 3 RMS-normalise each head's query and key before RoPE.
        return self.family in ("qwen3", "gemma3_text")

    @property
    def norm_offset(self) -> float:  # Gemma's RMSNorm multiplies by (1 + w).
        return 1.0 if self.family in GEMMAS else 0.0

    @property
    def embed_scale(self) -> bool:  # Gemma scales embeddings by sqrt(hidden_size).
        return self.family in GEMMAS

    @property
    def activation(self) -> str:  # Gemma: GeGLU with tanh-approximate GELU; others: SwiGLU.
        return "gelu_tanh" if self.family in GEMMAS else "silu"

    @property
    def sandwich_norms(self) -> bool:  # Gemma 2/3 also normalise each sub-layer's output.
        return self.family in ("gemma2", "gemma3_text")

    def window(self, layer: int) -> int:
        """How many of the most recent tokens (its own included) layer `layer` attends to."""
        sliding = self.layer_types is not None and self.layer_types[layer] == "sliding_attention"
        return self.sliding_window if sliding else FULL_WINDOW

    def min_window(self) -> int:
        return min(self.window(i) for i in range(self.num_layers))

    def num_params(self) -> int:
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = (d * q + 2 * d * kv + q * d + (q + 2 * kv if self.qkv_bias else 0) + (d if self.o_bias else 0)
                + (2 * self.head_dim if self.qk_norm else 0))
        layer = attn + 3 * d * f + (4 if self.sandwich_norms else 2) * d
        return self.num_layers * layer + v * d * (1 if self.tie_embeddings else 2) + d

    def matmul_params(self) -> tuple[int, int]:
        """(decoder, vocabulary head) parameters that a token's forward multiplies by: the input
        embedding is a lookup, so a tied embedding counts once, as the head."""
        head = self.vocab_size * self.hidden_size
        return self.num_params() - head * (1 if self.tie_embeddings else 2), head


PRESETS = {
    "tiny": ModelConfig(
        family="llama", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        head_dim=16, intermediate_size=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        # A random test model: the context is declared long enough for BFCL prompts with their docs.
        tie_embeddings=True, max_position_embeddings=16384, name="tiny"),
    "smollm2-135m-instruct": ModelConfig(
        family="llama", vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
        head_dim=64, intermediate_size=1536, rope_theta=100000.0, rms_norm_eps=1e-5,
        tie_embeddings=True, max_position_embeddings=8192, name="smollm2-135m-instruct"),
    "llama-3.2-3b-instruct": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=3072, num_layers=28, num_heads=24,
        num_kv_heads=8, head_dim=128, intermediate_size=8192, rope_theta=500000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5, tie_embeddings=True,
        max_position_embeddings=131072, name="llama-3.2-3b-instruct"),
    "llama-3.1-8b-instruct": ModelConfig(
        family="llama", vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, rope_theta=500000.0,
        rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192), rms_norm_eps=1e-5, tie_embeddings=False,
        max_position_embeddings=131072, name="llama-3.1-8b-instruct"),
    "qwen2.5-7b-instruct": ModelConfig(
        family="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, intermediate_size=18944, rope_theta=1000000.0,
        rms_norm_eps=1e-6, tie_embeddings=False, max_position_embeddings=32768,
        name="qwen2.5-7b-instruct"),
    "deepseek-r1-distill-qwen-7b": ModelConfig(
        family="qwen2", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
        num_kv_heads=4, head_dim=128, intermediate_size=18944, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_embeddings=False, max_position_embeddings=131072,
        name="deepseek-r1-distill-qwen-7b"),
    # Qwen3 dense models (Qwen/Qwen3-*): q/k norms, no biases, head_dim 128 whatever the width.
    **{f"qwen3-{size}": ModelConfig(
        family="qwen3", vocab_size=151936, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=8, head_dim=128, intermediate_size=ffn, rope_theta=1000000.0, rms_norm_eps=1e-6,
        tie_embeddings=tied, max_position_embeddings=40960, name=f"qwen3-{size}")
       for size, hidden, layers, heads, ffn, tied in [("0.6b", 1024, 28, 16, 3072, True),
                                                      ("1.7b", 2048, 28, 16, 6144, True),
                                                      ("4b", 2560, 36, 32, 9728, True),
                                                      ("8b", 4096, 36, 32, 12288, False)]},
    # Gemma 3 text models (google/gemma-3-*-it; the 4B and 12B are the text part of multimodal
    # checkpoints): five sliding layers (RoPE base 10k) to one global (1M, linear scaling x8 from 4B up),
    # q/k norms, sandwich norms, queries scaled by 256^-1/2.
    **{f"gemma-3-{size}-it": ModelConfig(
        family="gemma3_text", vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
        num_kv_heads=kv, head_dim=256, intermediate_size=ffn, rope_theta=1000000.0,
        rope_scaling=RopeScaling(factor=8.0, rope_type="linear") if scaled else None, rms_norm_eps=1e-6,
        tie_embeddings=True, max_position_embeddings=context, sliding_window=window,
        layer_types=tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)),
        query_pre_attn_scalar=256, rope_local_theta=10000.0, name=f"gemma-3-{size}-it")
       for size, vocab, hidden, layers, heads, kv, ffn, window, scaled, context in [
           ("1b", 262144, 1152, 26, 4, 1, 6912, 512, False, 32768),
           ("4b", 262208, 2560, 34, 8, 4, 10240, 1024, True, 131072),
           ("12b", 262208, 3840, 48, 16, 8, 15360, 1024, True, 131072)]},
    "gemma-2b-it": ModelConfig(
        family="gemma", vocab_size=256000, hidden_size=2048, num_layers=18, num_heads=8,
        num_kv_heads=1, head_dim=256, intermediate_size=16384, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_embeddings=True, max_position_embeddings=8192, name="gemma-2b-it"),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown model preset {name!r}; known presets: {sorted(PRESETS)}.") from None
