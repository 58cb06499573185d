"""GRPO update tokens/s: exit_jax's learner vs a plain PyTorch GRPO step on the same Llama, same batch.

    python launch/bench_learner.py [--models tiny,smollm2-135m-instruct] [--prompts 8 --samples 8 --length 128]

Each side runs in its own subprocess, so ru_maxrss is that side's peak memory. FLOPs: 6N per trained
token + 2N per reference-forward token (attention ignored); peak: a 2048^2 float32 jnp matmul.
"""
import argparse, copy, json, resource, subprocess, sys, time  # noqa: E401

import numpy as np


def make_batch(vocab, b, length, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.arange(length)[None] >= rng.integers(0, length // 8, b)[:, None]  # left-padded prompt
    return dict(tokens=rng.integers(1, vocab, (b, length)).astype(np.int32), input_mask=mask,
                completion_mask=mask & (np.arange(length)[None] >= length // 4),
                old_logprobs=(-np.log(vocab) + 0.3 * rng.standard_normal((b, length))).astype(np.float32),
                advantages=rng.standard_normal(b).astype(np.float32))


def load_params(name):  # the embedded checkpoint when it loads; else random weights (same FLOPs)
    from exit_jax import models
    from exit_jax.models import transformer
    try:
        return models.load(name).params
    except Exception:  # noqa: BLE001
        return transformer.init_params(models.preset(name), 0)


def jax_step(mc, params, batch, a):
    import jax
    from exit_jax.rl import learner, parallel
    # Paper math settings (beta 0.001, k3, clip 0.2); no entropy metric: torch does not compute it.
    cfg = learner.LearnerConfig(kl_beta=0.001, micro_batch_size=a.micro, compute_entropy=False)
    state, b, t = learner.init_state(params, cfg), parallel.place_batch(batch, cfg), time.perf_counter()
    step = jax.jit(lambda s, x: learner.update_step(s, x, mc, cfg), donate_argnums=0)
    step, a.compile_s = step.lower(state, b).compile(), time.perf_counter() - t
    held = [state]  # the compiled step donates its state argument

    def run():
        held[0], metrics = step(held[0], b)
        return None, float(metrics["loss"])
    return run


def torch_step(mc, params, batch, a):
    import torch, transformers  # noqa: E401
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.num_layers, num_attention_heads=mc.num_heads, head_dim=mc.head_dim,
        num_key_value_heads=mc.num_kv_heads, rope_theta=mc.rope_theta, rms_norm_eps=mc.rms_norm_eps,
        tie_word_embeddings=mc.tie_embeddings, attn_implementation="sdpa"))
    sd = {"model.embed_tokens.weight": params["embed"]["embedding"],
          "model.norm.weight": params["final_norm"]["scale"]}
    for i in range(mc.num_layers):  # same weights as jax: the first-step losses must agree
        p, pre = params[f"layers_{i}"], f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = p["attn_norm"]["scale"]
        sd[pre + "post_attention_layernorm.weight"] = p["mlp_norm"]["scale"]
        sd.update({pre + f"self_attn.{n}_proj.weight": p["attn"][n]["kernel"].T for n in "qkvo"})
        sd.update({pre + f"mlp.{n}_proj.weight": p["mlp"][n]["kernel"].T for n in ("gate", "up", "down")})
    model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in sd.items()}, strict=False)
    ref, opt = copy.deepcopy(model).eval(), torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0)
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    ids, am, cm = t["tokens"].long(), t["input_mask"].long(), t["completion_mask"].float()[:, 1:]
    pos = (am.cumsum(-1) - 1).clamp(min=0)

    def logprobs(m, s):
        logits = m(input_ids=ids[s], attention_mask=am[s], position_ids=pos[s]).logits.float()
        return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[s, 1:, None])[..., 0]

    def step():  # paper Eq. 4: clip 0.2, k3 KL x 0.001, seq-mean-token-mean; AdamW, grad clip 1.0
        opt.zero_grad()
        total = 0.0
        for j in range(0, len(ids), a.micro):
            s = slice(j, j + a.micro)
            lp = logprobs(model, s)
            with torch.no_grad():
                d = logprobs(ref, s) - lp
            ratio, adv = torch.exp(lp - t["old_logprobs"][s, 1:]), t["advantages"][s, None]
            tok = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv) + 0.001 * (d.exp() - 1 - d)
            loss = ((tok * cm[s]).sum(-1) / cm[s].sum(-1).clamp(min=1)).sum() / len(ids)
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return None, total
    a.compile_s, a.threads = 0.0, torch.get_num_threads()
    return step


def matmul_flops():  # measured right before the timed steps, under the same machine load
    import jax, jax.numpy as jnp  # noqa: E401
    mm, x = jax.jit(lambda m: m @ m), jnp.ones((4096, 4096), jnp.float32)
    mm(x).block_until_ready()
    t = time.perf_counter()
    [mm(x).block_until_ready() for _ in range(3)]
    return 3 * 2 * 4096 ** 3 / (time.perf_counter() - t)


def child(side, name, a):
    from exit_jax.models.config import preset
    mc = preset(name)
    step = (jax_step if side == "jax" else torch_step)(
        mc, load_params(name), make_batch(mc.vocab_size, a.prompts * a.samples, a.length), a)
    times, losses, peak = [], [], matmul_flops() if side == "jax" else 0.0
    for _ in range(a.steps):
        t = time.perf_counter()
        losses.append(step()[1])
        times.append(time.perf_counter() - t)
    print("RESULT " + json.dumps(dict(seconds=min(times), loss=losses[0], n=mc.num_params(),
                                      compile_s=a.compile_s, peak=peak, threads=getattr(a, "threads", 0),
                                      rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)))


def main():
    ap = argparse.ArgumentParser()
    for k, v in dict(prompts=8, samples=8, length=128, micro=8, steps=0).items():
        ap.add_argument(f"--{k}", type=int, default=v)  # steps 0: 5 timed steps on tiny, else 1
    ap.add_argument("--models", default="tiny,smollm2-135m-instruct")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "MODEL"))
    a = ap.parse_args()
    if a.child:
        return child(*a.child, a)
    for name in a.models.split(","):
        res, tokens = {}, a.prompts * a.samples * a.length
        for side in ("jax", "torch"):
            args = [f"--{k}={getattr(a, k)}" for k in ("prompts", "samples", "length", "micro")]
            steps = str(a.steps or (5 if name == "tiny" else 1))
            out = subprocess.run([sys.executable, __file__, "--child", side, name, "--steps", steps, *args],
                                 capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            res[side] = json.loads(line[0][7:]) if line else sys.exit(f"{side} {name}:\n{out.stderr[-3000:]}")
        j, t = res["jax"], res["torch"]
        frac = 8 * j["n"] * tokens / j["seconds"] / j["peak"]
        print(f"{name}: {tokens} tok/step, micro-batch {a.micro} | jax {tokens / j['seconds']:.0f} tok/s, "
              f"{frac:.0%} of {j['peak'] / 1e9:.0f} GFLOP/s matmul peak, compile {j['compile_s']:.0f}s, "
              f"RSS {j['rss_gb']:.2f} GB | torch {tokens / t['seconds']:.0f} tok/s ({t['threads']} threads), "
              f"RSS {t['rss_gb']:.2f} GB | jax/torch {t['seconds'] / j['seconds']:.2f}x | first loss "
              f"jax {j['loss']:.6f} torch {t['loss']:.6f}")


if __name__ == "__main__":
    main()
