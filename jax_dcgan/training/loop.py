"""The training loop: the lecture's notebook as a tool for one CPU, one GPU or all devices.

`train` runs the dispatch plan (`dispatch.py`): device calls of several steps each,
kept queued on the device while the host writes the metrics of earlier calls
(`writers.py`) and does each epoch's outputs (`epoch_end.py`). Resuming reproduces
the uninterrupted run exactly: the data order, the noise and the calls are
functions of the global step, and the steps per call are kept with each checkpoint.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import os
import signal
import time
import warnings
from typing import Callable

import jax
import numpy as np

from jax_dcgan.common import runtime
from jax_dcgan.common.errors import Diverged, Interrupted, UserError
from jax_dcgan.config import Config, StepConfig
from jax_dcgan.data import dataset
from jax_dcgan.model import convert
from jax_dcgan.model.step import METRICS, TrainState, check_fits, create_train_state, metrics_dict
from jax_dcgan.outputs.plots import Kind
from jax_dcgan.outputs.sample import GRID_IMAGES, draw_noise, grid_pass, sampling_generator
from jax_dcgan.training import checkpoint, distributed, rundir
from jax_dcgan.training.checkpoint import Progress
from jax_dcgan.training.dispatch import Dispatch, Plan, choose_steps_per_dispatch, time_one_step
from jax_dcgan.training.epoch_end import EpochEnd, NoEpochEnd
from jax_dcgan.training.feeding import Batches, Feed, fits_on_device
from jax_dcgan.training.parallel import Parallelism, select_devices
from jax_dcgan.training.writers import Writers, open_writers

__all__ = ["Divergence", "Run", "train"]

MAX_ROLLBACKS = 3


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first step whose losses are not finite."""
    step: int
    losses: dict[str, float]


@dataclasses.dataclass
class Run:
    """One training run's parts, which the loop and its helpers share."""
    cfg: Config
    step_cfg: StepConfig   # the step as it runs: --conv-impl decided for the devices
    parallelism: Parallelism
    plan: Plan
    directory: rundir.RunDir
    checkpoints: checkpoint.Checkpoints
    writers: Writers
    progress: Progress
    feed: Feed
    pending: PendingMetrics
    signals: StopSignals
    images: dataclasses.InitVar[np.ndarray]  # the first process's epoch ends show them
    primary: dataclasses.InitVar[bool]
    epoch_end: EpochEnd | NoEpochEnd = dataclasses.field(init=False)
    rollbacks: int = dataclasses.field(init=False, default=0)
    last_save: float = dataclasses.field(init=False)  # time.monotonic() of the last save

    def __post_init__(self, images: np.ndarray, primary: bool):
        self.epoch_end = EpochEnd(self, images) if primary else NoEpochEnd()
        self.last_save = time.monotonic()


def train(cfg: Config, out: str, resume: bool = False, quiet: bool = False) -> TrainState:
    """Train as `cfg` says, writing everything under `out`; returns the final state."""
    cfg.validate()
    advice = functools.partial(checkpoint.restart_advice,
                               rundir.RunDir(os.path.abspath(out)).checkpoints)
    with runtime.float64_mode(cfg.dtype), distributed.watching_peers(advice):
        return _train(cfg, out, resume, quiet)


