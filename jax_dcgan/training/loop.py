"""The training loop: the lecture's notebook as a tool for one CPU, one GPU or all devices.

`train` runs the dispatch plan (`dispatch.py`): device calls of several steps each,
kept queued on the device while the host writes the metrics of earlier calls
(`writers.py`) and does each epoch's outputs (`epoch_end.py`). Resuming reproduces
the uninterrupted run exactly: the data order, the noise and the calls are
functions of the global step, and the steps per call are kept with each checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import time
import warnings

import jax
import numpy as np

from jax_dcgan.common import runtime

from jax_dcgan.data import dataset

from jax_dcgan.model import convert

from jax_dcgan.training import checkpoint, distributed, rundir
from jax_dcgan.config import Config
from jax_dcgan.training.dispatch import Dispatch, Plan, choose_steps_per_dispatch, time_one_step
from jax_dcgan.training.epoch_end import EpochEnd, NoEpochEnd
from jax_dcgan.common.errors import Diverged, Interrupted, UserError
from jax_dcgan.training.feeding import Batches, Feed, fits_on_device
from jax_dcgan.model.layers import resolve_conv_impl
from jax_dcgan.training.parallel import Layout, select_devices
from jax_dcgan.outputs.sample import GRID_IMAGES, draw_noise, grid_pass, sampling_generator
from jax_dcgan.model.step import METRICS, TrainState, check_fits, create_train_state, metrics_dict
from jax_dcgan.training.writers import Writers, open_writers

MAX_ROLLBACKS = 3


def train(cfg: Config, out: str, resume: bool = False, quiet: bool = False) -> TrainState:
    """Train as `cfg` says, writing everything under `out`; returns the final state."""
    cfg.validate()
    advice = functools.partial(checkpoint.restart_advice,
                               rundir.RunDir(os.path.abspath(out)).checkpoints)
    with runtime.float64_mode(cfg.dtype), distributed.watching_peers(advice):
        return _train(cfg, out, resume, quiet)


def _train(cfg: Config, out: str, resume: bool, quiet: bool) -> TrainState:
    layout = Layout(select_devices(cfg))
    check_fits(cfg, runtime.device_free_bytes(layout.devices[0]), layout.device_count)
    primary = distributed.is_primary()
    quiet = quiet or not primary
    # The first process checks and prepares the directory (before decoding any data).
    run = rundir.prepare(out, cfg, resume) if primary else rundir.RunDir(os.path.abspath(out))
    images = load_images(cfg, primary, quiet)
    steps_per_epoch = len(images) // cfg.batch_size
    if cfg.compilation_cache:
        runtime.enable_compilation_cache(dataset.cache_root(cfg))
    checkpoints = checkpoint.Checkpoints(run.checkpoints, cfg.keep_checkpoints)
    state, progress = initial_state(cfg, checkpoints, layout, resume)
    start = int(state.step)

    # What runs may differ from what was asked (`auto`); the checkpoints keep what was asked.
    run_cfg = cfg.replace(conv_impl=resolve_conv_impl(cfg.conv_impl, layout.platform))
    step_fn = layout.step_function(run_cfg)
    resident = layout.processes == 1 and ({"yes": True, "no": False}.get(cfg.data_on_device)
                                          or fits_on_device(images.nbytes, layout.devices[0]))
    batches = Batches(images, cfg.batch_size, cfg.seed, steps_per_epoch, layout, resident)
    plan = Plan(steps_per_epoch, cfg.steps or cfg.epochs * steps_per_epoch,
                cfg.checkpoint_every, steps_per_dispatch=1)
    state = layout.put(state)
    k, step_ms = steps_per_dispatch(cfg, progress, layout, plan, step_fn, state, batches, start)
    plan = dataclasses.replace(plan, steps_per_dispatch=k)
    progress.update(steps_per_dispatch=k, platform=layout.platform,
                    device_count=layout.device_count)
    if primary:
        rundir.record_start(run, {"step": start, "conv_impl": run_cfg.conv_impl,
                                  "steps_per_dispatch": k, "step_ms": step_ms,
                                  "data_on_device": resident, **rundir.environment(layout.devices)})
    if not quiet:
        print(f"jax-dcgan: steps {start}..{plan.total_steps} of {steps_per_epoch} batches of "
              f"{cfg.batch_size} per epoch ({len(images)} images, "
              f"{'on device' if resident else 'streamed'}) on {layout.device_count} "
              f"{layout.platform} device(s), {layout.processes} process(es); "
              f"{run_cfg.conv_impl} convolutions, {k} steps per call; writing to {run.path}")

    writers, console, history = open_writers(run, plan, cfg.log_every, start, cfg.tensorboard,
                                             primary, quiet)
    epoch_end = (EpochEnd(run, cfg, run_cfg.model, plan, images, writers, console, history,
                          progress.get("best_diversity", 0.0)) if primary else NoEpochEnd())
    grid_fn = layout.per_replica(functools.partial(grid_pass, run_cfg.model))
    grid_noise = draw_noise(cfg.latent_dim, GRID_IMAGES, cfg.seed)
    feed, pending = Feed(plan, batches, start), PendingMetrics(cfg.batch_size)
    signals, rollbacks, last_save = StopSignals(), 0, time.monotonic()
    with _reporting_file_errors(run, checkpoints), writers, epoch_end, signals, feed:
        for dispatch, batch in feed:
            state, metrics = step_fn(state, batch)
            pending.add(dispatch, metrics)
            console.advance(dispatch.count)
            save, stop = decide(plan, dispatch, cfg, last_save, signals.received, layout)
            due = save or stop or plan.is_sync_point(dispatch, cfg.log_every)
            diverged = due and record(pending, writers, plan, everything=save or stop)
            if diverged:
                rollbacks += 1
                state = roll_back(diverged, rollbacks, cfg, checkpoints, layout, writers,
                                  epoch_end, feed, pending)
                continue
            if plan.is_epoch_end(dispatch.end):
                state, grid = epoch_grid(grid_fn, state, grid_noise, cfg.grid_updates_stats)
                epoch_end.start(layout.local(state), dispatch.end, layout.local(grid))
            epoch_end.collect(wait=save or stop,
                              stop_requested=lambda: signals.received is not None)
            if save or stop:
                checkpoints.save(layout.savable(state), cfg,
                                 {**progress, "best_diversity": epoch_end.best_diversity})
                last_save = time.monotonic()
            if stop:
                raise interrupted(signals.received, checkpoints)
    state = layout.local(state)
    if primary:
        export_torch(state, cfg.model, run.file("model.pt"), quiet)
    return state


def epoch_grid(grid_fn, state: TrainState, noise, updates_stats: bool):
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


def initial_state(cfg: Config, checkpoints: checkpoint.Checkpoints, layout: Layout,
                  resume: bool) -> tuple[TrainState, dict]:
    """The latest checkpoint's state and progress when resuming, else a fresh state."""
    if resume and checkpoints.latest_step() is not None:
        state, _, progress = checkpoints.restore(sharding=layout.restore_sharding())
        return state, progress
    return create_train_state(cfg), {}


