"""The training loop: the lecture's notebook as a tool for one CPU, one GPU or all devices.

The loop only plans and records. Each dispatch runs `steps_per_dispatch` steps on
the device(s) (`step.train_steps`), batches are gathered on the device from a
device-resident copy of the dataset (or streamed from the memory-mapped cache
when it does not fit), and metrics stay on the device until a log interval, an
epoch end or a checkpoint needs them. Resuming reproduces the uninterrupted run
exactly: the data order, the noise and the chunking of steps into dispatches are
all functions of the global step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import threading
import time
import warnings

import jax
import numpy as np
from tqdm.auto import tqdm

from jax_dcgan import checkpoint, data, distributed, metrics, plots, sample
from jax_dcgan.config import Config
from jax_dcgan.errors import UserError
from jax_dcgan.step import (METRICS, TrainState, create_train_state, device_sharding,
                            jit_train_steps, pmap_train_steps, replicate, unreplicate)

# Fields a resumed run may change: how long and how it runs, not what it computes.
RESUMABLE_CHANGES = ("epochs", "steps", "log_every", "checkpoint_every", "keep_checkpoints",
                     "devices", "steps_per_dispatch", "data_on_device", "cache_dir",
                     "eval_every", "eval_samples", "on_nonfinite")
MAX_ROLLBACKS = 3
FIXED_NOISE = 64  # the lecture's 8x8 grid


@dataclasses.dataclass
class Run:
    """Where a run writes, and how its steps map onto epochs."""
    out: str
    cfg: Config
    steps_per_epoch: int
    total_steps: int

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.out, "metrics.jsonl")

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def boundaries(self, step: int) -> int:
        """The next step at which the loop must stop dispatching: epoch end, checkpoint, end."""
        nxt = min((self.epoch_of(step) + 1) * self.steps_per_epoch, self.total_steps)
        every = self.cfg.checkpoint_every
        return min(nxt, (step // every + 1) * every)


def prepare_output(out: str, cfg: Config, resume: bool) -> None:
    """Refuse to mix two configurations in one directory; write config.json for a new run."""
    path = os.path.join(out, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = Config.from_dict(json.load(f))
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"{path} is unreadable ({e}); move the directory aside or fix it.") \
                from None
        if not resume:
            raise UserError(f"{out!r} already holds a training run. Continue it with --resume, "
                            "or choose another --out so that nothing in it is overwritten.")
        for f in dataclasses.fields(Config):
            if f.name not in RESUMABLE_CHANGES and getattr(previous, f.name) != getattr(cfg, f.name):
                raise UserError(
                    f"--resume: the run in {out!r} was made with --{f.name.replace('_', '-')} "
                    f"{getattr(previous, f.name)!r}, not {getattr(cfg, f.name)!r}. A resumed run "
                    "must compute the same thing; only these may change: "
                    f"{', '.join(RESUMABLE_CHANGES)}.")
    elif os.path.isdir(out) and os.listdir(out):
        raise UserError(f"{out!r} is not empty and holds no training run; choose another --out.")
    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    _write_atomic(path, cfg.to_json())


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def truncate_metrics(path: str, last_step: int) -> None:
    """Keep the records up to `last_step` (what the checkpoint being resumed has seen)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if record.get("step", 0) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
    _write_atomic(path, "".join(kept))


