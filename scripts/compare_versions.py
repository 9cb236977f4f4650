"""Time this checkout against another one, interleaved in one run: the training step that
`jax-dcgan train` runs by default, or (`--loop`) `train` itself.

    git worktree add /tmp/old <commit>
    python scripts/compare_versions.py /tmp/old --batch-size 32 --repeats 6
    python scripts/compare_versions.py /tmp/old --loop --batch-size 16 --width 8 \
        --image-size 16 --epoch-steps 50

Each checkout gets a worker process (its own imports); the workers take turns, so
that the drift of a shared machine hits both alike, and only one runs at a time.
Step mode: each holds a compiled step and a state and runs a block of calls of
`jit_train_steps(Config(...).step_config())` on `--steps-per-call` steps (what the loop
dispatches; 1 for the lecture's model on a CPU). Loop mode: each turn is a new
`train()` with default flags on synthetic faces for 3 epochs of `--epoch-steps`
steps, timed after the first epoch from the rates in its own metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import importlib.util, json, sys, tempfile, time
import jax, numpy as np
from jax_dcgan.config import Config
if importlib.util.find_spec("jax_dcgan.model"):  # the package's subpackage layout (0.3 on)
    import jax_dcgan
    from jax_dcgan import train
    from jax_dcgan.outputs.plots import read_metrics
    def make_step(cfg):
        step_cfg = cfg.step_config()
        return jax_dcgan.jit_train_steps(step_cfg), jax_dcgan.create_train_state(step_cfg, cfg.seed)
else:  # 0.2's flat layout
    from jax_dcgan.plots import read_metrics
    from jax_dcgan.step import create_train_state, jit_train_steps
    from jax_dcgan.train import train
    def make_step(cfg):
        return jit_train_steps(cfg), create_train_state(cfg)
options = json.loads(sys.argv[1])
cfg = Config(batch_size=options["batch_size"], gen_features=options["width"],
             dis_features=options["width"], image_size=options["image_size"])
if options["loop"]:
    cfg = cfg.replace(num_synthetic=cfg.batch_size * options["epoch_steps"], epochs=3,
                      cache_dir=tempfile.mkdtemp())
    print("ready", flush=True)
    for line in sys.stdin:
        with tempfile.TemporaryDirectory() as tmp:
            train(cfg, tmp + "/run", quiet=True)
            steady = [r for r in read_metrics(tmp + "/run/metrics.jsonl") if r["epoch"] > 1]
        print(1e3 * cfg.batch_size * sum(1 / r["images_per_s"] for r in steady) / len(steady),
              flush=True)
    sys.exit()
k = options["steps_per_call"]
batch = jax.device_put(np.random.default_rng(0).integers(
    0, 256, (k, cfg.batch_size, cfg.image_size, cfg.image_size, cfg.channels), np.uint8))
step, state = make_step(cfg)
state, metrics = step(state, batch)
jax.block_until_ready(metrics)
print("ready", flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    for _ in range(options["calls"]):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    print(1e3 * (time.perf_counter() - start) / (options["calls"] * k), flush=True)
"""


def start_worker(checkout: str, options: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": checkout, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(options)], cwd=checkout,
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert worker.stdout.readline().strip() == "ready", f"{checkout}: the worker did not start"
    return worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("other", help="the other checkout (a git worktree)")
    parser.add_argument("--loop", action="store_true", help="time train() instead of the step")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=64, help="both networks' width")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epoch-steps", type=int, default=50, help="with --loop")
    parser.add_argument("--steps-per-call", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    options = {"loop": args.loop, "batch_size": args.batch_size, "width": args.width,
               "image_size": args.image_size, "epoch_steps": args.epoch_steps,
               "steps_per_call": args.steps_per_call, "calls": args.calls}
    workers = {"other": start_worker(os.path.abspath(args.other), options),
               "this": start_worker(ROOT, options)}
    times: dict[str, list[float]] = {name: [] for name in workers}
    for _ in range(args.repeats):
        for name, worker in workers.items():
            worker.stdin.write("run\n")
            worker.stdin.flush()
            times[name].append(float(worker.stdout.readline()))
    for worker in workers.values():
        worker.stdin.close()
        worker.wait()
    for name, ms in times.items():
        print(f"{name:6s} step ms: median {statistics.median(ms):.1f} "
              f"(min {min(ms):.1f}, max {max(ms):.1f}; {', '.join(f'{t:.0f}' for t in ms)})")
    print(f"this / other: median {statistics.median(times['this']) / statistics.median(times['other']):.3f}, "
          f"min {min(times['this']) / min(times['other']):.3f}")


if __name__ == "__main__":
    main()
