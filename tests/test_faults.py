"""Faults and bad input during training: nothing crashes unexplained, nothing is lost."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from jax_dcgan.common.errors import Diverged, UserError
from jax_dcgan.config import Config
from jax_dcgan.data import dataset
from jax_dcgan.model.step import METRICS
from jax_dcgan.quality import metrics
from jax_dcgan.training import checkpoint, parallel
from jax_dcgan.training.loop import train

from .helpers import (ROOT, TINY, assert_identical, cli_here, final_state, records, step_records,
                      tiny_flags)


def _start(out, flags, *extra):
    return subprocess.Popen([sys.executable, "-m", "jax_dcgan.cli", "train", "--out", str(out),
                             "--quiet", *flags, *extra], cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_steps(out, process, steps=1, timeout=300):
    deadline = time.time() + timeout
    while True:
        if len(step_records(out)) >= steps:
            return
        assert process.poll() is None and time.time() < deadline, f"no record of step {steps}"
        time.sleep(0.05)


def test_repeated_sigkill_at_random_steps_then_resume_is_bit_identical(tmp_path):
    """Three SIGKILLs, each once the run's records reach a random step (drawn further on each
    time, near step 36 of 80 at most), then --resume to the end. Each kill lands with about 44
    or more tiny steps still to run, a checkpoint every 3 of them (measured 3.2 s), against
    the ~0.05 s it takes to see the records and kill, so each process really is killed
    mid-run (its return code says so)."""
    flags = tiny_flags(tmp_path / "c", epochs=10, checkpoint_every=3)
    cli_here("train", "--out", tmp_path / "whole", "--quiet", *flags)
    rng = random.Random(0)
    reached = 0
    for _ in range(3):
        target = rng.randint(reached + 1, reached + 12)
        process = _start(tmp_path / "killed", flags, "--resume")
        _wait_for_steps(tmp_path / "killed", process, steps=target)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL  # killed, not finished
        reached = step_records(tmp_path / "killed")[-1]["step"]
        assert reached < 80
        latest = checkpoint.Checkpoints(str(tmp_path / "killed" / "checkpoints")).latest_step()
        if latest is not None:
            # The last complete checkpoint loads.
            checkpoint.load_checkpoint(str(tmp_path / "killed"))
    cli_here("train", "--out", tmp_path / "killed", "--quiet", "--resume", *flags)
    assert_identical(final_state(tmp_path / "whole"), final_state(tmp_path / "killed"))
    steps = [r["step"] for r in step_records(tmp_path / "killed")]
    assert steps == [r["step"] for r in step_records(tmp_path / "whole")]  # none missing or doubled
    assert steps == list(range(1, 81))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_checkpoint_then_exit_cleanly(tmp_path, signum):
    flags = tiny_flags(tmp_path / "c", epochs=40, checkpoint_every=1000)
    process = _start(tmp_path / "run", flags)
    _wait_for_steps(tmp_path / "run", process, steps=3)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert "Traceback" not in stderr and "--resume" in stderr
    saved = checkpoint.Checkpoints(str(tmp_path / "run" / "checkpoints")).latest_step()
    assert saved is not None and saved == step_records(tmp_path / "run")[-1]["step"]


def _nan_at(monkeypatch, bad_step: int, times: int):
    """Make the step function report NaN losses for the step `bad_step` (0-based), `times` times."""
    real = parallel.jit_train_steps
    left = [times]

    def patched(cfg):
        step_fn = real(cfg)

        def run(state, batches):
            first = int(state.step)
            state, metrics = step_fn(state, batches)
            if left[0] and first <= bad_step < first + batches.shape[0]:
                left[0] -= 1
                metrics = metrics.at[bad_step - first, METRICS.index("d_loss")].set(np.nan)
            return state, metrics
        return run

    monkeypatch.setattr(parallel, "jit_train_steps", patched)


def test_nonfinite_losses_stop_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    _nan_at(monkeypatch, bad_step=5, times=1)
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"), devices=1)
    with pytest.raises(Diverged, match="step 6") as e:
        train(cfg, str(tmp_path / "run"), quiet=True)
    assert "step 4" in str(e.value)  # the checkpoint kept
    assert checkpoint.Checkpoints(str(tmp_path / "run" / "checkpoints")).latest_step() == 4
    checkpoint.load_checkpoint(str(tmp_path / "run"))


def test_nonfinite_losses_roll_back_and_continue(tmp_path, monkeypatch):
    _nan_at(monkeypatch, bad_step=5, times=1)
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"), devices=1, on_nonfinite="rollback")
    with pytest.warns(UserWarning, match="Rolled back to step 4"):
        state = train(cfg, str(tmp_path / "run"), quiet=True)
    total = cfg.epochs * cfg.num_synthetic // cfg.batch_size
    assert int(state.step) == total
    assert [r["step"] for r in step_records(tmp_path / "run")] == list(range(1, total + 1))
    assert any(r.get("rollback") == 1 and r["step"] == 4 for r in records(tmp_path / "run"))


def test_rollback_after_an_epoch_end_keeps_one_record_of_each(tmp_path, monkeypatch):
    """NaN in epoch 2 after epoch 1's grid and evaluation: back to the checkpoint at its end;
    its outputs stay, written once, and epoch 2's come once, after the rollback."""
    _nan_at(monkeypatch, bad_step=9, times=1)
    monkeypatch.setattr(metrics, "JaxInception", lambda mode: (_ for _ in ()).throw(
        UserError("not in this test")))  # SWD alone: the Inception network takes a minute
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"), devices=1, on_nonfinite="rollback",
                       eval_every=1, eval_samples=16)
    with pytest.warns(UserWarning, match="Rolled back to step 8"):
        train(cfg, str(tmp_path / "run"), quiet=True)
    found = records(tmp_path / "run")
    assert [r["step"] for r in found if "swd" in r] == [8, 16]
    assert [r["step"] for r in found if "diversity" in r] == [8, 16]
    assert [r["step"] for r in found if "g_loss" in r] == list(range(1, 17))
    assert sorted(os.listdir(tmp_path / "run" / "samples")) == ["epoch_001.png", "epoch_002.png"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    calls = []
    real = checkpoint.ocp.CheckpointManager.save

    def full(self, step, *args, **kwargs):
        calls.append(step)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", full)
    with pytest.raises(UserError, match="No space left on device.*step 4 is intact"):
        train(TINY.replace(cache_dir=str(tmp_path / "c")), str(tmp_path / "run"), quiet=True)
    state, _ = checkpoint.load_checkpoint(str(tmp_path / "run"))
    assert int(state.step) == 4


def test_unreadable_files_are_skipped_counted_and_reported(tmp_path):
    good = tmp_path / "imgs"
    good.mkdir()
    for i in range(4):
        Image.new("RGB", (80, 90), (i * 40, 10, 10)).save(good / f"ok{i}.png")
    (good / "empty.jpg").write_bytes(b"")
    (good / "text.png").write_text("this is not an image")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "JPEG")
    (good / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    Image.new("L", (9000, 9000)).save(good / "huge.png")  # 81 MPixel: refused, not decoded
    cfg = Config(dataset="folder", data_dir=str(good), cache_dir=str(tmp_path / "c"),
                 image_size=16, crop_size=0)
    with pytest.warns(UserWarning, match=r"Skipped 4 of 8 files.*e\.g\.") as record:
        images = dataset.load_dataset(cfg, quiet=True)
    assert len(record) == 1 and len(images) == 4

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(UserError, match="None of the 1 files"):
        dataset.load_dataset(cfg.replace(data_dir=str(bad)), quiet=True)


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        dataset.load_dataset(Config(dataset="folder", data_dir=str(tmp_path / "nope")), quiet=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(UserError, match="No images"):
        dataset.load_dataset(Config(dataset="folder", data_dir=str(tmp_path / "empty")), quiet=True)


def test_image_loader_survives_random_and_mutated_bytes(tmp_path):
    """Fuzz: every input gives an RGB array or is skipped; nothing else escapes."""
    rng = random.Random(0)
    seeds = []
    for fmt in ("PNG", "JPEG", "WEBP", "BMP", "GIF"):
        buffer = io.BytesIO()
        Image.new("RGB", (37, 29), (200, 100, 50)).save(buffer, fmt)
        seeds.append(buffer.getvalue())
    path = tmp_path / "fuzz.png"
    items = dataset.Items([str(path)], lambda p: dataset._load_image(p, 160, 16))
    outcomes = {"image": 0, "skipped": 0}
    for i in range(400):
        if i % 4 == 0:
            blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
        else:
            blob = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 12)):
                op = rng.randrange(3)
                pos = rng.randrange(len(blob)) if blob else 0
                if op == 0 and blob:
                    blob[pos] = rng.getrandbits(8)
                elif op == 1:
                    del blob[pos:pos + rng.randrange(1, 64)]
                else:
                    blob[pos:pos] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 16)))
        path.write_bytes(bytes(blob))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = dataset._try_load(items, str(path))
        if image is None:
            outcomes["skipped"] += 1
        else:
            assert image.shape == (16, 16, 3) and image.dtype == np.uint8
            outcomes["image"] += 1
    assert outcomes["image"] > 0 and outcomes["skipped"] > 0


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    cli_here("train", "--out", tmp / "run", "--quiet", *tiny_flags(tmp / "c", epochs=1))
    return tmp


