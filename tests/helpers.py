"""Tiny configurations and subprocess helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys

from jax_dcgan.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough to compile and run in seconds on one CPU core.
TINY = Config(image_size=16, gen_features=8, dis_features=8, latent_dim=8, batch_size=8,
              num_synthetic=64, epochs=2, log_every=2, checkpoint_every=4)


def tiny_flags(cache_dir, **changes) -> list[str]:
    """`jax-dcgan train` flags for TINY with `changes` applied."""
    cfg = TINY.replace(cache_dir=str(cache_dir), **changes)
    flags = []
    for name in ("image_size", "gen_features", "dis_features", "latent_dim", "batch_size",
                 "num_synthetic", "epochs", "steps", "log_every", "checkpoint_every", "cache_dir",
                 "dataset", "data_dir", "devices", "seed", "steps_per_dispatch"):
        value = getattr(cfg, name)
        if value != "":
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def cli(*args, env: dict | None = None, check: bool = True, timeout: float = 600):
    """Run `python -m jax_dcgan.cli ARGS`; returns the CompletedProcess."""
    result = subprocess.run([sys.executable, "-m", "jax_dcgan.cli", *map(str, args)],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result