def steps_per_dispatch(cfg: Config, progress: dict, layout: Layout, plan: Plan, step_fn,
                       state, batches: Batches, start: int) -> tuple[int, float | None]:
    """(K, measured ms per step or None): the flag if given, else the choice this run made
    before on the same devices (for an exact resume), else one measured now; at most the
    longest segment, since calls end at epoch ends and checkpoint steps."""
    segments = plan.segments()
    if cfg.steps_per_dispatch:
        return min(cfg.steps_per_dispatch, max(segments)), None
    if (progress.get("platform"), progress.get("device_count")) == (layout.platform,
                                                                    layout.device_count):
        return min(progress["steps_per_dispatch"], max(segments)), None
    seconds = time_one_step(step_fn, state, batches.get(min(start, plan.total_steps - 1), 1))
    return distributed.agree(choose_steps_per_dispatch(seconds, segments)), 1e3 * seconds


def decide(plan: Plan, dispatch: Dispatch, cfg: Config, last_save: float,
           signal_received: int | None, layout: Layout) -> tuple[bool, bool]:
    """(save a checkpoint now, stop now). Processes agree on the clock and on signals only
    where all of them record metrics, so no call waits for the others in between."""
    scheduled = plan.is_checkpoint_step(dispatch.end)
    minutes = cfg.checkpoint_minutes and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
    if layout.processes == 1:
        return scheduled or bool(minutes), signal_received is not None
    if not plan.is_sync_point(dispatch, cfg.log_every):
        return scheduled, False
    minutes, stop = distributed.any_process(bool(minutes), signal_received is not None)
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