class Batches:
    """Device-ready uint8 batches for a run of steps: (K, B, ...) for jit, (D, K, B/D, ...)
    for pmap over this process's D devices. With several processes each one takes its own
    contiguous part of every global batch, so it reads only its share of each epoch."""

    def __init__(self, images: np.ndarray, cfg: Config, devices: list, resident: bool):
        self.images, self.cfg, self.devices, self.resident = images, cfg, devices, resident
        self.pmap_layout = pmap_layout = data_parallel(devices)
        single = jax.sharding.SingleDeviceSharding(devices[0])
        self.sharding = device_sharding(devices) if pmap_layout else single
        self._order_epoch, self._order = -1, None
        if resident:
            where = (jax.sharding.NamedSharding(self.sharding.mesh, jax.sharding.PartitionSpec())
                     if pmap_layout else single)
            self.on_device = jax.device_put(np.asarray(images), where)
            self._gather = jax.jit(lambda images, idx: images[idx], out_shardings=self.sharding)

    def indices(self, step: int, count: int, steps_per_epoch: int) -> np.ndarray:
        epoch, start = divmod(step, steps_per_epoch)
        if epoch != self._order_epoch:
            self._order_epoch = epoch
            self._order = data.epoch_order(self.cfg.seed, epoch, len(self.images))
        b, processes, p = self.cfg.batch_size, jax.process_count(), jax.process_index()
        idx = self._order[start * b:(start + count) * b].reshape(count, b).astype(np.int32)
        idx = idx[:, p * b // processes:(p + 1) * b // processes]
        if not self.pmap_layout:
            return idx
        d = len(self.devices)
        return idx.reshape(count, d, -1).swapaxes(0, 1)

    def get(self, step: int, count: int, steps_per_epoch: int) -> jax.Array:
        idx = self.indices(step, count, steps_per_epoch)
        if self.resident:
            return self._gather(self.on_device, jax.device_put(idx, self.sharding))
        batch = self.images[idx.reshape(-1)].reshape(idx.shape + self.images.shape[1:])
        return jax.device_put(batch, self.sharding)


def fits_on_device(nbytes: int, device) -> bool:
    """Whether a dataset this size can stay on `device` with room for training."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    else:  # host memory (CPU devices report none)
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return nbytes <= 0.3 * free


def _prefetch(plan, fetch, depth: int = 2):
    """Yield fetch(item) for each item of plan, computed `depth` ahead in a thread."""
    q: queue.Queue = queue.Queue(depth)
    done = object()

    def worker():
        try:
            for item in plan:
                q.put((item, fetch(*item)))
        except BaseException as e:  # hand it to the consumer
            q.put((None, e))
        q.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while (got := q.get()) is not done:
        if isinstance(got[1], BaseException):
            raise got[1]
        yield got


class Diverged(UserError):
    """The losses stopped being finite."""
    exit_code = 3


class Interrupted(UserError):
    """SIGINT or SIGTERM: the state was checkpointed first. Exits with 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class _Interrupt:
    """SIGINT/SIGTERM ask the loop to checkpoint and stop; a second SIGINT stops at once."""

    def __init__(self):
        self.signal: int | None = None

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def data_parallel(devices: list) -> bool:
    """Whether the run uses the pmap step (more than one device in all)."""
    return len(devices) > 1 or jax.process_count() > 1


def select_devices(cfg: Config) -> list:
    """This process's devices for the run; with several processes, all of them."""
    available = jax.local_devices()
    if jax.process_count() > 1 and cfg.devices not in (0, len(available)):
        raise UserError("--devices cannot be used in a multi-process run: every process uses "
                        f"all its devices ({len(available)} here).")
    if cfg.devices > len(available):
        raise UserError(f"--devices {cfg.devices} asks for more devices than the "
                        f"{len(available)} this process has ({available[0].platform}).")
    devices = available[:cfg.devices or len(available)]
    total = len(devices) * jax.process_count()
    if cfg.batch_size % total:
        raise UserError(
            f"--batch-size {cfg.batch_size} does not split evenly over {total} devices; "
            f"use a multiple of {total}" + (" or set --devices." if jax.process_count() == 1
                                            else "."))
    return devices


def plan_dispatches(run: Run, start: int):
    """(first step, number of steps) per device call; a function of the global step only."""
    k, step = run.cfg.steps_per_dispatch, start
    while step < run.total_steps:
        count = min(k - step % k, run.boundaries(step) - step)
        yield step, count
        step += count


class Recorder:
    """metrics.jsonl, the lecture's console lines and the progress bar."""

    def __init__(self, run: Run, bar: tqdm, write: bool = True):
        self.run, self.bar, self.write = run, bar, write
        self.pending: list[tuple[int, int, dict]] = []
        self.last_time, self.last_step = time.perf_counter(), None
        self.epochs = math.ceil(run.total_steps / run.steps_per_epoch)

    def add(self, step: int, count: int, metrics: dict) -> None:
        self.pending.append((step, count, metrics))
        self.bar.update(count)
        if len(self.pending) > 2:  # keep the device busy but the bar honest
            jax.block_until_ready(self.pending[-3][2])

    def flush(self) -> None:
        """Fetch pending metrics, write them, print; raise Diverged on NaN/inf."""
        if not self.pending:
            return
        fetched = jax.device_get([m for _, _, m in self.pending])
        now = time.perf_counter()
        steps = sum(c for _, c, _ in self.pending)
        rate = steps * self.run.cfg.batch_size / max(now - self.last_time, 1e-9)
        lines, run = [], self.run
        for (first, count, _), metrics in zip(self.pending, fetched):
            for i in range(count):
                step = first + i
                values = {k: float(np.asarray(metrics[k]).reshape(-1, count)[0, i]) for k in METRICS}
                if not all(map(math.isfinite, values.values())):
                    self.pending = []
                    raise Diverged(
                        f"Training diverged at step {step + 1}: the losses are not finite "
                        f"(g_loss={values['g_loss']}, d_loss={values['d_loss']}).")
                epoch, batch = divmod(step, run.steps_per_epoch)
                record = {"step": step + 1, "epoch": epoch + 1, "batch": batch, **values,
                          "images_per_s": round(rate, 1)}
                lines.append(json.dumps(record) + "\n")
                if batch % run.cfg.log_every == 0 and not self.bar.disable:
                    self.bar.write(f"Epoch: {epoch + 1:03d}/{self.epochs:03d} | Batch "
                                   f"{batch:03d}/{run.steps_per_epoch:03d} | Gen/Dis Loss: "
                                   f"{values['g_loss']:.4f}/{values['d_loss']:.4f}")
        if self.write:
            with open(run.metrics_path, "a") as f:
                f.write("".join(lines))
        self.bar.set_postfix(g_loss=f"{values['g_loss']:.3f}", d_loss=f"{values['d_loss']:.3f}",
                             img_s=f"{rate:.0f}")
        self.pending, self.last_time = [], now

    def event(self, record: dict) -> None:
        if self.write:
            with open(self.run.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")


def train(cfg: Config, out: str, resume: bool = False, quiet: bool = False) -> TrainState:
    """Train as `cfg` says, writing everything under `out`; returns the final state."""
    cfg.validate()
    devices = select_devices(cfg)
    primary, processes = distributed.is_primary(), jax.process_count()
    quiet = quiet or not primary
    out = os.path.abspath(out)
    if primary:
        prepare_output(out, cfg, resume)  # checks before the (possibly long) data decoding
        images = data.load_dataset(cfg, quiet=quiet)
    distributed.barrier("output and dataset cache ready")
    if not primary:
        images = data.load_dataset(cfg, quiet=True)  # from the cache if it is shared
    steps_per_epoch = len(images) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"The dataset has {len(images)} images, fewer than one batch of "
                        f"{cfg.batch_size}; lower --batch-size or add images.")
    run = Run(out, cfg, steps_per_epoch, cfg.steps or cfg.epochs * steps_per_epoch)
    checkpoints = checkpoint.Checkpoints(os.path.join(out, checkpoint.RUN_SUBDIR),
                                         cfg.keep_checkpoints)
    on_all = distributed.replicated_sharding() if processes > 1 else None
    if resume and checkpoints.latest_step() is not None:
        state, _ = checkpoints.restore(sharding=on_all)
    else:
        state = create_train_state(cfg)
    start = int(state.step)
    if primary:
        truncate_metrics(run.metrics_path, start)

    # Several processes stream their own share of each batch instead of each holding it all.
    resident = processes == 1 and ({"yes": True, "no": False}.get(cfg.data_on_device)
                                   or fits_on_device(images.nbytes, devices[0]))
    parallel = data_parallel(devices)
    batches = Batches(images, cfg, devices, resident)
    step_fn = (pmap_train_steps(cfg, None if processes > 1 else devices) if parallel
               else jit_train_steps(cfg))
    place = (lambda s: replicate(s, devices)) if parallel else (lambda s: jax.device_put(s, devices[0]))
    single = unreplicate if parallel else (lambda s: s)
    to_save = distributed.to_replicated if processes > 1 else single

    if not quiet:
        print(f"jax-dcgan: {len(images)} images, {steps_per_epoch} batches of {cfg.batch_size} "
              f"per epoch, steps {start}..{run.total_steps} on {len(devices) * processes} "
              f"{devices[0].platform} device(s) in {processes} process(es), data "
              f"{'on device' if resident else 'streamed'}; writing to {out}")
    bar = tqdm(total=run.total_steps, initial=start, unit="step", dynamic_ncols=True,
               disable=quiet, desc="train")
    recorder = Recorder(run, bar, write=primary)
    end_of_epoch = EpochEnd(run, images, recorder, bar) if primary else None
    dev_state = place(state)
    rollbacks = 0
    try:
        with _Interrupt() as interrupt:
            while True:
                try:
                    for (step, count), batch in _prefetch(
                            plan_dispatches(run, int(single(dev_state).step)),
                            lambda s, c: batches.get(s, c, steps_per_epoch)):
                        dev_state, metrics = step_fn(dev_state, batch)
                        recorder.add(step, count, metrics)
                        end = step + count
                        epoch_end = end % steps_per_epoch == 0
                        save = end % cfg.checkpoint_every == 0 or end == run.total_steps
                        boundary = epoch_end or save or end // cfg.log_every > step // cfg.log_every
                        if boundary or interrupt.signal:
                            recorder.flush()
                        if epoch_end and end_of_epoch:
                            end_of_epoch(single(dev_state), end)
                        # Processes agree on a signal at boundaries, which all of them reach
                        # alike, so that no step waits for a collective between processes.
                        stop = bool(interrupt.signal) if processes == 1 else \
                            boundary and distributed.any_process(bool(interrupt.signal))
                        if save or stop:
                            checkpoints.save(to_save(dev_state), cfg)
                        if stop:
                            raise KeyboardInterrupt(interrupt.signal or signal.SIGTERM)
                    break
                except Diverged as e:
                    last = checkpoints.latest_step()
                    kept = (f"The last good checkpoint (step {last}) is kept" if last is not None
                            else "No checkpoint had been written yet")
                    if cfg.on_nonfinite != "rollback" or last is None or rollbacks >= MAX_ROLLBACKS:
                        raise Diverged(f"{e} {kept} in {checkpoints.directory}. Resume it with "
                                       "--resume (perhaps with lower learning rates), or use "
                                       "--on-nonfinite rollback.") from None
                    rollbacks += 1
                    checkpoints.wait()
                    state, _ = checkpoints.restore(last, sharding=on_all)
                    state = state.replace(rng=jax.random.fold_in(state.rng, 1_000_003 * rollbacks))
                    if primary:
                        truncate_metrics(run.metrics_path, last)
                    recorder.event({"step": last, "event": "rollback", "reason": str(e)})
                    warnings.warn(f"{e} Rolled back to step {last} with a new noise stream "
                                  f"({rollbacks}/{MAX_ROLLBACKS}).")
                    bar.n = last
                    dev_state = place(state)
    except KeyboardInterrupt as e:
        checkpoints.wait()
        bar.close()
        signum = e.args[0] if e.args else signal.SIGINT
        raise Interrupted(f"Stopped by {signal.Signals(signum).name}; the last checkpoint (step "
                          f"{checkpoints.latest_step()}) is in {checkpoints.directory}. Continue "
                          "with --resume.", signum) from None
    except OSError as e:  # metrics, grids or plots could not be written
        raise UserError(f"Could not write to {out} ({e}). Checkpoints up to step "
                        f"{checkpoints.latest_step()} are intact in {checkpoints.directory}; "
                        "free space or fix the permissions, then continue with --resume.") \
            from None
    finally:
        checkpoints.wait()
        bar.close()

    state = single(dev_state)
    if primary:
        plots.plot_losses(run.metrics_path, os.path.join(out, "losses.png"), steps_per_epoch)
        _export_torch(state, os.path.join(out, "model.pt"), quiet)
    return state


class EpochEnd:
    """The per-epoch outputs: the lecture's grid and loss plot, the diversity monitor, and
    (every `eval_every` epochs) SWD and FID, all recorded in metrics.jsonl."""

    def __init__(self, run: Run, images: np.ndarray, recorder: Recorder, bar: tqdm):
        self.run, self.images, self.recorder, self.bar = run, images, recorder, bar
        self.noise = sample.draw_noise(run.cfg, FIXED_NOISE, run.cfg.seed)
        chosen = np.random.default_rng(0).choice(len(images), min(FIXED_NOISE, len(images)),
                                                 replace=False)
        self.reference = metrics.diversity(np.asarray(images[np.sort(chosen)]))
        self.best = max((r["diversity"] for r in _events(run.metrics_path, "diversity")),
                        default=0.0)  # across a resume too
        self.started = time.perf_counter()
        self.inception: metrics.InceptionFeatures | None = None
        self.fid = bool(run.cfg.eval_every)
        if self.fid:
            try:
                metrics.fid_network_path()
            except UserError as e:
                warnings.warn(f"FID is skipped during training: {e}")
                self.fid = False

    def __call__(self, state: TrainState, step: int) -> None:
        run, cfg = self.run, self.run.cfg
        epoch = step // run.steps_per_epoch
        generator = sample.sampling_generator(state, cfg)
        grid = np.asarray(sample.generate(cfg, generator, self.noise, True))
        sample.save_png(sample.make_grid(grid),
                        os.path.join(run.out, "samples", f"epoch_{epoch:03d}.png"))
        plots.plot_losses(run.metrics_path, os.path.join(run.out, "losses.png"),
                          run.steps_per_epoch)

        # Collapse: diversity falls below a fraction of the data's after having been above
        # it (an untrained generator is not diverse yet, which is not a collapse).
        score, threshold = metrics.diversity(grid), metrics.COLLAPSE_RATIO * self.reference
        collapsed = score < threshold <= self.best
        self.best = max(self.best, score)
        self.recorder.event({"step": step, "epoch": epoch, "event": "diversity",
                             "diversity": score, "reference": self.reference,
                             "collapsed": bool(collapsed)})
        if collapsed:
            message = (f"Epoch {epoch}: the fixed-noise samples look alike (diversity {score:.3f}"
                       f", the data's {self.reference:.3f}): the generator may have collapsed.")
            warnings.warn(message)
            if not self.bar.disable:
                self.bar.write(f"WARNING: {message}")

        if cfg.eval_every and epoch % cfg.eval_every == 0:
            if self.fid and self.inception is None:
                self.inception = metrics.InceptionFeatures()
            result = metrics.evaluate(cfg, generator, self.images, cfg.eval_samples, cfg.seed,
                                      fid=self.fid, inception=self.inception)
            self.recorder.event({"step": step, "epoch": epoch, "event": "eval", **result})
            plot_quality(run)
            if not self.bar.disable:
                self.bar.write(f"Epoch {epoch:03d}: SWD {result['swd']:.2f}"
                               + (f", FID {result['fid']:.2f}" if "fid" in result else ""))
        if not self.bar.disable:
            self.bar.write(f"Time elapsed: {(time.perf_counter() - self.started) / 60:.2f} min")


def _events(path: str, kind: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in map(json.loads, f) if r.get("event") == kind]


def plot_quality(run: Run) -> None:
    evals = _events(run.metrics_path, "eval")
    series = {"SWD (x1e3)": ([r["epoch"] for r in evals], [r["swd"] for r in evals])}
    if evals and "fid" in evals[-1]:
        series["FID"] = ([r["epoch"] for r in evals if "fid" in r],
                         [r["fid"] for r in evals if "fid" in r])
    plots.plot_curves(series, os.path.join(run.out, "quality.png"), "Epoch", "Distance")


def _export_torch(state: TrainState, path: str, quiet: bool) -> None:
    """The final model in the lecture's PyTorch format, when torch is installed."""
    from jax_dcgan import convert

    try:
        convert.save_torch_file(convert.to_state_dict(
            {"generator": state.generator, "discriminator": state.discriminator}), path)
    except UserError as e:
        warnings.warn(f"model.pt was not written: {e}")
        return
    if not quiet:
        print(f"jax-dcgan: wrote {path} (loads into the lecture's DCGAN with strict=True)")
