"""`jax-dcgan train` end to end on tiny configurations."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import torch

from jax_dcgan import checkpoint
from jax_dcgan.train import train
from torch_reference import DCGAN

from .helpers import ROOT, TINY, cli, tiny_flags


def _records(out):
    """The per-step records (not the per-epoch events)."""
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "g_loss" in r]


def _params(out):
    state, _ = checkpoint.load(out)
    return jax.tree.map(np.asarray, (state.generator, state.discriminator, state.g_opt,
                                     state.d_opt, state.rng, state.step))


def _assert_identical(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("devices", [1, 4])
def test_train_writes_every_output(tmp_path, devices):
    cfg = TINY.replace(cache_dir=str(tmp_path / "cache"), devices=devices)
    out = tmp_path / "run"
    state = train(cfg, str(out), quiet=True)
    steps_per_epoch = cfg.num_synthetic // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    assert int(state.step) == total

    records = _records(out)
    assert [r["step"] for r in records] == list(range(1, total + 1))
    assert all(np.isfinite(r[k]) for r in records for k in ("g_loss", "d_loss"))
    assert {r["epoch"] for r in records} == {1, 2}
    assert all(0 <= r["acc_real"] <= 100 and r["images_per_s"] > 0 for r in records)

    assert sorted(os.listdir(out / "samples")) == ["epoch_001.png", "epoch_002.png"]
    assert (out / "losses.png").stat().st_size > 10_000
    assert checkpoint.Checkpoints(str(out / "checkpoints")).latest_step() == total
    model = DCGAN(cfg.latent_dim, cfg.gen_features, cfg.dis_features, image_size=cfg.image_size)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)


def test_one_and_four_devices_train_alike(tmp_path):
    """Same global batches and noise; only summation order differs (float32, 8 steps)."""
    states = [train(TINY.replace(cache_dir=str(tmp_path / "c"), devices=d, epochs=1),
                    str(tmp_path / f"run{d}"), quiet=True) for d in (1, 4)]
    for a, b in zip(jax.tree.leaves(states[0].generator), jax.tree.leaves(states[1].generator)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-3)


def test_streamed_data_gives_the_same_run_as_device_resident(tmp_path):
    base = TINY.replace(cache_dir=str(tmp_path / "c"), epochs=1)
    train(base, str(tmp_path / "a"), quiet=True)
    train(base.replace(data_on_device="no"), str(tmp_path / "b"), quiet=True)
    _assert_identical(_params(tmp_path / "a"), _params(tmp_path / "b"))
    strip = lambda out: [{k: v for k, v in r.items() if k != "images_per_s"} for r in _records(out)]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")


def test_fused_steps_give_the_same_run(tmp_path):
    """K steps per dispatch (lax.scan) vs one: XLA fuses the loop body differently, so the
    same math rounds differently (~1e-7); Adam's first steps can turn that into up to
    2 lr on near-zero gradients, hence 1e-3 on parameters after 8 steps."""
    base = TINY.replace(cache_dir=str(tmp_path / "c"), epochs=1)
    a = train(base, str(tmp_path / "a"), quiet=True)
    b = train(base.replace(steps_per_dispatch=3), str(tmp_path / "b"), quiet=True)
    for x, y in zip(jax.tree.leaves(a.generator), jax.tree.leaves(b.generator), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-3)
    for ra, rb in zip(_records(tmp_path / "a"), _records(tmp_path / "b"), strict=True):
        assert ra["step"] == rb["step"] and ra["g_loss"] == pytest.approx(rb["g_loss"], rel=1e-3)


def test_resume_continues_exactly(tmp_path):
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"))
    train(cfg, str(tmp_path / "whole"), quiet=True)
    train(cfg.replace(steps=5), str(tmp_path / "parts"), quiet=True)  # stops at step 5
    train(cfg, str(tmp_path / "parts"), resume=True, quiet=True)
    _assert_identical(_params(tmp_path / "whole"), _params(tmp_path / "parts"))
    assert _records(tmp_path / "whole") == [
        {**r, "images_per_s": w["images_per_s"]}
        for r, w in zip(_records(tmp_path / "parts"), _records(tmp_path / "whole"))]


def test_killed_run_resumes_bit_identical(tmp_path):
    """SIGKILL after a checkpoint, then --resume: the same parameters as an uninterrupted run."""
    flags = tiny_flags(tmp_path / "c", epochs=6, checkpoint_every=4)
    cli("train", "--out", tmp_path / "whole", "--quiet", *flags)
    process = subprocess.Popen([sys.executable, "-m", "jax_dcgan.cli", "train", "--out",
                                str(tmp_path / "killed"), "--quiet", *flags], cwd=ROOT)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints.exists() and any(d.isdigit() for d in os.listdir(checkpoints))):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    cli("train", "--out", tmp_path / "killed", "--quiet", "--resume", *flags)
    _assert_identical(_params(tmp_path / "whole"), _params(tmp_path / "killed"))
    steps = [r["step"] for r in _records(tmp_path / "killed")]
    assert steps == list(range(1, steps[-1] + 1)) == [r["step"] for r in _records(tmp_path / "whole")]


def test_cli_train_then_sample_then_convert(tmp_path):
    cli("train", "--out", tmp_path / "run", "--quiet", *tiny_flags(tmp_path / "c", epochs=1))
    result = cli("sample", "--checkpoint", tmp_path / "run", "--num", 16, "--out",
                 tmp_path / "grid.png", "--save-array", tmp_path / "x.npy")
    assert "16 samples" in result.stdout
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (16, 16, 16, 3) and np.all(np.abs(images) <= 1)
    cli("convert", "--to-torch", tmp_path / "run", "--out", tmp_path / "m.pt")
    model = DCGAN(TINY.latent_dim, TINY.gen_features, TINY.dis_features, image_size=16)
    model.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
