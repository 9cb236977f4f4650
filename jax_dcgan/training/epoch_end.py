"""The end of each epoch: the lecture's 8x8 grid of 64 fixed-noise samples, the diversity
monitor that spots a collapsed generator, the loss plot, and every `eval_every` epochs
SWD, FID and KID.

The grid and the evaluation's samples are dispatched at the epoch end, queued behind
the training calls; the monitor runs in the loop once the grid is ready; the files,
plots and evaluations run in a background thread. Epochs faster than their outputs
(FID in PyTorch on a CPU after a GPU epoch) make the loop wait for that thread, so that
its queue and the memory it holds stay bounded.
The best diversity so far is part of the run's progress, saved with each checkpoint.
"""

from __future__ import annotations

import collections
import functools
import os
import queue
import threading
import time
import warnings
from concurrent import futures
from typing import TYPE_CHECKING, Callable

import numpy as np

from jax_dcgan.common import runtime
from jax_dcgan.common.errors import TrainingStopped, UserError
from jax_dcgan.outputs import pictures, plots
from jax_dcgan.outputs.plots import Kind
from jax_dcgan.outputs.sample import (GRID_IMAGES, generate_images, make_grid, sampling_generator,
                                      save_png)
from jax_dcgan.quality import metrics

__all__ = ["EpochEnd", "NoEpochEnd", "QUEUED_EPOCHS"]

if TYPE_CHECKING:  # the loop imports this module, and makes the run
    from jax_dcgan.training.loop import Run

PLOT_SECONDS = 30.0  # the loss plot is drawn at most this often, and at the end
ANIMATION_SECONDS = 180.0  # progress.webp likewise (it reads every epoch's grid)
ANIMATION_FRAMES = 100  # beyond that progress.webp shows every n-th epoch, to stay small
STOP_WAIT_SECONDS = 60.0  # a stopped run waits this long for the epoch outputs under way
QUEUED_EPOCHS = 2  # the loop waits rather than let slower outputs (FID on a CPU) pile up


