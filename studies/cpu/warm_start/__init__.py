"""Supervised warm-start of small models on procedurally generated attempts and revisions.

Used by the CPU-scale reproduction study (studies/cpu/pretrain.py, run by studies/cpu/run.py): a
1-10M-parameter model is first taught the answer format and the self-iteration prompts by SFT, then
trained with GRPO / ExIt like a real checkpoint.
"""