def _train(cfg: Config, out: str, resume: bool, quiet: bool) -> TrainState:
    parallelism = Parallelism(select_devices(cfg))
    step_cfg = cfg.step_config(cfg.numerics(parallelism.platform))
    check_fits(step_cfg.model, cfg.batch_size,
               runtime.device_free_bytes(parallelism.devices[0]), parallelism.device_count)
    primary = distributed.is_primary()
    quiet = quiet or not primary
    # The first process checks and prepares the directory (before decoding any data).
    directory = (rundir.prepare(out, cfg, resume) if primary
                 else rundir.RunDir(os.path.abspath(out)))
    images = load_images(cfg, primary, quiet)
    steps_per_epoch = len(images) // cfg.batch_size
    if cfg.compilation_cache:
        runtime.enable_compilation_cache(dataset.cache_root(cfg))
    checkpoints = checkpoint.Checkpoints(directory.checkpoints, cfg.keep_checkpoints)
    state, progress = initial_state(step_cfg, cfg.seed, checkpoints, parallelism, resume)
    start = int(state.step)

    step_fn = parallelism.step_function(step_cfg)
    resident = parallelism.processes == 1 and (
        {"yes": True, "no": False}.get(cfg.data_on_device)
        or fits_on_device(images.nbytes, parallelism.devices[0]))
    batches = Batches(images, cfg.batch_size, cfg.seed, parallelism, resident)
    plan = Plan(steps_per_epoch, cfg.steps or cfg.epochs * steps_per_epoch,
                cfg.checkpoint_every, steps_per_dispatch=1)
    state = parallelism.put(state)
    k, step_ms = kept_steps_per_dispatch(cfg, progress, parallelism, plan.segments()), None
    if k is None:
        batch = batches.get(min(start, plan.total_steps - 1), 1)
        k, step_ms = measured_steps_per_dispatch(step_fn, state, batch, plan.segments())
    plan = dataclasses.replace(plan, steps_per_dispatch=k)
    progress = dataclasses.replace(progress, steps_per_dispatch=k, platform=parallelism.platform,
                                   device_count=parallelism.device_count)
    if primary:
        rundir.record_start(directory, {
            "step": start, "conv_impl": step_cfg.model.numerics.conv, "steps_per_dispatch": k,
            "step_ms": step_ms, "data_on_device": resident,
            **rundir.environment(parallelism.devices)})
    if not quiet:
        print(f"jax-dcgan: steps {start}..{plan.total_steps} of {steps_per_epoch} batches of "
              f"{cfg.batch_size} per epoch ({len(images)} images, "
              f"{'on device' if resident else 'streamed'}) on {parallelism.device_count} "
              f"{parallelism.platform} device(s), {parallelism.processes} process(es); "
              f"{step_cfg.model.numerics.conv} convolutions, {k} steps per call; writing to "
              f"{directory.path}")

    run = Run(cfg, step_cfg, parallelism, plan, directory, checkpoints,
              open_writers(directory if primary else None, plan, cfg, start, quiet), progress,
              Feed(plan, batches, start), PendingMetrics(cfg.batch_size), StopSignals(),
              images, primary)
    grid_fn = parallelism.per_replica(functools.partial(grid_pass, step_cfg.model))
    grid_noise = draw_noise(cfg.latent_dim, GRID_IMAGES, cfg.seed)
    with _reporting_file_errors(run), run.writers, run.epoch_end, run.signals, run.feed:
        for dispatch, batch in run.feed:
            state, metrics = step_fn(state, batch)
            run.pending.add(dispatch, metrics)
            run.writers.console.advance(dispatch.count)
            save, stop = save_or_stop(run, dispatch)
            due = save or stop or plan.is_sync_point(dispatch, cfg.log_every)
            divergence = write_metrics(run, everything=save or stop) if due else None
            if divergence is not None:
                state = roll_back(run, divergence)
                continue
            if plan.is_epoch_end(dispatch.end):
                state, grid = epoch_grid(grid_fn, state, grid_noise, cfg.grid_updates_stats)
                run.epoch_end.start(parallelism.first_copy(state), dispatch.end,
                                    parallelism.first_copy(grid))
            run.epoch_end.collect(wait=save or stop, stop_requested=run.signals.requested)
            if save or stop:
                save_checkpoint(run, state)
            if stop:
                raise interrupted(run)
    state = parallelism.first_copy(state)
    if primary:
        export_torch(state, step_cfg.model, directory.file("model.pt"), quiet)
    return state


def epoch_grid(grid_fn: Callable, state: TrainState, noise, updates_stats: bool):
    """(state, the epoch's grid). The lecture draws its grid with G in train mode, which
    moves G's running statistics; with an EMA the grid shows the average's samples, while
    the statistics move as a pass of the trained weights would move them."""
    grid, stats = grid_fn(sampling_generator(state), noise)
    if not updates_stats:
        return state, grid
    if state.g_ema:
        stats = grid_fn(state.generator, noise)[1]
    return state.replace(generator={**state.generator, "batch_stats": stats}), grid


