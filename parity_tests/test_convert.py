"""Conversion between the lecture's state dict and Flax variables, and the CLI round trip."""


import jax
import numpy as np
import pytest
import torch

from jax_dcgan.model.convert import config_for_state_dict, from_state_dict, to_state_dict
from jax_dcgan.model.networks import init_variables
from jax_dcgan.tools.parity import SEED_CFG, SMALL_CFG, state_dict_numpy, torch_model
from tests.helpers import cli_here
from torch_reference import DCGAN

LECTURE_KEYS = (
    [f"generator.{i}.weight" for i in (0,)]
    + [f"generator.{i}.{s}" for i in (1, 4, 7, 10) for s in
       ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    + [f"generator.{i}.weight" for i in (3, 6, 9, 12)]
    + ["discriminator.0.weight", "discriminator.0.bias", "discriminator.11.weight",
       "discriminator.11.bias"]
    + [f"discriminator.{i}.weight" for i in (2, 5, 8)]
    + [f"discriminator.{i}.{s}" for i in (3, 6, 9) for s in
       ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")])


def test_reference_has_the_lecture_state_dict_layout():
    assert sorted(DCGAN().state_dict()) == sorted(LECTURE_KEYS)


def test_torch_to_flax_to_torch_is_bit_exact():
    model = torch_model(SEED_CFG)
    for _ in range(2):  # non-trivial running statistics and counters
        model.generator(torch.randn(4, 100, 1, 1))
    theirs = state_dict_numpy(model)
    back = to_state_dict(from_state_dict(theirs, SEED_CFG.model), SEED_CFG.model)
    assert back.keys() == theirs.keys()
    for k in theirs:
        assert back[k].dtype == theirs[k].dtype and np.array_equal(back[k], theirs[k]), k
    reloaded = DCGAN()
    reloaded.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_flax_to_torch_to_flax_is_bit_exact():
    variables = jax.tree.map(np.asarray, init_variables(SMALL_CFG.model, jax.random.key(3)))
    again = from_state_dict(to_state_dict(variables, SMALL_CFG.model), SMALL_CFG.model)
    assert jax.tree.structure(again) == jax.tree.structure(variables)
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(variables)):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_config_is_inferred_from_shapes():
    sd = state_dict_numpy(torch_model(SMALL_CFG))
    cfg = config_for_state_dict(sd, SEED_CFG)
    assert (cfg.latent_dim, cfg.gen_features, cfg.dis_features, cfg.image_size, cfg.channels) == (
        16, 8, 8, 32, 3)


def test_flax_init_matches_torch_init_distribution():
    """PyTorch's default init, U(-1/sqrt(fan_in), +), incl. ConvTranspose2d's fan_in quirk:
    each large conv tensor's largest |value| is within 2% of the same bound in both."""
    ours = to_state_dict(jax.tree.map(np.asarray, init_variables(SEED_CFG.model,
                                                                 jax.random.key(0))),
                         SEED_CFG.model)
    theirs = state_dict_numpy(torch_model(SEED_CFG))
    conv_tensors = [k for k, v in theirs.items() if v.ndim == 4 or k == "discriminator.0.bias"]
    assert len(conv_tensors) == 11
    for k in conv_tensors:
        assert np.max(np.abs(ours[k])) == pytest.approx(np.max(np.abs(theirs[k])), rel=0.02), k


def test_converted_checkpoint_samples_like_torch_eval_mode(tmp_path):
    """convert --from-torch, sample --bn running == the PyTorch model in eval mode."""
    model = torch_model(SEED_CFG)
    for _ in range(3):
        model.generator(torch.randn(16, 100, 1, 1))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(saved, tmp_path / "gan_celeba_01.pt")
    cli_here("convert", "--from-torch", tmp_path / "gan_celeba_01.pt", "--out", tmp_path / "ckpt")

    noise = np.random.default_rng(0).standard_normal((10, 100)).astype(np.float32)
    np.save(tmp_path / "z.npy", noise)
    for bn, train in (("running", False), ("batch", True)):
        cli_here("sample", "--checkpoint", tmp_path / "ckpt", "--noise", tmp_path / "z.npy",
                 "--bn", bn, "--out", tmp_path / f"{bn}.png", "--save-array",
                 tmp_path / f"{bn}.npy")
        ours = np.load(tmp_path / f"{bn}.npy")
        model.load_state_dict(saved)  # the batch-mode pass below updates running stats
        model.train(train)
        with torch.no_grad():
            theirs = model.generator(torch.from_numpy(noise)[:, :, None, None]).numpy()
        assert ours.shape == (10, 64, 64, 3) and ours.dtype == np.float32
        np.testing.assert_allclose(ours.transpose(0, 3, 1, 2), theirs, atol=1e-5)
        assert (tmp_path / f"{bn}.png").stat().st_size > 0

    cli_here("convert", "--to-torch", tmp_path / "ckpt", "--out", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    DCGAN().load_state_dict(back, strict=True)
    for k, v in saved.items():
        assert torch.equal(back[k], v), k
