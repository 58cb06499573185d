"""The ExIt training loop and what it wires together.

    loop         train(run, model, domain, curriculum, learner, sampling, evaluate_at_end)
    domains      math / tool_use / mle task domains, and the paper's learning rates
    policy       TextPolicy: chat messages in, sampled replies with tokens and log-probs out
    rollout      rollout groups through fresh environments (multi-turn included)
    batch        packing model calls into the learner's fixed-shape batch
    checkpointing, metrics, evaluate
"""
