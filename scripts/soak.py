"""A long run of a tiny configuration: does anything grow that should stay flat?

Trains `jax-dcgan train` (the command line, as users run it) for many short epochs with
everything a long run does: the epoch grids, the loss plot, SWD and FID evaluations,
checkpoints (three kept). Every epoch end records the process's resident memory, open
file descriptors and the epoch's wall time in metrics.jsonl (`rss_mib`, `open_fds`,
`epoch_seconds`, on Linux); this script compares the first half of the run (after a
warm-up) with the second, prints the figures and exits 1 on clear growth:

    python scripts/soak.py --epochs 200 --steps-per-epoch 50    # docs/BENCHMARKS.md
    python scripts/soak.py --epochs 30 --steps-per-epoch 8      # tests/test_soak.py

Clear growth: a floor of resident memory higher by more than `--rss-limit-mib`, a
higher floor of open descriptors, or a median epoch slower by more than `--time-limit`
times plus `--time-slack` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jax_dcgan.outputs.plots import read_records  # noqa: E402
from jax_dcgan.training.epoch_end import QUEUED_EPOCHS  # noqa: E402

BATCH = 8


def train(out: str, epochs: int, steps_per_epoch: int, eval_every: int) -> float:
    """Run the tiny configuration to the end; returns its wall time in seconds."""
    flags = ["--image-size", "16", "--gen-features", "8", "--dis-features", "8",
             "--latent-dim", "8", "--batch-size", str(BATCH),
             "--num-synthetic", str(BATCH * steps_per_epoch), "--epochs", str(epochs),
             "--log-every", str(max(1, steps_per_epoch // 5)),
             "--checkpoint-every", str(5 * steps_per_epoch), "--eval-every", str(eval_every),
             "--eval-samples", "64", "--cache-dir", os.path.join(out, "cache")]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "jax_dcgan.cli", "train", "--quiet",
                           "--out", os.path.join(out, "run"), *flags],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"soak: the training run failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def summarize(records: list[dict], eval_every: int, rss_limit_mib: float, time_limit: float,
              time_slack_s: float) -> dict:
    """The first and second half of the epochs after the warm-up, and the verdict.

    The warm-up covers compilation and the first evaluation (which loads the FID network
    and computes the data's statistics once; its wait shows `QUEUED_EPOCHS` epochs
    later). Memory and open descriptors are compared by their floors, the minimum of
    each half, since both swing while checkpoints and evaluations run and a leak raises
    the floor; epoch times by medians, so that the epochs that waited for an evaluation
    do not count.
    """
    epochs = [r for r in records if "rss_mib" in r]
    warmup = max(2, len(epochs) // 20) + (eval_every + QUEUED_EPOCHS + 1 if eval_every else 0)
    measured = epochs[warmup:]
    if len(measured) < 6:
        raise SystemExit(f"soak: {len(epochs)} epochs with host figures are too few to compare "
                         f"a start and an end (the warm-up takes {warmup})")
    start, end = measured[:len(measured) // 2], measured[len(measured) // 2:]

    def floor(window, key):
        return min(r[key] for r in window)

    def median(window, key):
        return statistics.median(r[key] for r in window)

    figures = {
        "epochs": len(epochs), "warmup_epochs": warmup, "half_epochs": len(start),
        "rss_mib": {"start": floor(start, "rss_mib"), "end": floor(end, "rss_mib"),
                    "max": max(r["rss_mib"] for r in epochs)},
        "open_fds": {"start": floor(start, "open_fds"), "end": floor(end, "open_fds")},
        "epoch_seconds": {"start": median(start, "epoch_seconds"),
                          "end": median(end, "epoch_seconds")},
    }
    rss, fds, times = figures["rss_mib"], figures["open_fds"], figures["epoch_seconds"]
    problems = []
    if rss["end"] - rss["start"] > rss_limit_mib:
        problems.append(f"resident memory grew by {rss['end'] - rss['start']:.0f} MiB")
    if fds["end"] > fds["start"]:
        grown = fds["end"] - fds["start"]
        problems.append(f"{grown} more file descriptor{'s stay' if grown > 1 else ' stays'} open")
    if times["end"] > time_limit * times["start"] + time_slack_s:
        problems.append(f"epochs became slower: {times['start']:.3f} s -> {times['end']:.3f} s")
    return {**figures, "problems": problems}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=10, help="epochs between SWD/FID")
    p.add_argument("--rss-limit-mib", type=float, default=64.0)
    p.add_argument("--time-limit", type=float, default=1.5,
                   help="the end's epochs may take this many times the start's, plus the slack")
    p.add_argument("--time-slack", type=float, default=0.05, help="seconds; see --time-limit")
    p.add_argument("--out", help="keep the run here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        seconds = train(out, args.epochs, args.steps_per_epoch, args.eval_every)
        result = summarize(read_records(os.path.join(out, "run", "metrics.jsonl")),
                           args.eval_every, args.rss_limit_mib, args.time_limit, args.time_slack)
    result["wall_seconds"] = round(seconds, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rss, fds, times = result["rss_mib"], result["open_fds"], result["epoch_seconds"]
        first = result["warmup_epochs"] + 1
        print(f"{result['epochs']} epochs x {args.steps_per_epoch} steps in {seconds:.0f} s; "
              f"start = epochs {first}..{first + result['half_epochs'] - 1}, end = the rest")
        print(f"resident memory, floor  {rss['start']:8.1f} MiB -> {rss['end']:8.1f} MiB "
              f"(max {rss['max']:.1f})")
        print(f"open descriptors, floor {fds['start']:8d}     -> {fds['end']:8d}")
        print(f"epoch wall time, median {times['start']:8.3f} s   -> {times['end']:8.3f} s")
        print("growth: " + ("; ".join(result["problems"]) or "none beyond the limits"))
    sys.exit(1 if result["problems"] else 0)


if __name__ == "__main__":
    main()
