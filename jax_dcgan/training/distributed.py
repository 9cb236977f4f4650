"""Multi-process runs with JAX's own runtime (`jax.distributed`): one process per host.

With `initialize` called first, `jax.pmap` spans every device of every process;
each process feeds its own devices. Process 0 writes the run's files; every
process takes part in checkpoints (orbax coordinates them). Decisions that must
be the same everywhere (stop, checkpoint now, steps per dispatch) go through
`any_process` and `agree`.

A process that is lost (killed, preempted, its host gone) is noticed by `PeerWatch`
within the heartbeat timeout; the survivors then end with the tool's own message. The
loss of process 0, which hosts JAX's coordination service, ends the others from inside
the runtime instead, in JAX's words (at once when its process dies, after the runtime's
heartbeat timeout when its host falls silent): the runtime's hook for that (the
client's `missed_heartbeat_callback`) cannot call Python.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Callable

import jax
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from jax_dcgan.common.errors import ProcessLost, TrainingStopped, UserError, error_line, summarize

__all__ = ["agree", "any_process", "barrier", "initialize", "is_primary", "watching_peers"]

_cluster: tuple | None = None  # (client, process id, process count, heartbeat timeout)


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, auto: bool,
               heartbeat_timeout_s: int) -> None:
    """Start jax.distributed from flags, JAX_* environment variables, or auto-detection.

    `PeerWatch` notices a lost process within `heartbeat_timeout_s`; JAX's runtime, which
    would end the survivors itself with a C++ stack trace, gets three times as long (at
least 30 s, so that a short timeout does not make the runtime itself hasty).
    """
    global _cluster
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
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   heartbeat_timeout_seconds=max(3 * heartbeat_timeout_s, 30))
    except Exception as e:  # timeouts, unreachable coordinator, undetectable cluster
        raise UserError(f"jax.distributed could not start ({summarize(e)}). Check that every "
                        "process got the same coordinator address and process count, a "
                        "distinct process id, and that the coordinator's port is reachable."
                        ) from None
    _cluster = (_client(), jax.process_index(), jax.process_count(), heartbeat_timeout_s)


def _client():
    """This process's client of JAX's coordination service (its key-value store, barriers
    and peers' liveness). JAX has no public accessor: `jax.distributed` offers initialize,
    is_initialized and shutdown, and JAX's own multihost_utils read this attribute."""
    client = jax_distributed.global_state.client
    if client is None:
        raise UserError("This is a multi-process run, but jax.distributed was not started in "
                        "this process; start it with jax.distributed.initialize (or the "
                        "command line's --coordinator-address flags) before training.")
    return client


def is_primary() -> bool:
    return jax.process_index() == 0


def barrier(name: str, timeout_s: int = 1800) -> None:
    """Wait until every process gets here (however long the first one takes to build the
    dataset cache), then run one collective over all devices together.

    The wait is the coordination service's, not a device collective (as
    `multihost_utils.sync_global_devices` is, without a timeout): a CPU run's gloo
    collectives give up after 30 s when their first use on a set of devices is that far
    apart across processes; the collective afterwards makes that first use here, at once.
    """
    if jax.process_count() == 1:
        return
    _client().wait_at_barrier(f"jax-dcgan: {name}", 1000 * timeout_s)
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


class PeerWatch:
    """Ends this process, in the tool's words, when another process of the run is lost.

    Every process posts a beat to the coordination service's key-value store from a
    thread of its own, so a process busy in a long call or blocked in a collective still
    beats (each reads all the others' beats: fine for the tens of hosts this tool spans).
    A peer whose beat has not moved for the timeout is lost; one that failed (and posted
    why) while this process keeps running for the timeout has left it stuck in a
    collective. Either way this process prints what happened and where the last intact
    checkpoint is, and exits with `ProcessLost.exit_code`, skipping the runtime's
    shutdown, which would wait for the lost process.
    """

    PREFIX = "jax-dcgan/alive/"
    DONE, STOPPED, FAILED = "done", "stopped", "failed: "

    def __init__(self, client, process_id: int, num_processes: int, timeout_s: float,
                 advice: Callable[[int], str]):
        self.client, self.process_id, self.num_processes = client, process_id, num_processes
        self.timeout_s, self.advice = timeout_s, advice
        self.interval_s = min(max(timeout_s / 10, 0.1), 2.0)
        self.peers = [p for p in range(num_processes) if p != process_id]
        self._heard = {p: ("", time.monotonic()) for p in self.peers}  # (value, since when)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jax-dcgan peer watch",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self, error: BaseException | None) -> None:
        """Stop beating, telling the others how this process ended: done, stopped with
        them (a signal, diverged losses), or failed on its own."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        status = (self.DONE if error is None else self.STOPPED
                  if isinstance(error, TrainingStopped) else self.FAILED + _one_line(error))
        self._post(status)

    def failed_peer(self) -> str | None:
        """After an error here (a collective whose peer vanished fails at once on a CPU):
        how a peer that failed on its own ended, which is then the cause to report. Waits
        until every peer has beaten since the call, or ended; a lost peer never does, and
        the watch thread ends this process meanwhile."""
        baseline = self._posted() or {}
        deadline = time.monotonic() + self.timeout_s + 3 * self.interval_s
        while time.monotonic() < deadline:
            posted = self._posted()
            if posted is None:
                return None
            values = {p: posted.get(self.PREFIX + str(p), "") for p in self.peers}
            for peer, value in values.items():
                if value.startswith(self.FAILED):
                    return self._failed(peer, value)
            if all(v in (self.DONE, self.STOPPED) or v != baseline.get(self.PREFIX + str(p))
                   for p, v in values.items()):
                return None
            time.sleep(self.interval_s)
        return None

    def _post(self, value: str) -> bool:
        try:
            self.client.key_value_set(self.PREFIX + str(self.process_id), value,
                                      allow_overwrite=True)
        except jax.errors.JaxRuntimeError:  # the coordinator is gone: the runtime ends us
            return False
        return True

    def _posted(self) -> dict[str, str] | None:
        try:
            return dict(self.client.key_value_dir_get(self.PREFIX))
        except jax.errors.JaxRuntimeError:
            return None

    def _run(self) -> None:
        beat = 0
        while not self._stop.wait(self.interval_s):
            beat += 1
            posted = self._posted() if self._post(str(beat)) else None
            problem = posted is not None and self._check(posted, time.monotonic())
            if problem and not self._stop.is_set():
                self._exit(problem)

    def _check(self, posted: dict[str, str], now: float) -> str | None:
        """What went wrong with a peer, if anything, given the values posted now."""
        for peer in self.peers:
            value = posted.get(self.PREFIX + str(peer), "")
            if value != self._heard[peer][0]:
                self._heard[peer] = (value, now)
            silent = now - self._heard[peer][1]
            if silent <= self.timeout_s or value in (self.DONE, self.STOPPED):
                continue
            if value.startswith(self.FAILED):
                return (f"{self._failed(peer, value)} {silent:.0f} s ago while this process "
                        "waits for it")
            return (f"Process {peer} of {self.num_processes} stopped answering: no heartbeat "
                    f"for {silent:.0f} s (it was killed, ran out of memory, was preempted, or "
                    "its host or network failed)")
        return None

    def _failed(self, peer: int, value: str) -> str:
        return (f"Process {peer} of {self.num_processes} ended with an error "
                f"({value[len(self.FAILED):]})")

    def _exit(self, problem: str) -> None:
        error = ProcessLost(f"{problem}, so this process stops too. "
                            f"{self.advice(self.num_processes)}")
        print(error_line("train", error), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(error.exit_code)


@contextlib.contextmanager
def watching_peers(advice: Callable[[int], str]):
    """Run the body with a peer watch on (in a multi-process run); `advice(processes)`
    says where the run can continue from. An error in the body first asks how the peers
    are, so that a lost or failed process, not the collective it broke, is reported."""
    if _cluster is None:
        yield
        return
    watch = PeerWatch(*_cluster, advice)
    watch.start()
    error = None
    try:
        yield
    except Exception as e:
        error = e
        cause = None if isinstance(e, TrainingStopped) else watch.failed_peer()
        if cause:
            error = ProcessLost(f"{cause}, so this process stops too. "
                                f"{advice(watch.num_processes)}")
            raise error from None
        raise
    except BaseException as e:
        error = e
        raise
    finally:
        watch.finish(error)


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
