"""Where the loop's numbers and images go: metrics.jsonl, the console, TensorBoard, and the
in-memory history the plots are drawn from.

Each is a `MetricWriter` with the interface of clu's metric writers (`write_scalars`,
`write_images`), where each record also says what `Kind` it is, plus `rewind(step)` for
a resume or a rollback, which continues from an earlier step. `Writers` sends every
call to all of them, one call at a time, since the loop and its background thread both
write.
"""

from __future__ import annotations

import json
import numbers
import os
import threading
import warnings
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from jax_dcgan.common.files import write_text
from jax_dcgan.common.optional import import_tensorboardx
from jax_dcgan.config import Config
from jax_dcgan.outputs.plots import Kind, read_records, record_kind
from jax_dcgan.quality.metrics import inception_summary
from jax_dcgan.training.dispatch import Plan
from jax_dcgan.training.rundir import RunDir

__all__ = ["ConsoleWriter", "History", "JsonlWriter", "MetricWriter", "TensorBoardWriter",
           "Writers", "open_writers"]


class MetricWriter:
    """Where records go; each method does nothing unless a writer needs it."""

    def write_scalars(self, step: int, kind: Kind, scalars: Mapping[str, Any]) -> None:
        """Values of one step: numbers, and in metrics.jsonl also strings."""

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Images (H, W, C) in [0, 1] by name."""

    def rewind(self, step: int) -> None:
        """Forget what was written after `step`."""

    def close(self) -> None:
        pass


class JsonlWriter(MetricWriter):
    """metrics.jsonl: one JSON object per line, `step` and the values written at it. Lines
    reach the file as they are written, so a killed run loses none that were."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "a", buffering=1)

    def write_scalars(self, step, kind, scalars):
        self.file.write(json.dumps({"step": step, "kind": kind.value, **scalars}) + "\n")

    def rewind(self, step) -> list[dict]:
        """Drop the records after `step`; returns those kept."""
        self.file.close()
        kept = [r for r in read_records(self.path) if r.get("step", 0) <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a", buffering=1)
        return kept

    def close(self):
        self.file.close()


class ConsoleWriter(MetricWriter):
    """A progress bar with losses and throughput, the lecture's line every `log_every`
    batches, and a line per evaluation."""

    def __init__(self, plan: Plan, log_every: int, start: int, disable: bool):
        self.plan, self.log_every = plan, log_every
        self.bar = tqdm(total=plan.total_steps, initial=start, unit="step", dynamic_ncols=True,
                        disable=disable, desc="train")

    def write_scalars(self, step, kind, scalars):
        if kind is Kind.STEP:
            if scalars["batch"] % self.log_every == 0:
                self.message(f"Epoch: {scalars['epoch']:03d}/{self.plan.epochs:03d} | Batch "
                             f"{scalars['batch']:03d}/{self.plan.steps_per_epoch:03d} | Gen/Dis "
                             f"Loss: {scalars['g_loss']:.4f}/{scalars['d_loss']:.4f}")
            self.bar.set_postfix(g_loss=f"{scalars['g_loss']:.3f}",
                                 d_loss=f"{scalars['d_loss']:.3f}",
                                 img_s=f"{scalars['images_per_s']:.0f}", refresh=False)
        elif kind is Kind.EVALUATION:
            self.message(f"Epoch {scalars['epoch']:03d}: SWD {scalars['swd']:.2f}"
                         + inception_summary(scalars))

    def advance(self, steps: int) -> None:
        self.bar.update(steps)

    def message(self, text: str) -> None:
        if not self.bar.disable:
            self.bar.write(text)

    def rewind(self, step):
        self.bar.n = step
        self.bar.refresh()

    def close(self):
        self.bar.close()


# TensorBoard's sections: a tag `section/name` is shown under `section`.
TENSORBOARD_SECTIONS = {
    "losses": ("g_loss", "d_loss"),
    "accuracy": ("acc_real", "acc_fake"),
    "quality": ("swd", "fid", "kid", "kid_std", "eval_samples", "diversity", "diversity_data",
                "collapsed"),
    "throughput": ("images_per_s", "epoch_seconds"),
    "system": ("rss_mib", "open_fds", "rollback"),
    "samples": ("fixed_noise", "real_vs_fake"),
}
TENSORBOARD_TAGS = {name: f"{section}/{name}" for section, names in TENSORBOARD_SECTIONS.items()
                    for name in names}


class TensorBoardWriter(MetricWriter):
    """Event files for `tensorboard --logdir`: per-step values as their mean over every
    `every` steps (one event per value per step costs more host time than a fast step
    takes), other values as they come, and sample grids as images, each tag in its section
    (`TENSORBOARD_SECTIONS`)."""

    SKIPPED = ("epoch", "batch")

    def __init__(self, logdir: str, start: int, every: int):
        self.tensorboardx, self.logdir, self.every = import_tensorboardx(), logdir, every
        self.opened = 0
        self._open(start)

    def _open(self, start: int) -> None:
        # purge_step makes TensorBoard drop what an earlier process (or the run before a
        # rollback) wrote after `start`; a suffix of its own keeps a new event file from
        # replacing one opened in the same second.
        self.opened += 1
        self.writer = self.tensorboardx.SummaryWriter(
            self.logdir, purge_step=start + 1, filename_suffix=f".{os.getpid()}.{self.opened}")
        self.sums: dict[str, float] = {}
        self.count, self.last = 0, start

    def write_scalars(self, step, kind, scalars):
        numbers_ = {k: float(v) for k, v in scalars.items()
                    if isinstance(v, numbers.Real) and k not in self.SKIPPED}
        if kind is not Kind.STEP:
            self._add(step, numbers_)
            return
        for name, value in numbers_.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.count, self.last = self.count + 1, step
        if step % self.every == 0:
            self._add_means()

    def _add_means(self) -> None:
        if self.count:
            self._add(self.last, {k: v / self.count for k, v in self.sums.items()})
        self.sums, self.count = {}, 0

    def _add(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(TENSORBOARD_TAGS.get(name, name), value, step)

    def write_images(self, step, images):
        for name, image in images.items():
            self.writer.add_image(TENSORBOARD_TAGS.get(name, name), np.asarray(image), step,
                                  dataformats="HWC")

    def rewind(self, step):
        self.writer.close()
        self._open(step)

    def close(self):
        self._add_means()
        self.writer.close()


class History(MetricWriter):
    """The losses and evaluations so far, for the plots (which then need not read files)."""

    def __init__(self, records: list[dict] = ()):  # e.g. those of a resumed run
        self.lock = threading.Lock()
        self.losses: list[tuple[int, float, float]] = []  # (step, d_loss, g_loss)
        self.evals: list[dict] = []
        for record in records:
            self.write_scalars(record["step"], record_kind(record), record)

    def write_scalars(self, step, kind, scalars):
        with self.lock:
            if kind is Kind.STEP:
                self.losses.append((step, scalars["d_loss"], scalars["g_loss"]))
            elif kind is Kind.EVALUATION:
                self.evals.append({"step": step, **scalars})

    def rewind(self, step):
        with self.lock:
            self.losses = [r for r in self.losses if r[0] <= step]
            self.evals = [r for r in self.evals if r["step"] <= step]

    def loss_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """steps, d_loss, g_loss."""
        with self.lock:
            table = np.array(self.losses, np.float64).reshape(-1, 3)
        return table[:, 0], table[:, 1], table[:, 2]

    def evaluations(self) -> list[dict]:
        with self.lock:
            return list(self.evals)


class Writers(MetricWriter):
    """A run's writers as one, safe to call from the loop and the background thread: each
    writer has its own lock, so that one thread writing a sample grid to TensorBoard does
    not hold up the other's metrics.jsonl line. The console (the progress bar) and the
    history (what the plots show; the first process only) are among them, and also
    reachable by name."""

    def __init__(self, console: ConsoleWriter, history: History | None = None,
                 *files: MetricWriter):
        self.console, self.history = console, history
        # The files first: a record that cannot be written is then not shown or plotted.
        writers = (*files, console) + ((history,) if history is not None else ())
        self.writers = [(w, threading.Lock()) for w in writers]

    def _each(self, method: str, *args) -> None:
        for writer, lock in self.writers:
            with lock:
                getattr(writer, method)(*args)

    def write_scalars(self, step, kind, scalars):
        self._each("write_scalars", step, kind, scalars)

    def write_images(self, step, images):
        self._each("write_images", step, images)

    def rewind(self, step):
        self._each("rewind", step)

    def close(self):
        self._each("close")

    def __enter__(self) -> "Writers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_writers(directory: RunDir | None, plan: Plan, cfg: Config, start: int, quiet: bool
                 ) -> Writers:
    """The run's writers (`directory` None: a process other than the first, which writes
    nothing but keeps a silent console); what was written after `start` by an earlier
    process is dropped."""
    console = ConsoleWriter(plan, cfg.log_every, start, disable=quiet or directory is None)
    if directory is None:
        return Writers(console)
    jsonl = JsonlWriter(directory.metrics)
    files: list[MetricWriter] = [jsonl]
    history = History(jsonl.rewind(start))
    if cfg.tensorboard and import_tensorboardx() is None:
        warnings.warn("tensorboardX is not installed, so no TensorBoard logs are written "
                      "(pip install tensorboardX, or --no-tensorboard to silence this).")
    elif cfg.tensorboard:
        files.append(TensorBoardWriter(directory.tensorboard, start, cfg.log_every))
    return Writers(console, history, *files)
