"""Where a run's state and batches live: one device (jit), or data parallel (pmap) over
this process's devices and, in a multi-process run, over every process's.

`Parallelism` is the one place that knows which: the loop asks it to place a state,
to take one copy back, to hand orbax what it saves, and for the step function.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jax_dcgan.common.errors import UserError, check_batch_split
from jax_dcgan.config import Config, StepConfig
from jax_dcgan.model.step import AXIS, jit_train_steps, pmap_train_steps

__all__ = ["Parallelism", "device_sharding", "replicate", "select_devices"]


def select_devices(cfg: Config) -> list:
    """This process's devices for the run; with several processes, all of them."""
    available = jax.local_devices()
    processes = jax.process_count()
    if processes > 1 and cfg.devices not in (0, len(available)):
        raise UserError("--devices cannot be used in a multi-process run: every process uses "
                        f"all its devices ({len(available)} here).")
    if cfg.devices > len(available):
        raise UserError(f"--devices {cfg.devices} asks for more devices than the "
                        f"{len(available)} this process has ({available[0].platform}).")
    devices = available[:cfg.devices or len(available)]
    check_batch_split(cfg.batch_size, len(devices) * processes, processes)
    return devices


def device_sharding(devices: list) -> jax.sharding.NamedSharding:
    """Leading axis split over `devices`, in the order pmap maps them."""
    mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicated_sharding() -> jax.sharding.NamedSharding:
    """Every device of every process holds the whole array."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def replicate(tree: Any, devices: list) -> Any:
    """One copy of every leaf per device, stacked on a leading axis (pmap's layout)."""
    sharding = device_sharding(devices)

    def leaf(x):
        if isinstance(x, jax.Array):
            x = x.addressable_data(0)
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # NumPy has no key dtype
                return jax.random.wrap_key_data(leaf(jax.random.key_data(x)),
                                                impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)
    return jax.tree.map(leaf, tree)


@jax.jit
def _without_leading_axis(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.reshape(x.shape[1:]), tree)


def _copy(tree: Any, index: int) -> Any:
    """The `index`-th addressable copy of a pmap tree (of jax.Arrays), in one computation on
    its device: a copy per leaf would queue a hundred small computations behind the running
    step, past the 32 that XLA's CPU client lets a device have in flight, and stall the loop
    there."""
    return _without_leading_axis(jax.tree.map(lambda x: x.addressable_data(index), tree))


def unreplicate(tree: Any) -> Any:
    """This process's first device's copy (indexing the global array would need every
    process to take part)."""
    return _copy(tree, 0)


def to_replicated(tree: Any) -> Any:
    """A pmap state (one copy per local device, on a leading axis) -> per leaf one global
    array replicated over every process's devices: what orbax saves once for all."""
    sharding = replicated_sharding()
    copies = [_copy(tree, i) for i in range(jax.local_device_count())]
    return jax.tree.map(lambda x, *local: jax.make_array_from_single_device_arrays(
        x.shape[1:], sharding, list(local)), tree, *copies)


class Parallelism:
    """How a run uses its devices: one device (jit), or data parallel (pmap) over this
    process's devices and every process's; decided once from the devices of a run."""

    def __init__(self, devices: list):
        self.devices = devices
        self.processes = jax.process_count()
        self.parallel = len(devices) > 1 or self.processes > 1
        self.batch_sharding = (device_sharding(devices) if self.parallel
                               else jax.sharding.SingleDeviceSharding(devices[0]))

    @property
    def platform(self) -> str:
        return self.devices[0].platform

    @property
    def device_count(self) -> int:
        """Devices over all processes."""
        return len(self.devices) * self.processes

    def step_function(self, cfg: StepConfig) -> Callable:
        """(state, batches) -> (state, metrics): jit on one device, pmap over several."""
        if not self.parallel:
            return jit_train_steps(cfg)
        return pmap_train_steps(cfg, None if self.processes > 1 else self.devices)

    def per_replica(self, fn: Callable) -> Callable:
        """`fn(tree, shared)` on each device's copy of a placed tree, nothing leaving the
        devices: jit on one device, pmap over several (`shared` broadcast to all)."""
        if not self.parallel:
            return jax.jit(fn)
        return jax.pmap(fn, in_axes=(0, None),
                        devices=None if self.processes > 1 else self.devices)

    def put(self, state: Any) -> Any:
        """A host or single-device state where the step function takes it."""
        if self.parallel:
            return replicate(state, self.devices)
        return jax.device_put(state, self.devices[0])

    def placed_shapes(self, tree: Any) -> Any:
        """ShapeDtypeStructs of `tree` (arrays or shapes) as `put` places it: what compiling
        the step ahead of time takes."""
        if not self.parallel:
            sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=sharding), tree)
        sharding = device_sharding(self.devices)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct((len(self.devices),) + x.shape,
                                                           x.dtype, sharding=sharding), tree)

    def batches_shape(self, count: int, batch_size: int, image_shape: tuple[int, ...]
                      ) -> jax.ShapeDtypeStruct:
        """The uint8 batches of one call of `count` steps, as `Batches.get` places them."""
        d = len(self.devices)
        shape = ((d, count, batch_size // (d * self.processes)) if self.parallel
                 else (count, batch_size)) + tuple(image_shape)
        return jax.ShapeDtypeStruct(shape, np.uint8, sharding=self.batch_sharding)

    def first_copy(self, state: Any) -> Any:
        """One copy of a placed state, on this process's first device."""
        return unreplicate(state) if self.parallel else state

    def savable(self, state: Any) -> Any:
        """What orbax saves: one copy, replicated over all processes when there are several."""
        return to_replicated(state) if self.processes > 1 else self.first_copy(state)

    def restore_sharding(self) -> jax.sharding.Sharding | None:
        """Where a checkpoint is restored to (None: this process's first device)."""
        return replicated_sharding() if self.processes > 1 else None