def load_images(cfg: Config, primary: bool, quiet: bool) -> np.ndarray:
    """The dataset; the first process builds the cache, the others then read it (if shared)."""
    if primary:
        images = dataset.load_dataset(cfg, quiet=quiet)
    distributed.barrier("dataset cache ready")
    if not primary:
        images = dataset.load_dataset(cfg, quiet=True)
    if len(images) < cfg.batch_size:
        raise UserError(f"The dataset has {len(images)} images, fewer than one batch of "
                        f"{cfg.batch_size}; lower --batch-size or add images.")
    return images


def initial_state(step_cfg: StepConfig, seed: int, checkpoints: checkpoint.Checkpoints,
                  parallelism: Parallelism, resume: bool) -> tuple[TrainState, Progress]:
    """The latest checkpoint's state and progress when resuming, else a fresh state."""
    if resume and checkpoints.latest_step() is not None:
        state, _, progress = checkpoints.restore(sharding=parallelism.restore_sharding())
        return state, progress
    return create_train_state(step_cfg, seed), Progress()


def kept_steps_per_dispatch(cfg: Config, progress: Progress, parallelism: Parallelism,
                            segments: collections.Counter) -> int | None:
    """K from the flag, else the choice this run made before on the same devices (for an
    exact resume); at most the longest segment, since calls end at epoch ends and checkpoint
    steps. None: measure it."""
    if cfg.steps_per_dispatch:
        return min(cfg.steps_per_dispatch, max(segments))
    if (progress.platform, progress.device_count) == (parallelism.platform,
                                                      parallelism.device_count):
        return min(progress.steps_per_dispatch, max(segments))
    return None


def measured_steps_per_dispatch(step_fn: Callable, state, batch, segments: collections.Counter
                                ) -> tuple[int, float]:
    """(K, ms per step) from the time of one step on `batch`, the same K on every process."""
    seconds = time_one_step(step_fn, state, batch)
    return distributed.agree(choose_steps_per_dispatch(seconds, segments)), 1e3 * seconds


def save_or_stop(run: Run, dispatch: Dispatch) -> tuple[bool, bool]:
    """(save a checkpoint now, stop now). Processes agree on the clock and on signals only
    where all of them record metrics, so no call waits for the others in between."""
    cfg, plan = run.cfg, run.plan
    scheduled = plan.is_checkpoint_step(dispatch.end)
    minutes = (cfg.checkpoint_minutes
               and time.monotonic() - run.last_save >= 60 * cfg.checkpoint_minutes)
    if run.parallelism.processes == 1:
        return scheduled or bool(minutes), run.signals.requested()
    if not plan.is_sync_point(dispatch, cfg.log_every):
        return scheduled, False
    minutes, stop = distributed.any_process(bool(minutes), run.signals.requested())
    return scheduled or minutes, stop


class PendingMetrics:
    """Metrics of dispatched calls, left on the device until the loop records them. At most
    two calls run ahead of the host, which keeps the progress bar honest and a stop prompt."""

    def __init__(self, batch_size: int, depth: int = 2):
        self.batch_size, self.depth = batch_size, depth
        self.calls: list[tuple[Dispatch, jax.Array]] = []
        self.since = time.perf_counter()

    def add(self, dispatch: Dispatch, metrics: jax.Array) -> None:
        self.calls.append((dispatch, metrics))
        if len(self.calls) > self.depth:
            jax.block_until_ready(self.calls[-self.depth - 1][1])

    def take(self, everything: bool) -> tuple[list[tuple[int, np.ndarray]], float]:
        """(step, metrics) of every finished step (of all calls but the newest unless
        `everything`, so that the device is not left idle), and images/s since the last take."""
        n = len(self.calls) if everything else len(self.calls) - 1
        taken, self.calls = self.calls[:n], self.calls[n:]
        values = jax.device_get([m for _, m in taken])
        now = time.perf_counter()
        steps = sum(d.count for d, _ in taken)
        rate, self.since = steps * self.batch_size / max(now - self.since, 1e-9), now
        rows = [(d.step + i, row) for (d, _), v in zip(taken, values)
                for i, row in enumerate(np.asarray(v).reshape(-1, d.count, len(METRICS))[0])]
        return rows, rate

    def clear(self) -> None:
        self.calls = []


