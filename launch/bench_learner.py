"""GRPO update throughput: exit_jax's learner vs a plain PyTorch GRPO step on the same Llama, same batch.

    python launch/bench_learner.py [--models tiny,smollm2-135m-instruct] [--prompts 8 --samples 8 --length 128]

Each side runs in its own subprocess (so ru_maxrss is that side's peak memory). FLOPs: 6N per trained
token + 2N per reference-forward token (attention ignored); peak = a large float32 jnp matmul.
"""
import argparse, json, os, resource, subprocess, sys, time  # noqa: E401

import numpy as np


def make_batch(vocab, b, length, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, (b, length)).astype(np.int32)
    pad = rng.integers(0, length // 8, b)  # left padding of the prompt
    input_mask = np.arange(length)[None] >= pad[:, None]
    completion = input_mask & (np.arange(length)[None] >= length // 4)
    adv = rng.standard_normal(b).astype(np.float32)
    old = -np.log(vocab) + 0.3 * rng.standard_normal((b, length)).astype(np.float32)
    return dict(tokens=tokens, input_mask=input_mask, completion_mask=completion, old_logprobs=old,
                advantages=adv)


def load_params(name):
    """Real weights when the embedded checkpoint loads; random weights otherwise (same FLOPs)."""
    from exit_jax import models
    from exit_jax.models import transformer
    try:
        return models.load(name).params
    except Exception:  # noqa: BLE001
        return transformer.init_params(models.preset(name), 0)


def jax_side(name, batch, a):
    import jax
    from exit_jax.models.config import preset
    from exit_jax.rl import learner
    mc, params = preset(name), load_params(name)
    # No entropy diagnostic: the torch side does not compute it either.
    cfg = learner.LearnerConfig(kl_beta=0.001, micro_batch_size=a.micro, compute_entropy=False)
    state = learner.init_state(params, cfg)
    b = learner.place_batch(batch, cfg)
    t = time.perf_counter()
    step = jax.jit(lambda s, x: learner.update_step(s, x, mc, cfg), donate_argnums=0)
    step = step.lower(state, b).compile()
    compile_s = time.perf_counter() - t
    losses, times = [], []
    for _ in range(a.steps):
        t = time.perf_counter()
        state, m = step(state, b)
        losses.append(float(m["loss"]))
        times.append(time.perf_counter() - t)
    return dict(seconds=min(times), compile_s=compile_s, loss=losses[0], n=mc.num_params())


def torch_side(name, batch, a):
    import copy, torch, transformers  # noqa: E401
    from exit_jax.models.config import preset
    mc = preset(name)
    hf = transformers.LlamaConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.hidden_size, intermediate_size=mc.intermediate_size,
        num_hidden_layers=mc.num_layers, num_attention_heads=mc.num_heads, head_dim=mc.head_dim,
        num_key_value_heads=mc.num_kv_heads, rope_theta=mc.rope_theta, rms_norm_eps=mc.rms_norm_eps,
        tie_word_embeddings=mc.tie_embeddings, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(hf)
    p = load_params(name)  # the jax side's weights, so that the two first-step losses must agree
    sd = {"model.embed_tokens.weight": p["embed"]["embedding"], "model.norm.weight": p["final_norm"]["scale"]}
    for i in range(mc.num_layers):
        lp, pre = p[f"layers_{i}"], f"model.layers.{i}."
        sd[pre + "input_layernorm.weight"] = lp["attn_norm"]["scale"]
        sd[pre + "post_attention_layernorm.weight"] = lp["mlp_norm"]["scale"]
        for n in "qkvo":
            sd[pre + f"self_attn.{n}_proj.weight"] = lp["attn"][n]["kernel"].T
        for n in ("gate", "up", "down"):
            sd[pre + f"mlp.{n}_proj.weight"] = lp["mlp"][n]["kernel"].T
    model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in sd.items()}, strict=False)
    ref = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    ids, am, cm = t["tokens"].long(), t["input_mask"].long(), t["completion_mask"].float()
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    bsz = ids.shape[0]

    def logprobs(m, s):
        logits = m(input_ids=ids[s], attention_mask=am[s], position_ids=pos[s]).logits.float()
        return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[s, 1:, None])[..., 0]

    def step():  # Eq. 4 with clip 0.2, k3 KL (beta 0.001), AdamW, grad clip 1.0; micro-batched
        opt.zero_grad()
        total = 0.0
        for j in range(0, bsz, a.micro):
            s = slice(j, j + a.micro)
            lp = logprobs(model, s)
            with torch.no_grad():
                d = logprobs(ref, s) - lp
            m, adv = cm[s, 1:], t["advantages"][s, None]
            ratio = torch.exp(lp - t["old_logprobs"][s, 1:])
            pg = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
            tok = pg + 0.001 * (torch.exp(d) - 1 - d)
            loss = ((tok * m).sum(-1) / m.sum(-1).clamp(min=1)).sum() / bsz
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return total
    times, losses = [], []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    return dict(seconds=min(times), loss=losses[0], threads=torch.get_num_threads())


def child(side, name, a):
    import jax
    jax.config.update("jax_platforms", "cpu")
    mc = __import__("exit_jax.models.config", fromlist=["preset"]).preset(name)
    batch = make_batch(mc.vocab_size, a.prompts * a.samples, a.length)
    out = (jax_side if side == "jax" else torch_side)(name, batch, a)
    out["maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(out))


def matmul_peak():
    import jax, jax.numpy as jnp  # noqa: E401
    x = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(x).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        f(x).block_until_ready()
    return 5 * 2 * 2048 ** 3 / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--micro", type=int, default=16)
    ap.add_argument("--steps", type=int, default=0, help="timed steps (0: 5 for tiny, 1 otherwise)")
    ap.add_argument("--child", nargs=2, metavar=("SIDE", "MODEL"))
    a = ap.parse_args()
    if a.child:
        return child(*a.child, a)
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s; cores: {os.cpu_count()}")
    for name in a.models.split(","):
        steps = a.steps or (5 if name == "tiny" else 1)
        res = {}
        for side in ("jax", "torch"):
            cmd = [sys.executable, __file__, "--child", side, name, "--steps", str(steps)] + [
                f"--{k}={getattr(a, k)}" for k in ("prompts", "samples", "length", "micro")]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{side} {name} failed:\n{out.stderr[-3000:]}")
            res[side] = json.loads(line[0][7:])
        j, t = res["jax"], res["torch"]
        tokens = a.prompts * a.samples * a.length
        flops = 8 * j["n"] * tokens  # 6N trained + 2N reference per token
        print(f"{name}: {tokens} tokens/step | jax {tokens / j['seconds']:.0f} tok/s "
              f"(compile {j['compile_s']:.0f}s, peak RSS {j['maxrss_gb']:.2f} GB, "
              f"{flops / j['seconds'] / peak:.0%} of matmul peak) | torch {tokens / t['seconds']:.0f} tok/s "
              f"({t['threads']} threads, peak RSS {t['maxrss_gb']:.2f} GB) | speedup "
              f"{t['seconds'] / j['seconds']:.2f}x | first loss jax {j['loss']:.6f} torch {t['loss']:.6f}")


if __name__ == "__main__":
    main()
