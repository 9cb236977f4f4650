"""The lecture's loss plot, read back from metrics.jsonl."""

from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(path: str) -> list[dict]:
    """The step records of a run (other records, e.g. evaluations, are skipped)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if "g_loss" in r]


def running_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def plot_losses(metrics_path: str, out_path: str, steps_per_epoch: int, window: int = 100) -> None:
    """Per-batch D and G losses with a running average, and a second x-axis in epochs."""
    records = read_metrics(metrics_path)
    if not records:
        return
    steps = np.array([r["step"] for r in records])
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for key, label, color in (("d_loss", "Discriminator loss", "tab:blue"),
                              ("g_loss", "Generator loss", "tab:orange")):
        values = np.array([r[key] for r in records], np.float64)
        ax.plot(steps, values, color=color, alpha=0.35, lw=0.8, label=label)
        ax.plot(steps, running_average(values, window), color=color, lw=1.8,
                label=f"{label} (running average, {window} batches)")
    ax.set_xlabel("Iterations")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right", fontsize=8)
    top = ax.secondary_xaxis(-0.2, functions=(lambda s: s / steps_per_epoch,
                                              lambda e: e * steps_per_epoch))
    top.set_xlabel("Epochs")
    fig.tight_layout()
    _save(fig, out_path)


def plot_curves(series: dict[str, tuple[list, list]], out_path: str, xlabel: str,
                ylabel: str, markers: bool = True) -> None:
    """A few named (x, y) curves on one axis."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o" if markers else None, lw=1.5, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out_path)


def _save(fig, out_path: str) -> None:
    tmp = f"{out_path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_path)
