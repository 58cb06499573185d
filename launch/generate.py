"""Generation demo: load a model (default: the embedded SmolLM2-135M-Instruct), chat-template a prompt,
greedy-decode with a KV cache, print the text.

    python launch/generate.py
    python launch/generate.py --model /path/to/hf_dir --prompt "Why is the sky blue?" --max_new_tokens 64
"""
import argparse
import time

from exit_jax import models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="preset name, HF dir, .gguf file, exit_jax orbax dir or hub id")
    parser.add_argument("--prompt", default="Explain in two sentences why the sky is blue.")
    parser.add_argument("--max_new_tokens", type=int, default=48)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()

    start = time.perf_counter()
    try:
        lm = models.load(args.model, dtype=args.dtype)
    except (ValueError, FileNotFoundError) as e:  # a bad path, file or dtype: one sentence, no traceback
        raise SystemExit(f"error: {str(e).strip().splitlines()[0]}") from None
    loaded = time.perf_counter()
    prompt = lm.tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    ids = lm.tokenizer.encode(prompt)
    new = models.greedy_generate(lm, ids, args.max_new_tokens)
    done = time.perf_counter()

    print(prompt + lm.tokenizer.decode(new))
    print(f"\n[{lm.config.name or args.model}: {lm.config.num_params() / 1e6:.0f}M params, "
          f"loaded in {loaded - start:.1f}s; {len(ids)} prompt + {len(new)} new tokens in "
          f"{done - loaded:.1f}s]")


if __name__ == "__main__":
    main()
