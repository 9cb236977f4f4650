"""The lecture's loss plot and the quality curves, drawn from values held in memory, and
the reading of metrics.jsonl and its records' kinds.

Figures are made with matplotlib's object API (no pyplot state), so they can be
drawn in the training loop's background thread.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Any, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jax_dcgan.common.files import atomic_write

__all__ = ["Kind", "plot_curves", "plot_losses", "read_metrics", "read_records", "record_kind",
           "running_average", "steady_images_per_s"]


class Kind(enum.Enum):
    """What a record of metrics.jsonl is (its `kind`)."""
    STEP = "step"              # one training step's losses, accuracies and throughput
    EPOCH = "epoch"            # an epoch end's diversity monitor and timing
    EVALUATION = "evaluation"  # SWD, FID and KID
    ROLLBACK = "rollback"      # a rollback to a checkpoint after non-finite losses


def record_kind(record: Mapping[str, Any]) -> Kind:
    """The kind of a metrics.jsonl record; version 0.2 wrote none, and its kinds had these
    keys."""
    if "kind" in record:
        return Kind(record["kind"])
    for key, kind in (("g_loss", Kind.STEP), ("swd", Kind.EVALUATION), ("rollback", Kind.ROLLBACK)):
        if key in record:
            return kind
    return Kind.EPOCH


def read_metrics(path: str) -> list[dict]:
    """The per-step records of a run's metrics.jsonl (not the per-epoch ones)."""
    return [r for r in read_records(path) if record_kind(r) is Kind.STEP]


def read_records(path: str) -> list[dict]:
    """Every record of a metrics.jsonl; a line cut short by a kill is skipped."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def steady_images_per_s(records: list[dict], first_step: int) -> float:
    """The training rate over the step records from `first_step` on (e.g. after compilation),
    from the rates the loop wrote: each record has the rate of the fetch that returned it."""
    steady = [r for r in records if r["step"] >= first_step]
    return len(steady) / sum(1 / r["images_per_s"] for r in steady)


def running_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (sums[idx] - sums[lo]) / (idx - lo)


def plot_losses(steps: np.ndarray, d_loss: np.ndarray, g_loss: np.ndarray, out_path: str,
                steps_per_epoch: int, window: int = 100) -> None:
    """Per-batch D and G losses with a running average, and a second x-axis in epochs."""
    if not len(steps):
        return
    fig = Figure(figsize=(8, 4.5), dpi=110)
    ax = fig.subplots()
    for values, label, color in ((d_loss, "Discriminator loss", "tab:blue"),
                                 (g_loss, "Generator loss", "tab:orange")):
        values = np.asarray(values, np.float64)
        ax.plot(steps, values, color=color, alpha=0.35, lw=0.8, label=label)
        ax.plot(steps, running_average(values, window), color=color, lw=1.8,
                label=f"{label} (running average, {window} batches)")
    ax.set_xlabel("Iterations")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right", fontsize=8)
    epochs = ax.secondary_xaxis(-0.2, functions=(lambda s: s / steps_per_epoch,
                                                 lambda e: e * steps_per_epoch))
    epochs.set_xlabel("Epochs")
    fig.tight_layout()
    _save(fig, out_path)


def plot_curves(series: dict[str, tuple[list, list]], out_path: str, xlabel: str,
                ylabel: str, markers: bool = True) -> None:
    """A few named (x, y) curves on one axis."""
    fig = Figure(figsize=(7, 4.5), dpi=110)
    ax = fig.subplots()
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o" if markers else None, lw=1.5, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out_path)


def _save(fig: Figure, out_path: str) -> None:
    FigureCanvasAgg(fig)
    with atomic_write(out_path, ".png") as tmp:
        fig.savefig(tmp)
