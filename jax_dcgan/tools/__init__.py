"""The user's tools beside training: the benchmark, the parity report against PyTorch, and
ahead-of-time compilation for accelerators this machine lacks (targets, compiled programs)."""
