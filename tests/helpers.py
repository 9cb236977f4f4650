"""Tiny configurations, subprocess helpers and run inspection shared by the tests."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import jax
import numpy as np

from jax_dcgan.config import Config
from jax_dcgan.outputs.plots import read_metrics, read_records
from jax_dcgan.training import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough to compile and run in seconds on one CPU core. Epochs of 8 steps with a
# checkpoint every 4 and 3 steps per call: every segment runs one 3-step call and one
# single step, so both step programs run. The steps per call are fixed so that separate
# runs dispatch, and round, alike (the default measures them).
TINY = Config(image_size=16, gen_features=8, dis_features=8, latent_dim=8, batch_size=8,
              num_synthetic=64, epochs=2, log_every=2, checkpoint_every=4,
              steps_per_dispatch=3)


def tiny_flags(cache_dir, **changes) -> list[str]:
    """`jax-dcgan train` flags for TINY with `changes` applied."""
    cfg = TINY.replace(cache_dir=str(cache_dir), **changes)
    flags = []
    for name in ("image_size", "gen_features", "dis_features", "latent_dim", "batch_size",
                 "num_synthetic", "epochs", "steps", "log_every", "checkpoint_every", "cache_dir",
                 "dataset", "data_dir", "devices", "seed", "steps_per_dispatch", "dtype"):
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


def cli_here(*args, check: bool = True) -> subprocess.CompletedProcess:
    """`jax-dcgan ARGS` in this process, output captured: for commands whose compiled
    programs (FID's network above all) later calls reuse rather than compile again."""
    from jax_dcgan.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    if check:
        assert code == 0, err.getvalue()[-3000:]
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def tiny_run(root, **changes):
    """A finished `jax-dcgan train` of TINY (`changes` applied) in root/run; its path."""
    cli_here("train", "--out", root / "run", "--quiet", *tiny_flags(root / "cache", **changes))
    return root / "run"


def step_records(out) -> list[dict]:
    """The per-step records of a run (not the per-epoch ones)."""
    return read_metrics(os.path.join(out, "metrics.jsonl"))


def records(out) -> list[dict]:
    return read_records(os.path.join(out, "metrics.jsonl"))


def final_state(out):
    """What a checkpoint holds of a run's state, as numpy arrays."""
    state, _ = checkpoint.load_checkpoint(str(out))
    return jax.tree.map(np.asarray, (state.generator, state.discriminator, state.g_opt,
                                     state.d_opt, jax.random.key_data(state.rng), state.step))


def assert_identical(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
