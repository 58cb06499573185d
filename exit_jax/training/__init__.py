"""The ExIt training loop and what it wires together.

    loop         train(run, model, domain, curriculum, learner, sampling, evaluate)
    rollout      rollout groups through fresh environments (multi-turn included)
    processes    multi-host runs: each process samples its share of the groups, then they exchange them
    batch        packing model calls into the learner's fixed-shape batch
    host_state   what the loop carries between iterations (the buffer, counters), as checkpoints hold it
    stopping     SIGTERM / Ctrl-C as a request to stop after the iteration, with a checkpoint
    checkpointing, metrics, export

The domains it trains on are envs.domains; the policy it samples with is sampling.text_policy; the
evaluation it calls is evaluation.evaluate.
"""
