"""Sampler throughput vs Hugging Face transformers `generate` (torch CPU), same weights and prompts.

    python launch/bench_sampler.py [--new_tokens 64] [--batches 1,16,64] [--context 1536] [--json out.json]

Batch 1 is one prompt with one sample; larger batches are batch/8 prompts x G=8 samples. Rows never
stop early (no eos), so both sides produce exactly batch * new_tokens tokens. Prints tok/s of both,
their ratio, and our achieved FLOP/s as a fraction of this machine's fp32 matmul peak, measured in
the same run. --context N puts a system message of ~N tokens before every question, as MLE prompts
(task description and file previews) do: decoding then reads a long KV cache. Needs the `parity` extra
(torch, transformers). --json writes the ratios for the regression guard (tests/test_bench_guard.py).
"""
import argparse
import os
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_util import matmul_peak, write_json  # noqa: E402
from exit_jax import models, sampling  # noqa: E402

QUESTIONS = ["What is 12 times 7?", "Name three primary colors.", "Write a haiku about the sea.",
             "Explain what a prime number is.", "What is the capital of France?",
             "Give me a synonym for happy.", "How many legs does a spider have?",
             "Summarize Romeo and Juliet in one sentence."]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _threads_time(torch, threads, fn) -> float:
    torch.set_num_threads(threads)
    fn()
    return _timed(fn)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--context", type=int, default=0, help="system-message tokens before each question")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args()
    import torch
    import transformers

    lm = models.load("smollm2-135m-instruct")
    tok, n = lm.tokenizer, args.new_tokens
    system = " ".join(["Rows of train.csv follow: id, age, income, visits."] * (args.context // 12))
    prompts = [tok.encode(tok.apply_chat_template(([{"role": "system", "content": system}] if system else [])
                                                  + [{"role": "user", "content": q}]))
               for q in QUESTIONS]
    print(f"prompt tokens: {min(map(len, prompts))}-{max(map(len, prompts))}")
    with tempfile.TemporaryDirectory() as d:  # the very same (dequantized) weights for torch
        models.save_hf(lm, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    # torch's OpenMP threads slow down several-fold when other processes share the cores: give it
    # its faster setting (also the warm-up outside the timings, as our compile is).
    ids0 = torch.tensor([prompts[0]] * 4)
    warm = lambda: hf.generate(input_ids=ids0, attention_mask=torch.ones_like(ids0),  # noqa
                               max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_id)
    with torch.inference_mode():
        best = min((_threads_time(torch, t, warm), t) for t in sorted({1, os.cpu_count()}))[1]
    torch.set_num_threads(best)
    print(f"devices={jax.devices()[0].platform} torch_threads={torch.get_num_threads()}")
    flops_per_token = 2 * lm.config.num_params()  # matmul FLOPs per processed token (head included)
    results = []
    for batch in [int(b) for b in args.batches.split(",")]:
        g = 1 if batch == 1 else 8
        group = prompts[:batch // g]
        sampler = sampling.Sampler(lm.config, num_samples=g, max_new_tokens=n, eos_ids=(),
                                   pad_id=tok.pad_id)
        sampler(lm.params, group, temperature=1.0)  # compile (greedy and sampling share it)
        outs = []
        rows = [p for p in group for _ in range(g)]  # torch gets each prompt G times, left-padded
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_id] * (width - len(r)) + r for r in rows])
        attn = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        for mode, temp in (("greedy", 0.0), ("sample", 1.0)):
            # Best of two, with the peak measured right beside it: the cores are shared and noisy.
            peak = matmul_peak()
            ours = min(_timed(lambda: outs.append(sampler(lm.params, group, temperature=temp,
                                                          seed=s))) for s in range(2))
            assert all(int(o.lengths.sum()) == batch * n for o in outs)
            knobs = (dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if temp
                     else dict(do_sample=False))
            gen = lambda: hf.generate(input_ids=ids, attention_mask=attn, max_new_tokens=n,  # noqa
                                      min_new_tokens=n, pad_token_id=tok.pad_id, **knobs)
            with torch.inference_mode():
                theirs = _timed(gen)
            ours_tps, theirs_tps = batch * n / ours, batch * n / theirs
            processed = batch * n + sum(map(len, group))  # prompts are prefilled once per group
            frac = processed * flops_per_token / ours / peak
            print(f"batch={batch:3d} ({len(group)}x{g}) {mode:6s} ours={ours_tps:8.1f} tok/s  "
                  f"transformers={theirs_tps:8.1f} tok/s  ratio={ours_tps / theirs_tps:5.2f}x  "
                  f"ours={frac * 100:5.1f}% of matmul peak ({peak / 1e9:.0f} GFLOP/s)")
            results.append(dict(batch=batch, mode=mode, ours_tok_s=ours_tps, transformers_tok_s=theirs_tps,
                                ratio=ours_tps / theirs_tps, peak_frac=frac, peak_gflops=peak / 1e9))
    write_json(args.json, {"bench": "sampler", "new_tokens": n, "context": args.context, "results": results,
                           "versions": {"jax": jax.__version__, "torch": torch.__version__,
                                        "transformers": transformers.__version__}})


if __name__ == "__main__":
    main()
