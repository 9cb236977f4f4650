"""Bad input ends with one clear paragraph on stderr, a non-zero exit and no traceback."""

import json
import sys

import numpy as np
import pytest
import torch

from torch_reference import DCGAN

from .helpers import TINY, cli_here, tiny_flags, tiny_run


def _fails(*args, match: str, code: int = 2):
    result = cli_here(*args, check=False)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert match.lower() in result.stderr.lower(), result.stderr
    return result


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("run"), epochs=1)


def test_convert_missing_file(tmp_path):
    _fails("convert", "--from-torch", tmp_path / "nope.pt", "--out", tmp_path / "o",
           match="No PyTorch file")


def test_convert_not_a_state_dict(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    _fails("convert", "--from-torch", tmp_path / "junk.pt", "--out", tmp_path / "o",
           match="Could not read")


def test_convert_wrong_keys(tmp_path):
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    _fails("convert", "--from-torch", tmp_path / "other.pt", "--out", tmp_path / "o",
           match="not a state dict of the lecture's DCGAN")
    state = DCGAN().state_dict()
    del state["discriminator.11.bias"]
    torch.save(state, tmp_path / "missing.pt")
    _fails("convert", "--from-torch", tmp_path / "missing.pt", "--out", tmp_path / "o",
           match="discriminator.11.bias")


def test_convert_wrong_shape_names_the_tensor(tmp_path):
    state = DCGAN().state_dict()
    state["discriminator.5.weight"] = torch.zeros(256, 128, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    _fails("convert", "--from-torch", tmp_path / "bad.pt", "--out", tmp_path / "o",
           match="'discriminator.5.weight' has shape (256, 128, 3, 3)")


def test_convert_refuses_to_overwrite(tmp_path):
    torch.save(DCGAN(latent_dim=8, num_feat_maps_gen=8, num_feat_maps_dis=8, image_size=16)
               .state_dict(), tmp_path / "m.pt")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("precious")
    _fails("convert", "--from-torch", tmp_path / "m.pt", "--out", tmp_path / "o",
           match="not empty")
    assert (tmp_path / "o" / "keep.txt").read_text() == "precious"


def test_sample_missing_checkpoint(tmp_path):
    _fails("sample", "--checkpoint", tmp_path / "nothing", "--out", tmp_path / "g.png",
           match="No checkpoint")
    (tmp_path / "empty").mkdir()
    _fails("sample", "--checkpoint", tmp_path / "empty", "--out", tmp_path / "g.png",
           match="no complete checkpoint")


def test_sample_noise_of_the_wrong_shape(run_dir, tmp_path):
    np.save(tmp_path / "z.npy", np.zeros((4, TINY.latent_dim + 1), np.float32))
    _fails("sample", "--checkpoint", run_dir, "--noise", tmp_path / "z.npy", "--out",
           tmp_path / "g.png", match=f"shape (N, {TINY.latent_dim})")
    np.save(tmp_path / "ok.npy", np.zeros((4, TINY.latent_dim), np.float32))
    _fails("sample", "--checkpoint", run_dir, "--noise", tmp_path / "ok.npy", "--num", 5,
           "--out", tmp_path / "g.png", match="disagrees")
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    _fails("sample", "--checkpoint", run_dir, "--noise", tmp_path / "bad.npy", "--out",
           tmp_path / "g.png", match="Could not read the noise file")


def test_sample_accepts_torch_shaped_noise(run_dir, tmp_path):
    """PyTorch's (N, latent, 1, 1) noise gives the same images as the same (N, latent)."""
    z = np.random.default_rng(0).standard_normal((4, TINY.latent_dim)).astype(np.float32)
    np.save(tmp_path / "z4.npy", z[:, :, None, None])
    np.save(tmp_path / "z2.npy", z)
    for name in ("z4", "z2"):
        cli_here("sample", "--checkpoint", run_dir, "--noise", tmp_path / f"{name}.npy",
                 "--out", tmp_path / f"{name}.png",
                 "--save-array", tmp_path / f"{name}-images.npy")
    images = np.load(tmp_path / "z4-images.npy")
    assert images.shape == (4, TINY.image_size, TINY.image_size, 3) and images.std() > 0
    np.testing.assert_array_equal(images, np.load(tmp_path / "z2-images.npy"))


def test_unknown_preset_and_bad_flags(tmp_path):
    result = cli_here("train", "--out", tmp_path / "r", "--preset", "nope", check=False)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    _fails("train", "--out", tmp_path / "r", "--batch-size", "0",
           match="--batch-size must be positive")
    _fails("train", "--out", tmp_path / "r", "--lr-g", "-1", match="--lr-g must be positive")
    _fails("train", "--out", tmp_path / "r", "--batch-size", "6", "--devices", "4",
           match="does not split evenly over 4 devices")


def test_out_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("precious")
    _fails("train", "--out", tmp_path / "taken", *tiny_flags(tmp_path / "c"), match="is a file")
    assert (tmp_path / "taken").read_text() == "precious"


def test_config_file_then_flags(tmp_path):
    """A run's config.json as --config, with a flag overriding one field."""
    cli_here("train", "--out", tmp_path / "a", "--quiet", *tiny_flags(tmp_path / "c", epochs=1))
    cli_here("train", "--out", tmp_path / "b", "--quiet",
             "--config", tmp_path / "a" / "config.json", "--seed", "7")
    a = json.loads((tmp_path / "a" / "config.json").read_text())
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert b == {**a, "seed": 7}
    (tmp_path / "bad.yaml").write_text("image_size: 16\nlearning_rate: 0.1\n")
    _fails("train", "--out", tmp_path / "r", "--config", tmp_path / "bad.yaml",
           match="'learning_rate', which is not a field")
    (tmp_path / "typed.json").write_text('{"batch_size": "many"}')
    _fails("train", "--out", tmp_path / "r", "--config", tmp_path / "typed.json",
           match="batch_size is 'many', but --batch-size takes an integer")
    (tmp_path / "broken.json").write_text("{")
    _fails("train", "--out", tmp_path / "r", "--config", tmp_path / "broken.json",
           match="not valid JSON")
    _fails("train", "--out", tmp_path / "r", "--config", tmp_path / "none.json",
           match="Could not read the config file")
    assert not (tmp_path / "r").exists()


def test_config_file_values_are_typed(tmp_path):
    from jax_dcgan.config import read_config_file

    (tmp_path / "c.yaml").write_text("image_size: 16\nlr_g: 1\nfresh_noise: true\n")
    assert read_config_file(str(tmp_path / "c.yaml")) == {"image_size": 16, "lr_g": 1.0,
                                                            "fresh_noise": True}


def test_version():
    from jax_dcgan import __version__
    assert cli_here("--version").stdout.strip() == f"jax-dcgan {__version__}"


@pytest.mark.parametrize("argv,reexecs", [
    (["train", "--out", "x", "--batch-size", "0"], True), (["bench", "--steps", "0"], True),
    (["convert", "--to-torch", "nowhere", "--out", "x.pt"], False),
    (["sample", "--checkpoint", "nowhere", "--out", "g.png"], False)])
def test_only_heavy_commands_restart_with_huge_pages(monkeypatch, argv, reexecs):
    from jax_dcgan import cli as cli_module
    calls = []
    monkeypatch.setattr(cli_module.runtime, "reexec_with_huge_pages", lambda: calls.append(1))
    monkeypatch.setattr(cli_module, "_quiet_libraries", lambda: None)  # this process's logging
    monkeypatch.setattr(sys, "argv", ["jax-dcgan", *argv])
    assert cli_module.main() == 2  # each fails on its bad input
    assert bool(calls) == reexecs
