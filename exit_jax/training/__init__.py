"""The ExIt training loop and what it wires together.

    loop         train(run, model, domain, curriculum, learner, sampling, evaluate_at_end)
    domains      math / tool_use / mle task domains
    policy       TextPolicy: chat messages in, sampled replies with tokens and log-probs out
    rollout      rollout groups through fresh environments (multi-turn included)
    processes    multi-host runs: each process samples its share of the groups, then they exchange them
    batch        packing model calls into the learner's fixed-shape batch
    host_state   what the loop carries between iterations (buffer, RNG), as checkpoints hold it
    stopping     SIGTERM / Ctrl-C as a request to stop after the iteration, with a checkpoint
    checkpointing, metrics, evaluate
"""