def test_output_dir_of_another_run_is_not_mixed(finished_run):
    run = finished_run / "run"
    before = (run / "metrics.jsonl").read_text()
    flags = tiny_flags(finished_run / "c", epochs=1)
    result = cli_here("train", "--out", run, "--quiet", *flags, check=False)
    assert result.returncode == 2 and "already holds a training run" in result.stderr
    result = cli_here("train", "--out", run, "--quiet", "--resume", *tiny_flags(
        finished_run / "c", epochs=1, gen_features=16), check=False)
    assert result.returncode == 2 and "--gen-features 8, not 16" in result.stderr
    assert "Traceback" not in result.stderr and (run / "metrics.jsonl").read_text() == before


def test_damaged_partial_and_mismatched_checkpoints(finished_run, tmp_path):
    import shutil
    step_dir = next((finished_run / "run" / "checkpoints").iterdir())

    damaged = tmp_path / "damaged" / "checkpoints"
    shutil.copytree(step_dir, damaged / step_dir.name)
    for f in (damaged / step_dir.name / "state").rglob("*"):
        if f.is_file() and "ocdbt" in str(f.parent.name) or f.name.startswith("manifest"):
            f.write_bytes(b"garbage")
    result = cli_here("sample", "--checkpoint", damaged, "--out", tmp_path / "g.png",
                      check=False)
    assert result.returncode == 2 and "could not be read" in result.stderr
    assert "Traceback" not in result.stderr

    partial = tmp_path / "partial" / "checkpoints"
    shutil.copytree(step_dir, partial / f"{step_dir.name}.orbax-checkpoint-tmp-1")
    result = cli_here("sample", "--checkpoint", partial, "--out", tmp_path / "g.png",
                      check=False)
    assert result.returncode == 2 and "no complete checkpoint" in result.stderr

    other = tmp_path / "other" / "checkpoints"
    shutil.copytree(step_dir, other / step_dir.name)
    config = other / step_dir.name / "config" / "metadata"
    stored = json.loads(config.read_text())
    config.write_text(json.dumps({**stored, "dis_features": 16}))
    result = cli_here("sample", "--checkpoint", other, "--out", tmp_path / "g.png",
                      check=False)
    assert result.returncode == 2 and "stored with shape" in result.stderr, result.stderr
