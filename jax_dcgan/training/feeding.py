"""Batches for the dispatch plan, on the device before the step needs them.

The indices of each batch come from the epoch's order (a function of the seed and
the epoch), so every device count and every resume sees the same batches. The
images are gathered on the device from a device-resident copy of the dataset
when it fits, or read from the memory-mapped cache and copied over; either way a
thread prepares them a few calls ahead.
"""

from __future__ import annotations

import queue
import threading

import jax
import numpy as np

from jax_dcgan.common import runtime
from jax_dcgan.data import dataset
from jax_dcgan.training.dispatch import Dispatch, Plan
from jax_dcgan.training.parallel import Parallelism

__all__ = ["Batches", "Feed", "fits_on_device"]


def fits_on_device(nbytes: int, device) -> bool:
    """Whether a dataset this size can stay on `device` with room for training."""
    return nbytes <= 0.3 * runtime.device_free_bytes(device)


class Batches:
    """Device-ready uint8 batches for a run of steps: (K, B, ...) on one device, (D, K, B/D, ...)
    over this process's D devices. With several processes each one takes its own contiguous
    part of every global batch, so it reads only its share of each epoch."""

    def __init__(self, images: np.ndarray, batch_size: int, seed: int,
                 parallelism: Parallelism, resident: bool):
        self.images, self.batch_size, self.seed = images, batch_size, seed
        self.steps_per_epoch = len(images) // batch_size
        self.parallelism, self.resident = parallelism, resident
        self._order: tuple[int, np.ndarray] = (-1, np.zeros(0, np.int64))  # (epoch, order)
        if resident:
            sharding = parallelism.batch_sharding
            everywhere = (jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
                          if parallelism.parallel else sharding)
            self.on_device = jax.device_put(np.asarray(images), everywhere)
            self._gather = jax.jit(lambda images, idx: images[idx], out_shardings=sharding)

    def indices(self, step: int, count: int) -> np.ndarray:
        epoch, start = divmod(step, self.steps_per_epoch)
        cached, order = self._order
        if cached != epoch:
            order = dataset.epoch_order(self.seed, epoch, len(self.images))
            self._order = (epoch, order)
        b, processes, p = self.batch_size, jax.process_count(), jax.process_index()
        idx = order[start * b:(start + count) * b].reshape(count, b).astype(np.int32)
        idx = idx[:, p * b // processes:(p + 1) * b // processes]
        if not self.parallelism.parallel:
            return idx
        return idx.reshape(count, len(self.parallelism.devices), -1).swapaxes(0, 1)

    def get(self, step: int, count: int) -> jax.Array:
        idx = self.indices(step, count)
        if self.resident:
            idx = jax.device_put(idx, self.parallelism.batch_sharding)
            return self._gather(self.on_device, idx)
        batch = self.images[idx.reshape(-1)].reshape(idx.shape + self.images.shape[1:])
        return jax.device_put(batch, self.parallelism.batch_sharding)


_END = object()


class Feed:
    """(dispatch, batch) for each call of the plan from a step on, prepared `depth` calls ahead
    in a thread. `restart(step)` drops what was prepared and goes on from `step`."""

    def __init__(self, plan: Plan, batches: Batches, start: int, depth: int = 2):
        self.plan, self.batches, self.depth = plan, batches, depth
        self._start(start)

    def _start(self, step: int) -> None:
        self._queue: queue.Queue = queue.Queue(self.depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(step, self._queue, self._stop),
                                        daemon=True)
        self._thread.start()

    def _fill(self, step: int, out: queue.Queue, stop: threading.Event) -> None:
        try:
            for dispatch in self.plan.dispatches(step):
                if not _put(out, (dispatch, self.batches.get(dispatch.step, dispatch.count)), stop):
                    return
        except BaseException as e:  # handed to the loop, which raises it
            _put(out, e, stop)
            return
        _put(out, _END, stop)

    def __iter__(self) -> "Feed":
        return self

    def __next__(self) -> tuple[Dispatch, jax.Array]:
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def restart(self, step: int) -> None:
        self.close()
        self._start(step)

    def close(self) -> None:
        """Stop preparing batches; returns once the thread has (it shares `batches`)."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "Feed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` unless `stop` is set first; whether it was put."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
