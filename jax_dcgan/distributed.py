"""Multi-process runs with JAX's own runtime (`jax.distributed`): one process per host.

With `initialize` called first, `jax.pmap` spans every device of every process;
each process feeds its own devices. Process 0 writes the run's files; every
process takes part in checkpoints (orbax coordinates them). Decisions that must
be the same everywhere (stop, checkpoint now, steps per dispatch) go through
`any_process` and `agree`.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jax_dcgan.errors import UserError, summarize


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
        raise UserError(f"jax.distributed could not start ({summarize(e)}). Check that every "
                        "process got the same coordinator address and process count, a "
                        "distinct process id, and that the coordinator's port is reachable."
                        ) from None


def is_primary() -> bool:
    return jax.process_index() == 0


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Wait until every process gets here (however long the first one takes to build the
    dataset cache), then run one collective over all devices together.

    The wait is the coordination service's, not a device collective: a CPU run's gloo
    collectives give up after 30 s when their first use on a set of devices is that far
    apart across processes; the collective afterwards makes that first use here, at once.
    """
    if jax.process_count() == 1:
        return
    ocp.multihost.get_barrier_sync_fn()(key=f"jax-dcgan: {name}", timeout_ms=1000 * timeout_s)
    jax.block_until_ready(jax.pmap(lambda x: jax.lax.psum(x, "all"), "all")(
        np.zeros(jax.local_device_count(), np.int32)))


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Whether each flag is set on any process; every process gets the same answer."""
    if jax.process_count() == 1:
        return flags
    gathered = multihost_utils.process_allgather(np.asarray(flags, np.bool_))
    return tuple(bool(v) for v in np.any(np.asarray(gathered).reshape(-1, len(flags)), axis=0))


def agree(value: int) -> int:
    """Process 0's value, on every process."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))
