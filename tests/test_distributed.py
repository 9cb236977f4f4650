"""Multi-process training with jax.distributed: 2 processes x 2 CPU devices (gloo, loopback)
against 1 process x 4 devices on the same global batches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from jax_dcgan.common.errors import Interrupted, ProcessLost
from jax_dcgan.model.step import raw_key
from jax_dcgan.training import checkpoint, distributed
from jax_dcgan.training.distributed import PeerWatch

from .helpers import ROOT, assert_identical, cli_here
from .helpers import final_state as saved_arrays
from .helpers import tiny_flags

TIMEOUT = 300  # seconds per launch; a hung coordinator must not hang the suite
STEPS = 8  # one epoch of TINY at batch 8 over 64 images, checkpoints every 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two(out, cache, steps: int, *extra: str, **changes) -> list[subprocess.Popen]:
    """`jax-dcgan train` as process 0 and 1 of one run on 127.0.0.1 (`changes` to TINY)."""
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [subprocess.Popen(
        [sys.executable, "-m", "jax_dcgan.cli", "train", "--out", str(out), "--quiet",
         *tiny_flags(cache, steps=steps, **changes), "--coordinator-address", address,
         "--num-processes", "2", "--process-id", str(i), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


def launch_two(out, cache, steps: int, *extra: str, **changes) -> list[str]:
    """Both processes to the end; returns their stderr."""
    procs = start_two(out, cache, steps, *extra, **changes)
    try:
        errors = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-3000:]
    return errors


def final_state(run):
    state, _ = checkpoint.load_checkpoint(str(run))
    assert int(state.step) == STEPS
    return raw_key(state)


def assert_close(a, b, what: str) -> None:
    """Float32 tolerance: the two runs reduce over devices in a different order (gloo
    across processes, XLA within one), so sums differ in the last bits; after a few Adam
    steps the states differ by ~1e-7 (measured 1.2e-7), far below one Adam step (2e-4)."""
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6,
                                   err_msg=f"{what}: {jax.tree_util.keystr(path)}")


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    cli_here("train", "--out", tmp / "run", "--quiet",
             *tiny_flags(tmp / "cache", steps=STEPS))  # the session's 4 CPU devices
    return tmp / "run"


def steps_in(run) -> list[int]:
    with open(run / "metrics.jsonl") as f:
        return [r["step"] for r in map(json.loads, f) if "g_loss" in r]


def test_two_processes_train_like_one_with_all_devices(single_process, tmp_path):
    """Each process times a step and process 0's choice of steps per call is used by both
    (calls of different sizes would pair the processes' collectives wrongly and hang or
    fail). The single process dispatches 3 steps per call; whatever the two chose, the
    float32 states agree within `assert_close`. Resuming both processes from a checkpoint
    is checked bit for bit by the lost-process tests below."""
    run = tmp_path / "run"
    launch_two(run, tmp_path / "cache", STEPS, "--steps-per-dispatch", "0")
    (start,) = json.loads((run / "run.json").read_text())["starts"]
    assert start["step_ms"] > 0 and 1 <= start["steps_per_dispatch"] <= 4
    assert_close(final_state(run), final_state(single_process), "2x2 vs 1x4 devices")
    # Process 0 alone writes the run's files, once per step.
    assert steps_in(run) == steps_in(single_process) == list(range(1, STEPS + 1))
    assert (run / "model.pt").exists() and (run / "losses.png").exists()
    assert sorted(os.listdir(run / "samples")) == ["epoch_001.png"]


def test_a_signal_to_one_process_stops_both_after_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    procs = start_two(run, tmp_path / "cache", 10_000)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(steps_in_log(run)) < 4:
            assert time.monotonic() < deadline and procs[0].poll() is None, "no training"
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)  # the process that writes nothing
        errors = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, errors[0][-2000:]
    saved = checkpoint.Checkpoints(str(run / "checkpoints"), read_only=True).latest_step()
    assert saved and steps_in(run) == list(range(1, saved + 1))


def steps_in_log(run) -> list[int]:
    return steps_in(run) if (run / "metrics.jsonl").exists() else []


def test_incomplete_process_flags_are_refused(tmp_path):
    result = cli_here("train", "--out", tmp_path / "run", *tiny_flags(tmp_path / "cache"),
                      "--num-processes", "2", check=False)
    assert result.returncode == 2 and "--coordinator-address" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


# A lost process: SIGKILL one of the two (a node failure, a preemption without notice).
LOST_STEPS, LOST_CHECKPOINT_EVERY = 32, 16  # four epochs; checkpoints at steps 16 and 32
# A short heartbeat timeout, so that a loss is seen in seconds; the bound on how long the
# survivor takes to end is derived from it: 4 x 8 s, against 8.1 s measured for a lost
# process 1 (under -n 2) and 0.2 s for process 0, whose loss JAX's runtime reports at once.
HEARTBEAT_S = 8


@pytest.fixture(scope="module")
def uninterrupted_two_processes(tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    launch_two(run, run.parent / "cache", LOST_STEPS, checkpoint_every=LOST_CHECKPOINT_EVERY)
    return run


@pytest.mark.parametrize("victim, kill_at", [
    (1, 19),  # after the checkpoint of step 16: process 0 survives and explains
    (0, 2),  # 14 steps before the first checkpoint: process 0 hosts JAX's coordination service
], ids=["process-1-after-a-checkpoint", "process-0-before-any-checkpoint"])
def test_a_lost_process_ends_the_other_and_both_resume_exactly(
        uninterrupted_two_processes, tmp_path, victim, kill_at):
    """SIGKILL once metrics.jsonl shows `kill_at` steps (and, after a checkpoint, once it is
    on disk). The survivor exits non-zero within 4 heartbeat timeouts of the loss; when it
    is process 0, it names the lost process and the checkpoint on disk. `--resume` on both
    then ends in the uninterrupted run's state, bit for bit."""
    run, cache = tmp_path / "run", tmp_path / "cache"
    procs = start_two(run, cache, LOST_STEPS, "--heartbeat-timeout", str(HEARTBEAT_S),
                      checkpoint_every=LOST_CHECKPOINT_EVERY)
    survivor = procs[1 - victim]
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(steps_in_log(run)) < kill_at or (
                kill_at > LOST_CHECKPOINT_EVERY
                and not (run / "checkpoints" / str(LOST_CHECKPOINT_EVERY)).is_dir()):
            assert time.monotonic() < deadline and survivor.poll() is None, "no training"
            time.sleep(0.05)
        procs[victim].kill()
        killed = time.monotonic()
        error = survivor.communicate(timeout=TIMEOUT)[1]
        took = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
    on_disk = sorted(int(n) for n in os.listdir(run / "checkpoints") if n.isdigit())
    assert survivor.returncode != 0 and took < 4 * HEARTBEAT_S, (survivor.returncode, took,
                                                                 error[-2000:])
    assert "Traceback" not in error
    if victim == 1:
        assert survivor.returncode == ProcessLost.exit_code
        assert "Process 1 of 2 stopped answering" in error, error[-2000:]
        assert f"last intact checkpoint is step {max(on_disk)} in {run / 'checkpoints'}" in error
    else:
        assert not on_disk  # killed before the first checkpoint, as intended
    launch_two(run, cache, LOST_STEPS, "--resume", checkpoint_every=LOST_CHECKPOINT_EVERY)
    assert_identical(saved_arrays(run), saved_arrays(uninterrupted_two_processes))
    assert steps_in(run) == list(range(1, LOST_STEPS + 1))