class Background:
    """Tasks run in order in one daemon thread, each behind a `concurrent.futures.Future`;
    `check` raises, in the caller's thread, the first exception a task raised, and the
    tasks after it are skipped. Not a ThreadPoolExecutor: the interpreter joins its
    threads at exit, and a process must be able to exit while a task runs (its files are
    written atomically)."""

    def __init__(self):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.futures: collections.deque[futures.Future] = collections.deque()  # oldest first
        threading.Thread(target=self._run, daemon=True, name="epoch-end").start()

    def _run(self) -> None:
        failed = False
        while (item := self.tasks.get()) is not None:
            future, task = item
            if failed:
                future.cancel()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(task())
                except BaseException as e:  # handed to the loop by check()
                    future.set_exception(e)
                    failed = True

    def submit(self, task: Callable[[], None], room: int | None = None,
               stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Queue `task`, first waiting until fewer than `room` tasks are unfinished, unless
        a stop is requested meanwhile (a signal must not wait for an evaluation)."""
        while room is not None and not stop_requested():
            unfinished = [f for f in self.futures if not f.done()]
            if len(unfinished) < room:
                break
            futures.wait(unfinished, timeout=0.5, return_when=futures.FIRST_COMPLETED)
        future: futures.Future = futures.Future()
        self.futures.append(future)
        self.tasks.put((future, task))

    def check(self) -> None:
        while self.futures and self.futures[0].done():  # a failed task stays first
            if (failure := self.futures[0].exception()) is not None:
                raise failure
            self.futures.popleft()

    def wait(self, timeout: float | None = None) -> bool:
        """Whether every task submitted so far finished within `timeout` seconds."""
        return not futures.wait(self.futures, timeout).not_done

    def close(self) -> None:
        self.tasks.put(None)


class EpochEnd:
    """Each epoch end's grid, diversity monitor, plots and evaluations, for the first
    process; the run's directory, configuration and writers come from `run`."""

    def __init__(self, run: Run, images: np.ndarray):
        self.directory, self.cfg, self.images = run.directory, run.cfg, images
        self.model, self.plan = run.step_cfg.model, run.plan
        self.writers = run.writers
        self.best_diversity = run.progress.best_diversity
        chosen = np.random.default_rng(0).choice(len(images), min(GRID_IMAGES, len(images)),
                                                 replace=False)
        self.real = np.asarray(images[np.sort(chosen)])  # also shown beside the last grid
        self.reference = float(metrics.diversity(self.real))
        self.last_grid: tuple[int, np.ndarray] | None = None  # (step, images) of this process
        # (step, epoch, grid, its diversity, samples to evaluate), all still on the device
        self.pending: collections.deque = collections.deque()
        self.background = Background()
        self.started = self.last_plot = self.last_epoch = time.perf_counter()
        self.last_animation = self.started
        self.inception: metrics.JaxInception | None = None
        # FID's network on the training device, beside training; loaded at the start, so
        # that one that cannot load only drops FID.
        if self.cfg.eval_every:
            try:
                self.inception = metrics.JaxInception(self.cfg.fid_mode)
            except (UserError, OSError) as e:
                warnings.warn(f"FID is skipped during training: {e}")

    def start(self, state, step: int, grid) -> None:
        """Dispatch the device work of the epoch that ends at `step` (`state` as of then,
        `grid` the images of its grid pass)."""
        epoch = step // self.plan.steps_per_epoch
        generator = sampling_generator(state)
        score = metrics.diversity(grid)
        samples = None
        if self.cfg.eval_every and epoch % self.cfg.eval_every == 0:
            samples = generate_images(self.model, generator,
                                      min(self.cfg.eval_samples, len(self.images)),
                                      self.cfg.seed, self.cfg.batch_size)
        self.pending.append((step, epoch, grid, score, samples))

    def collect(self, wait: bool = False, stop_requested: Callable[[], bool] = lambda: False
                ) -> None:
        """Monitor the epochs whose grid is ready (all of them with `wait`) and hand their
        files, plots and evaluations to the background thread."""
        self.background.check()
        while self.pending and (wait or self.pending[0][3].is_ready()):
            step, epoch, grid, score, samples = self.pending.popleft()
            grid = np.asarray(grid)
            self._monitor(step, epoch, float(score))
            self.background.submit(functools.partial(self._outputs, step, epoch, grid, samples),
                                   QUEUED_EPOCHS, stop_requested)

    def _monitor(self, step: int, epoch: int, score: float) -> None:
        """Collapse: diversity falls below a fraction of the data's after having been above it
        (an untrained generator is not diverse yet, which is not a collapse)."""
        threshold = metrics.COLLAPSE_RATIO * self.reference
        collapsed = score < threshold <= self.best_diversity
        self.best_diversity = max(self.best_diversity, score)
        # Since the previous epoch's record: compilation after a start, and waits for
        # queued outputs (which show two epochs after the one that made them), included.
        now = time.perf_counter()
        seconds, self.last_epoch = now - self.last_epoch, now
        self.writers.write_scalars(step, Kind.EPOCH, {"epoch": epoch, "diversity": score,
                                          "diversity_data": self.reference,
                                          "collapsed": bool(collapsed),
                                          "epoch_seconds": round(seconds, 3),
                                          **runtime.host_usage()})
        if collapsed:
            message = (f"Epoch {epoch}: the fixed-noise samples look alike (diversity {score:.3f}"
                       f", the data's {self.reference:.3f}): the generator may have collapsed.")
            warnings.warn(message)
            self.writers.console.message(f"WARNING: {message}")
        minutes = (time.perf_counter() - self.started) / 60
        self.writers.console.message(f"Time elapsed: {minutes:.2f} min")

    def _outputs(self, step: int, epoch: int, grid: np.ndarray, samples) -> None:
        picture = make_grid(grid)
        save_png(picture, os.path.join(self.directory.samples, f"epoch_{epoch:03d}.png"))
        self.writers.write_images(step, {"fixed_noise": picture})
        self.last_grid = step, grid
        if time.perf_counter() - self.last_plot >= PLOT_SECONDS:
            self.plot_losses()
        if time.perf_counter() - self.last_animation >= ANIMATION_SECONDS:
            self.animate()
        if samples is not None:
            self._evaluate(step, epoch, np.asarray(samples))

    def _evaluate(self, step: int, epoch: int, samples: np.ndarray) -> None:
        result = metrics.evaluate(self.images, samples, self.cfg.seed, self.inception)
        # The monitor's own record has this epoch's diversity; this one has the distances.
        self.writers.write_scalars(step, Kind.EVALUATION, {
            "epoch": epoch, "swd": result["swd"], "swd_levels": result["swd_levels"],
            **{k: result[k] for k in ("fid", "kid", "kid_std") if result.get(k) is not None},
            "eval_samples": result["num"]})
        evals = self.writers.history.evaluations()
        series = {"SWD (x1e3)": ([r["epoch"] for r in evals], [r["swd"] for r in evals])}
        with_fid = [r for r in evals if "fid" in r]
        if with_fid:
            series[f"FID ({self.cfg.fid_mode})"] = ([r["epoch"] for r in with_fid],
                                                   [r["fid"] for r in with_fid])
        with_kid = [r for r in evals if "kid" in r]
        if with_kid:
            series["KID (x1e3)"] = ([r["epoch"] for r in with_kid],
                                    [1e3 * r["kid"] for r in with_kid])
        plots.plot_curves(series, self.directory.file("quality.png"), "Epoch", "Distance")

    def animate(self) -> None:
        """progress.webp, of at most ANIMATION_FRAMES grids (the first and the last always).
        A picture that cannot be made is a warning: it must not end the run."""
        self.last_animation = time.perf_counter()
        grids = len(pictures.epoch_grids(self.directory.samples))
        if not grids:
            return
        try:
            pictures.animate_grids(self.directory.samples,
                                   self.directory.file(pictures.ANIMATION),
                                   every=-(-grids // ANIMATION_FRAMES))
        except (UserError, OSError) as e:  # a grid that does not read, a full disk
            warnings.warn(f"progress.webp is not updated: {e}")

    def final_pictures(self) -> None:
        """The loss plot, the animation, and the data's images beside the last grid's."""
        self.plot_losses()
        self.animate()
        if self.last_grid is not None:
            step, grid = self.last_grid
            picture = pictures.real_beside_fake(self.real, grid)
            save_png(picture, self.directory.file("real_vs_fake.png"))
            self.writers.write_images(step, {"real_vs_fake": picture})

    def plot_losses(self) -> None:
        self.last_plot = time.perf_counter()
        steps, d_loss, g_loss = self.writers.history.loss_arrays()
        plots.plot_losses(steps, d_loss, g_loss, self.directory.file("losses.png"),
                          self.plan.steps_per_epoch)

    def rewind(self, best_diversity: float) -> None:
        """Forget the epochs not yet monitored, and let the outputs under way finish (before
        the writers drop what came after the checkpoint): the loop goes back to it."""
        self.pending.clear()
        self.background.wait()
        self.background.check()
        self.best_diversity = best_diversity
        self.last_epoch = time.perf_counter()

    def __enter__(self) -> "EpochEnd":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        """After a completed run everything is written and the loss plot is final; a run that
        stopped (a signal, diverged losses) gives the outputs under way a minute; one that
        failed, or a second Ctrl-C, leaves them."""
        if exc_type is None:
            self.collect(wait=True)
            self.background.submit(self.final_pictures)
            self.background.wait()
            self.background.check()
        elif issubclass(exc_type, TrainingStopped):
            self.background.wait(STOP_WAIT_SECONDS)
        self.background.close()


class NoEpochEnd:
    """For processes other than the first, which write nothing."""
    best_diversity = 0.0

    def start(self, state, step: int, grid) -> None:
        pass

    def collect(self, wait: bool = False, stop_requested=None) -> None:
        pass

    def rewind(self, best_diversity: float) -> None:
        pass

    def __enter__(self) -> "NoEpochEnd":
        return self

    def __exit__(self, *exc) -> None:
        pass
