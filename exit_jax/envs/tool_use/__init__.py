"""Multi-turn tool use: BFCL v3 multi-turn entries (bfcl-eval 2026.3.23) as environments.

`bfcl.load_entries(category)` gives tasks, `bfcl.MultiTurnEnv(task)` runs one rollout on fresh tool
instances with our own safe executor (`executor`) and BFCL's state + response checks (`checker`);
`split.split_entries("train"|"test")` gives the paper's 100 / 100 split of multi_turn_base.
"""