class FakeClient:
    """The coordination service's key-value store, in memory."""

    def __init__(self):
        self.values = {}

    def key_value_set(self, key, value, allow_overwrite=False):
        self.values[key] = value

    def key_value_dir_get(self, prefix):
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def beat(client, process: int, value: str) -> None:
    client.values[PeerWatch.PREFIX + str(process)] = value


def test_the_watch_tells_a_lost_peer_from_a_busy_or_finished_one():
    client = FakeClient()
    watch = PeerWatch(client, 0, 3, 10.0, lambda n: "ADVICE")
    watch._heard = {p: ("", 0.0) for p in watch.peers}
    beat(client, 1, "1")
    beat(client, 2, "1")
    assert watch._check(client.values, now=1.0) is None
    beat(client, 1, "2")  # process 1 beats on; process 2 is silent
    assert watch._check(client.values, now=10.5) is None  # not yet for longer than 10 s
    assert watch._check(client.values, now=13.0).startswith(
        "Process 2 of 3 stopped answering: no heartbeat for 12 s")
    beat(client, 2, PeerWatch.DONE)  # a finished peer is never lost, nor a stopped one
    beat(client, 1, PeerWatch.STOPPED)
    assert watch._check(client.values, now=14.0) is None
    assert watch._check(client.values, now=100.0) is None
    beat(client, 1, PeerWatch.FAILED + "disk full")
    assert watch._check(client.values, now=101.0) is None  # it may end this process too
    assert watch._check(client.values, now=112.0) == (
        "Process 1 of 3 ended with an error (disk full) 11 s ago while this process waits "
        "for it")


