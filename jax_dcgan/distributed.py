"""Multi-process runs with JAX's own runtime (`jax.distributed`): one process per host.

With `initialize` called first, `jax.pmap` spans every device of every process;
each process feeds its own devices. Process 0 writes the run's files; every
process takes part in checkpoints (orbax coordinates them).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from jax_dcgan.errors import UserError


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, auto: bool) -> None:
    """Start jax.distributed from flags, JAX_* environment variables, or auto-detection."""
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = (coordinator_address, num_processes, process_id)
    if not auto and all(v is None for v in explicit):
        return  # a single process
    if not auto and any(v is None for v in explicit):
        raise UserError("A multi-process run needs all of --coordinator-address HOST:PORT, "
                        "--num-processes N and --process-id I (or JAX_COORDINATOR_ADDRESS, "
                        "JAX_NUM_PROCESSES and JAX_PROCESS_ID), or --distributed to detect "
                        "them (SLURM, TPU pods, Kubernetes, MPI).")
    # CPU devices talk through gloo; the setting does nothing on GPU or TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except Exception as e:  # timeouts, unreachable coordinator, undetectable cluster
        raise UserError(f"jax.distributed could not start ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:300]}). Check that every process got the "
                        "same coordinator address and process count, a distinct process id, "
                        "and that the coordinator's port is reachable.") from None


def is_primary() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether `flag` is set on any process (every process gets the same answer)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def replicated_sharding() -> jax.sharding.NamedSharding:
    """Every device of every process holds the whole array."""
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("all",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def to_replicated(tree):
    """A pmap state (one copy per local device, on a leading axis) -> per leaf one global
    array replicated over every process's devices: what orbax saves once for all."""
    sharding = replicated_sharding()

    def leaf(x):
        copies = [shard.data.reshape(x.shape[1:]) for shard in x.addressable_shards]
        return jax.make_array_from_single_device_arrays(x.shape[1:], sharding, copies)
    return jax.tree.map(leaf, tree)
