"""The training loop against the lecture's loop, and `jax-dcgan parity` itself."""

import json

import jax
import numpy as np
import pytest
import torch

from jax_dcgan import cli, data, parity
from jax_dcgan.convert import save_torch_file, to_state_dict
from jax_dcgan.parity import float64, state_dict_numpy, to_torch_images, torch_model
from jax_dcgan.sample import GRID_IMAGES, draw_noise
from jax_dcgan.step import create_train_state, draw_step_randomness
from jax_dcgan.train import train
from torch_reference import make_optimizers, train_step
from tests.helpers import TINY


def test_two_epochs_export_what_the_lectures_loop_saves(tmp_path):
    """`jax-dcgan train` (float64, 2 epochs of 8 steps) against the lecture's loop in the
    reference, fed the same start, data order and noise: after each epoch the lecture draws
    its grid with the generator in train mode, which moves G's running statistics and
    count, and model.pt must hold that too. Every tensor compared (float64: ~1e-16 per step
    measured by the parity rows; held to 1e-12)."""
    cfg = TINY.replace(dtype="float64", cache_dir=str(tmp_path / "cache"))
    assert cfg.grid_updates_stats
    train(cfg, str(tmp_path / "run"), quiet=True)
    ours = torch.load(tmp_path / "run" / "model.pt", weights_only=True)

    with float64():
        start = create_train_state(cfg)
        model = torch_model(cfg, dtype=torch.float64, state_dict=to_state_dict(
            {"generator": start.generator, "discriminator": start.discriminator}, cfg.model))
        opt_g, opt_d = make_optimizers(model, cfg.lr_g, cfg.lr_d, (cfg.beta1, cfg.beta2), cfg.eps)
        images = data.load_dataset(cfg, quiet=True)
        steps_per_epoch, b = len(images) // cfg.batch_size, cfg.batch_size
        grid_noise = torch.from_numpy(np.asarray(draw_noise(cfg.latent_dim, GRID_IMAGES, cfg.seed),
                                                 np.float64))[:, :, None, None]
        for epoch in range(cfg.epochs):
            order = data.epoch_order(cfg.seed, epoch, len(images))
            for i in range(steps_per_epoch):
                key = jax.random.fold_in(start.rng, epoch * steps_per_epoch + i)
                noise = np.asarray(draw_step_randomness(key, cfg, b)["noise"], np.float64)
                train_step(model, opt_g, opt_d,
                           to_torch_images(images[order[i * b:(i + 1) * b]], torch.float64),
                           torch.from_numpy(noise)[:, :, None, None])
            with torch.no_grad():
                model.generator(grid_noise)  # the lecture's grid: model still in train mode
    theirs = state_dict_numpy(model)
    assert set(ours) == set(theirs)
    assert int(ours["generator.1.num_batches_tracked"]) == cfg.epochs * (steps_per_epoch + 1)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name].numpy(), value, rtol=0, atol=1e-12, err_msg=name)


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