@pytest.fixture
def cluster(monkeypatch):
    """Process 1 of 2 with a fast watch over a FakeClient; `exits` records what the watch
    would end the process with."""
    client, exits = FakeClient(), []
    monkeypatch.setattr(distributed, "_cluster", (client, 1, 2, 0.5))
    monkeypatch.setattr(PeerWatch, "_exit", lambda self, problem: exits.append(problem))
    return client, exits


def test_an_error_reports_the_peer_that_failed_first(cluster):
    client, exits = cluster
    beat(client, 0, "1")
    with pytest.raises(ProcessLost, match=r"^Process 0 of 2 ended with an error \(its own "
                       r"error\), so this process stops too. ADVICE 2$"):
        with distributed.watching_peers(lambda n: f"ADVICE {n}"):
            beat(client, 0, PeerWatch.FAILED + "its own error")
            raise ValueError("a collective failed")
    assert client.values[PeerWatch.PREFIX + "1"] == PeerWatch.STOPPED  # with process 0
    assert exits == []


def test_an_error_waits_for_a_fresh_beat_not_a_stale_one(cluster):
    """A peer's last beat, posted before the error but read after it, is no sign of life:
    only a beat posted after the error is."""
    client, exits = cluster
    beat(client, 0, "7")
    started = time.monotonic()
    with pytest.raises(ValueError), distributed.watching_peers(lambda n: ""):
        raise ValueError("a collective failed")  # the peer never beats again
    assert time.monotonic() - started > 0.5  # waited the timeout for the verdict
    assert exits and exits[0].startswith("Process 0 of 2 stopped answering")
    assert client.values[PeerWatch.PREFIX + "1"] == PeerWatch.FAILED + "a collective failed"


def test_an_error_with_live_peers_is_reported_as_it_is(cluster, monkeypatch):
    """A peer that beats on after the error is alive: the error is reported as it is, as
    soon as the fresh beat is read (measured 2 s), not after the 60 s timeout."""
    client, exits = cluster
    monkeypatch.setattr(distributed, "_cluster", (client, 1, 2, 60.0))
    beat(client, 0, "1")
    threading.Timer(0.2, beat, (client, 0, "2")).start()
    started = time.monotonic()
    with pytest.raises(ValueError), distributed.watching_peers(lambda n: ""):
        raise ValueError("disk full")
    assert time.monotonic() - started < 20 and exits == []


def test_a_coordinated_stop_is_posted_as_stopped_and_a_run_as_done(cluster):
    client, _ = cluster
    with pytest.raises(Interrupted), distributed.watching_peers(lambda n: ""):
        raise Interrupted("Stopped by SIGTERM", signal.SIGTERM)
    assert client.values[PeerWatch.PREFIX + "1"] == PeerWatch.STOPPED
    with distributed.watching_peers(lambda n: ""):
        pass
    assert client.values[PeerWatch.PREFIX + "1"] == PeerWatch.DONE


def test_restart_advice_names_the_newest_complete_checkpoint(tmp_path):
    assert checkpoint.restart_advice(str(tmp_path / "none"), 2).startswith(
        "No checkpoint was written yet: start all 2 processes again with --resume")
    for name in ("8", "16", "24.orbax-checkpoint-tmp-1"):
        (tmp_path / name).mkdir()
    assert checkpoint.restart_advice(str(tmp_path), 4) == (
        f"The last intact checkpoint is step 16 in {tmp_path}: start all 4 processes again "
        "with --resume to continue from it.")
