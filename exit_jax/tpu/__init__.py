"""TPU targets without TPUs: chip figures, topologies, and ahead-of-time compilation of a run's programs
(`aot`), whose memory and cost analyses decide whether a config fits. See docs/tpu.md."""
