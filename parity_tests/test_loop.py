"""The training loop against the lecture's loop, and `jax-dcgan parity` itself."""

import json
import operator

import jax
import numpy as np
import pytest
import torch

from jax_dcgan import cli
from jax_dcgan.data import dataset
from jax_dcgan.model.convert import save_torch_file, to_state_dict
from jax_dcgan.model.step import METRICS, create_train_state, draw_step_randomness
from jax_dcgan.outputs.sample import GRID_IMAGES, draw_noise
from jax_dcgan.tools import parity
from jax_dcgan.tools.parity import float64, state_dict_numpy, torch_model, torch_noise
from jax_dcgan.training.loop import train
from tests.helpers import TINY, step_records
from torch_reference import make_optimizers
from torch_reference.train import lecture_loop

from .test_step import assert_same_training_state

# 320 steps: 16 epochs of 20 batches of 8, 3 steps per call, a checkpoint every 48 steps, and
# a stop at step 151 (mid-epoch, mid-call: calls start at 144, 147, 150) then a resume.
WHOLE_LOOP = TINY.replace(dtype="float64", num_synthetic=160, epochs=16, checkpoint_every=48)


def test_the_whole_loop_is_the_lectures_loop_in_float64(tmp_path):
    """`jax-dcgan train --dtype float64` and the reference's `lecture_loop`, given the JAX
    run's start, data order and noise: every logged loss and accuracy of all 320 steps,
    and the final parameters, BatchNorm statistics and counts (the epoch-end grids move G's
    in both), Adam moments and counts, equal to 1e-12. Measured: losses 6.7e-16 apart at
    worst, parameters and statistics 2.2e-16 (float64's rounding, not growing over the
    run); a skipped, repeated or reordered step moves a parameter by ~lr = 2e-4, and a
    grid pass left out of the reference moved G's running statistics by 5.9e-4."""
    cfg = WHOLE_LOOP.replace(cache_dir=str(tmp_path / "cache"))
    assert cfg.grid_updates_stats and cfg.steps_per_dispatch == 3
    train(cfg.replace(steps=151), str(tmp_path / "run"), quiet=True)
    ours = train(cfg, str(tmp_path / "run"), resume=True, quiet=True)
    logged = step_records(tmp_path / "run")
    exported = torch.load(tmp_path / "run" / "model.pt", weights_only=True)

    with float64():
        step_cfg = cfg.step_config()
        start = create_train_state(step_cfg, cfg.seed)
        model = torch_model(cfg, dtype=torch.float64, state_dict=to_state_dict(
            {"generator": start.generator, "discriminator": start.discriminator}, cfg.model))
        optimizers = make_optimizers(model, cfg.lr_g, cfg.lr_d, (cfg.beta1, cfg.beta2), cfg.eps)
        images = dataset.load_dataset(cfg, quiet=True)
        records = list(lecture_loop(
            model, optimizers, images, cfg.epochs, cfg.batch_size,
            order=lambda epoch: dataset.epoch_order(cfg.seed, epoch, len(images)),
            grid_noise=torch_noise(draw_noise(cfg.latent_dim, GRID_IMAGES, cfg.seed),
                                   torch.float64),
            noise=lambda step: torch_noise(draw_step_randomness(
                jax.random.fold_in(start.rng, step), step_cfg, cfg.batch_size)["noise"],
                torch.float64),
            dtype=torch.float64))
    # The same records: scripts/experiments.py averages a run's last epoch by these fields.
    position = operator.itemgetter("step", "epoch", "batch")
    assert list(map(position, logged)) == list(map(position, records))
    assert [r["step"] for r in records] == list(range(1, 321))
    worst = max(abs(ours_r[k] - theirs_r[k]) for ours_r, theirs_r in zip(logged, records)
                for k in METRICS)
    assert worst < 1e-12, worst
    assert_same_training_state(cfg, model, optimizers, ours, atol=1e-12, rtol_moments=1e-12)
    theirs = state_dict_numpy(model)
    assert int(theirs["generator.1.num_batches_tracked"]) == 320 + cfg.epochs
    for name, value in theirs.items():
        np.testing.assert_allclose(exported[name].numpy(), value, rtol=0, atol=1e-12,
                                   err_msg=name)


def test_parity_command_on_a_lecture_format_file(tmp_path, capsys):
    """`jax-dcgan parity --checkpoint` compares from a user's .pt (here trained-looking
    weights: the reference's init at seed 3 with warmed-up statistics)."""
    model = torch_model(parity.SEED_CFG, seed=3)
    with torch.no_grad():
        model.generator(torch.randn(32, 100, 1, 1))
    save_torch_file(state_dict_numpy(model), str(tmp_path / "model.pt"))
    code = cli.main(["parity", "--checkpoint", str(tmp_path / "model.pt"), "--json",
                     "--only", "architecture", "matmul-forward", "xla-one-step"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["passed"] and report["weights"].endswith("model.pt")
    assert {r["group"] for r in report["rows"]} == {"architecture", "matmul-forward",
                                                    "xla-one-step"}
    assert all(r["status"] in ("PASS", "INFO") and r["why"] for r in report["rows"])


def test_parity_command_fails_on_a_failing_row(monkeypatch, capsys):
    bad = parity.Row("a comparison", 1.0, 1e-6, "a reason")
    monkeypatch.setattr(parity, "checks", lambda setup: [("architecture", lambda: [bad])])
    assert cli.main(["parity"]) == 1
    out = capsys.readouterr().out
    assert "FAIL architecture: a comparison" in out and "a reason" in out


def test_parity_command_that_compares_nothing_does_not_pass(capsys):
    """On a CPU the GPU-precision check has nothing to compare: SKIP, and no PASS."""
    assert cli.main(["parity", "--only", "default-precision"]) == 1
    out = capsys.readouterr().out
    assert "SKIP (no GPU here)" in out and "1 SKIP" in out


def test_parity_command_names_every_check():
    assert cli.PARITY_CHECKS == parity.CHECK_NAMES


@pytest.mark.parametrize("content", [b"", b"not a torch file"])
def test_parity_command_refuses_a_bad_file(tmp_path, capsys, content):
    (tmp_path / "bad.pt").write_bytes(content)
    assert cli.main(["parity", "--checkpoint", str(tmp_path / "bad.pt")]) == 2
    assert "Traceback" not in capsys.readouterr().err