def write_metrics(run: Run, everything: bool) -> Divergence | None:
    """Write the metrics of finished steps; the first step whose losses are not finite, if
    any (nothing from it on is written)."""
    rows, rate = run.pending.take(everything)
    for step, row in rows:
        values = metrics_dict(row)
        if not np.all(np.isfinite(row)):
            return Divergence(step, values)
        epoch, batch = divmod(step, run.plan.steps_per_epoch)
        run.writers.write_scalars(step + 1, Kind.STEP, {
            "epoch": epoch + 1, "batch": batch, **values, "images_per_s": round(rate, 1)})
    return None


def save_checkpoint(run: Run, state: TrainState) -> None:
    """Checkpoint the placed `state` with the run's progress (its best diversity as of now)."""
    run.progress = dataclasses.replace(run.progress,
                                       best_diversity=run.epoch_end.best_diversity)
    run.checkpoints.save(run.parallelism.savable(state), run.cfg, run.progress)
    run.last_save = time.monotonic()


def roll_back(run: Run, divergence: Divergence) -> TrainState:
    """Stop with Diverged, or (with --on-nonfinite rollback) go back to the last checkpoint
    with a new noise stream; returns the placed state to continue from."""
    run.rollbacks += 1
    message = (f"Training diverged at step {divergence.step + 1}: the losses are not finite "
               f"(g_loss={divergence.losses['g_loss']}, d_loss={divergence.losses['d_loss']}).")
    checkpoints = run.checkpoints
    checkpoints.wait()
    last = checkpoints.latest_step()
    if run.cfg.on_nonfinite != "rollback" or last is None or run.rollbacks > MAX_ROLLBACKS:
        kept = (f"The last good checkpoint (step {last}) is kept" if last is not None
                else "No checkpoint had been written yet")
        raise Diverged(f"{message} {kept} in {checkpoints.directory}. Resume it with --resume "
                       "(perhaps with lower learning rates), or use --on-nonfinite rollback.")
    state, _, progress = checkpoints.restore(last, sharding=run.parallelism.restore_sharding())
    state = state.replace(rng=jax.random.fold_in(state.rng, 1_000_003 * run.rollbacks))
    # The epoch outputs first: they may still be writing.
    run.epoch_end.rewind(progress.best_diversity)
    run.writers.rewind(last)
    run.writers.write_scalars(last, Kind.ROLLBACK, {"rollback": run.rollbacks, "reason": message})
    run.pending.clear()
    run.feed.restart(last)
    warnings.warn(f"{message} Rolled back to step {last} with a new noise stream "
                  f"({run.rollbacks}/{MAX_ROLLBACKS}).")
    return run.parallelism.put(state)


def interrupted(run: Run) -> Interrupted:
    """The exception a stopped run ends with; no signal here: another process got one."""
    signum = run.signals.received
    run.checkpoints.wait()
    cause = (f"Stopped by {signal.Signals(signum).name}" if signum else
             "Stopped because another process of this run received a signal")
    return Interrupted(f"{cause}; the last checkpoint (step {run.checkpoints.latest_step()}) is "
                       f"in {run.checkpoints.directory}. Continue with --resume.",
                       signum or signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM ask the loop to checkpoint and stop; a second SIGINT stops at once."""

    def __init__(self):
        self.received: int | None = None

    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> "StopSignals":
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT,
                                                                      signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _reporting_file_errors(run: Run):
    """A file that cannot be written (metrics, grids, plots) or read (the dataset cache) ends
    the run with a UserError that names the intact checkpoints (the checkpoints' own errors
    say so already); the checkpoints are finished and closed either way."""
    checkpoints = run.checkpoints
    try:
        yield
    except OSError as e:
        checkpoints.wait()
        raise UserError(f"A file operation failed ({e}). Checkpoints up to step "
                        f"{checkpoints.latest_step()} are intact in {checkpoints.directory}; "
                        f"free space or fix the permissions under {run.directory.path} or of "
                        "the dataset cache, then continue with --resume.") from None
    finally:
        checkpoints.close()


def export_torch(state: TrainState, model, path: str, quiet: bool) -> None:
    """The final model in the lecture's PyTorch format, when torch is installed."""
    try:
        convert.save_torch_file(convert.to_state_dict(
            {"generator": state.generator, "discriminator": state.discriminator}, model), path)
    except UserError as e:
        warnings.warn(f"model.pt was not written: {e}")
        return
    if not quiet:
        print(f"jax-dcgan: wrote {path} (loads into the lecture's DCGAN with strict=True)")