def record(pending: PendingMetrics, writers: Writers, plan: Plan, everything: bool
           ) -> tuple[int, dict] | None:
    """Write the metrics of finished steps; (step, metrics) of the first whose losses are not
    finite, if any (nothing from it on is written)."""
    rows, rate = pending.take(everything)
    for step, row in rows:
        values = metrics_dict(row)
        if not np.all(np.isfinite(row)):
            return step, values
        epoch, batch = divmod(step, plan.steps_per_epoch)
        writers.write_scalars(step + 1, {"epoch": epoch + 1, "batch": batch, **values,
                                         "images_per_s": round(rate, 1)})
    return None


def roll_back(diverged: tuple[int, dict], rollbacks: int, cfg: Config,
              checkpoints: checkpoint.Checkpoints, layout: Layout, writers: Writers, epoch_end,
              feed: Feed, pending: PendingMetrics):
    """Stop with Diverged, or (with --on-nonfinite rollback) go back to the last checkpoint
    with a new noise stream; returns the placed state to continue from."""
    step, values = diverged
    message = (f"Training diverged at step {step + 1}: the losses are not finite "
               f"(g_loss={values['g_loss']}, d_loss={values['d_loss']}).")
    checkpoints.wait()
    last = checkpoints.latest_step()
    if cfg.on_nonfinite != "rollback" or last is None or rollbacks > MAX_ROLLBACKS:
        kept = (f"The last good checkpoint (step {last}) is kept" if last is not None
                else "No checkpoint had been written yet")
        raise Diverged(f"{message} {kept} in {checkpoints.directory}. Resume it with --resume "
                       "(perhaps with lower learning rates), or use --on-nonfinite rollback.")
    state, _, progress = checkpoints.restore(last, sharding=layout.restore_sharding())
    state = state.replace(rng=jax.random.fold_in(state.rng, 1_000_003 * rollbacks))
    epoch_end.rewind(progress.get("best_diversity", 0.0))  # first: it may still be writing
    writers.rewind(last)
    writers.write_scalars(last, {"rollback": rollbacks, "reason": message})
    pending.clear()
    feed.restart(last)
    warnings.warn(f"{message} Rolled back to step {last} with a new noise stream "
                  f"({rollbacks}/{MAX_ROLLBACKS}).")
    return layout.put(state)


def interrupted(signum: int | None, checkpoints: checkpoint.Checkpoints) -> Interrupted:
    """The exception a stopped run ends with; `signum` None: another process got the signal."""
    checkpoints.wait()
    cause = (f"Stopped by {signal.Signals(signum).name}" if signum else
             "Stopped because another process of this run received a signal")
    return Interrupted(f"{cause}; the last checkpoint (step {checkpoints.latest_step()}) is in "
                       f"{checkpoints.directory}. Continue with --resume.",
                       signum or signal.SIGTERM)


class StopSignals:
    """SIGINT and SIGTERM ask the loop to checkpoint and stop; a second SIGINT stops at once."""

    def __init__(self):
        self.received: int | None = None

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
def _reporting_file_errors(run: rundir.RunDir, checkpoints: checkpoint.Checkpoints):
    """A file that cannot be written (metrics, grids, plots) or read (the dataset cache) ends
    the run with a UserError that names the intact checkpoints (the checkpoints' own errors
    say so already); the checkpoints are finished and closed either way."""
    try:
        yield
    except OSError as e:
        checkpoints.wait()
        raise UserError(f"A file operation failed ({e}). Checkpoints up to step "
                        f"{checkpoints.latest_step()} are intact in {checkpoints.directory}; "
                        f"free space or fix the permissions under {run.path} or of the dataset "
                        "cache, then continue with --resume.") from None
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
