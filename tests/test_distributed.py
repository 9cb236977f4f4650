"""Multi-process training with jax.distributed: 2 processes x 2 CPU devices (gloo, loopback)
against 1 process x 4 devices on the same global batches."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jax_dcgan import checkpoint

from .helpers import ROOT, cli, tiny_flags

TIMEOUT = 300  # seconds per launch; a hung coordinator must not hang the suite
STEPS = 8  # one epoch of TINY at batch 8 over 64 images, checkpoints every 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_two(out, cache, steps: int, *extra: str) -> list[subprocess.Popen]:
    """`jax-dcgan train` as process 0 and 1 of one run on 127.0.0.1."""
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return [subprocess.Popen(
        [sys.executable, "-m", "jax_dcgan.cli", "train", "--out", str(out), "--quiet",
         *tiny_flags(cache, steps=steps), "--coordinator-address", address,
         "--num-processes", "2", "--process-id", str(i), *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]


def launch_two(out, cache, steps: int, *extra: str) -> list[str]:
    """Both processes to the end; returns their stderr."""
    procs = start_two(out, cache, steps, *extra)
    try:
        errors = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-3000:]
    return errors


def final_state(run):
    state, _ = checkpoint.load(str(run))
    assert int(state.step) == STEPS
    return state


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
    cli("train", "--out", tmp / "run", "--quiet", *tiny_flags(tmp / "cache", steps=STEPS),
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, timeout=TIMEOUT)
    return tmp / "run"


def steps_in(run) -> list[int]:
    with open(run / "metrics.jsonl") as f:
        return [r["step"] for r in map(json.loads, f) if "g_loss" in r]


def test_two_processes_train_like_one_with_all_devices(single_process, tmp_path):
    run = tmp_path / "run"
    launch_two(run, tmp_path / "cache", STEPS)
    assert_close(final_state(run), final_state(single_process), "2x2 vs 1x4 devices")
    # Process 0 alone writes the run's files, once per step.
    assert steps_in(run) == steps_in(single_process) == list(range(1, STEPS + 1))
    assert (run / "model.pt").exists() and (run / "losses.png").exists()
    assert sorted(os.listdir(run / "samples")) == ["epoch_001.png"]


def test_two_processes_resume_from_their_checkpoint(single_process, tmp_path):
    run = tmp_path / "run"
    launch_two(run, tmp_path / "cache", STEPS // 2)
    assert checkpoint.Checkpoints(str(run / "checkpoints"), read_only=True).latest_step() \
        == STEPS // 2
    launch_two(run, tmp_path / "cache", STEPS, "--resume")
    assert_close(final_state(run), final_state(single_process), "resumed 2x2 vs 1x4 devices")
    assert steps_in(run) == list(range(1, STEPS + 1))


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
    result = cli("train", "--out", tmp_path / "run", *tiny_flags(tmp_path / "cache"),
                 "--num-processes", "2", check=False)
    assert result.returncode == 2 and "--coordinator-address" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_two_processes_agree_on_the_measured_steps_per_dispatch(tmp_path):
    """Each process times a step; process 0's choice is used by both (calls of different sizes
    would pair the processes' collectives wrongly and hang or fail)."""
    run = tmp_path / "run"
    launch_two(run, tmp_path / "cache", STEPS, "--steps-per-dispatch", "0")
    (start,) = json.loads((run / "run.json").read_text())["starts"]
    assert start["step_ms"] > 0 and 1 <= start["steps_per_dispatch"] <= 4
    assert steps_in(run) == list(range(1, STEPS + 1))
