"""Time the training step with another version's im2col/col2im against this one's.

Both steps run in one process, interleaved, so that the machine's drift (large on
a shared host, where separate runs of `jax-dcgan bench` differ by more than a
rearrangement's share of the step) hits both alike:

    git worktree add /tmp/old <commit>
    python scripts/compare_layers.py /tmp/old/jax_dcgan/model/layers.py --repeats 6
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import jax
import numpy as np

from jax_dcgan.config import Config
from jax_dcgan.model import layers
from jax_dcgan.model.step import create_train_state, jit_train_steps


def load(path: str):
    spec = importlib.util.spec_from_file_location("other_layers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax's dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="the other version's jax_dcgan/model/layers.py")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    cfg = Config(batch_size=args.batch_size)
    batch = jax.device_put(np.random.default_rng(0).integers(
        0, 256, (1, cfg.batch_size, cfg.image_size, cfg.image_size, cfg.channels), np.uint8))
    steps = {}
    for name, module in (("other", load(args.other)), ("this", layers)):
        # conv2d and its VJP look these up when traced, so each jit traces its own pair.
        layers.im2col, layers.col2im = module.im2col, module.col2im
        step_cfg = cfg.step_config()
        step, state = jit_train_steps(step_cfg), create_train_state(step_cfg, cfg.seed)
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        steps[name] = [step, state]
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, box in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                box[1], metrics = box[0](box[1], batch)
            jax.block_until_ready(metrics)
            times[name].append(1e3 * (time.perf_counter() - start) / args.steps)
    for name, ms in times.items():
        print(f"{name:6s} step ms: median {statistics.median(ms):.1f} "
              f"(min {min(ms):.1f}, max {max(ms):.1f})")
    print(f"this / other: {statistics.median(times['this']) / statistics.median(times['other']):.3f}")


if __name__ == "__main__":
    main()
