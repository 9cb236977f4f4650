"""The lecture's settings, pinned from its code (../shared/SEED.md) rather than from `Config`.

The other parity checks build the PyTorch reference from the `Config` they test, so a
changed default would change both sides alike. Here the values are written out as the
lecture's notebook has them, and one comparison builds the reference from
`torch_reference`'s own defaults (`DCGAN()`, `make_optimizers(model)`), which are the
lecture's: a default of ours that drifts from the lecture fails here.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_dcgan.config import Config, preset
from jax_dcgan.model.layers import BatchNorm, dcgan_normal, torch_uniform
from jax_dcgan.model.step import (create_train_state, draw_step_randomness, jit_train_steps,
                                  metrics_dict, step_key)
from jax_dcgan.outputs.sample import GRID_IMAGES
from jax_dcgan.tools import parity
from torch_reference import DCGAN, make_optimizers, train_step

from .test_step import assert_same_training_state

# train_gan_v1's notebook: CelebA 'train', CenterCrop(160) -> Resize(64), batch 128, 20
# epochs, seed 42; DCGAN(latent_dim=100, num_feat_maps_gen=64, num_feat_maps_dis=64,
# color_channels=3) with LeakyReLU() (slope 0.01) in both networks and PyTorch's default
# init; Adam(lr=0.0002, betas=(0.5, 0.999)) for both, eps PyTorch's 1e-8; a line every 100
# batches and a grid of 64 images from fixed noise after each epoch. Nothing else.
LECTURE = dict(split="train", crop_size=160, image_size=64, batch_size=128, epochs=20, seed=42,
               log_every=100, latent_dim=100, gen_features=64, dis_features=64, channels=3,
               gen_activation="leaky_relu", gen_slope=0.01, dis_slope=0.01, weight_init="torch",
               lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999, eps=1e-8, fresh_noise=False,
               label_flip=0.0, label_smoothing=0.0, ema_decay=0.0, grid_updates_stats=True)


def test_the_defaults_and_the_seed_preset_are_the_lectures():
    for cfg in (Config(), preset("seed")):
        assert {name: getattr(cfg, name) for name in LECTURE} == LECTURE
    assert GRID_IMAGES == 64
    assert preset("seed").dataset == "celeb_a"
    # Everything the seed preset sets beyond the defaults is the dataset.
    changed = {f.name for f in dataclasses.fields(Config)
               if getattr(preset("seed"), f.name) != getattr(Config(), f.name)}
    assert changed == {"dataset"}


def test_the_failing_run_and_the_papers_settings():
    # The lecture's failing run: ReLU in the generator, LeakyReLU(0.2) in the discriminator.
    relu = preset("seed-relu")
    assert {k: getattr(relu, k) for k in LECTURE} == {**LECTURE, "gen_activation": "relu",
                                                     "dis_slope": 0.2}
    # Radford et al. (2016): the same activations, weights N(0, 0.02), Adam as the lecture's.
    paper = preset("dcgan-paper")
    assert {k: getattr(paper, k) for k in LECTURE} == {**LECTURE, "gen_activation": "relu",
                                                      "dis_slope": 0.2, "weight_init": "dcgan"}


def test_layer_constants_are_pytorchs():
    """BatchNorm2d(eps=1e-5, momentum=0.1); conv init U(+-1/sqrt(fan_in)); DCGAN's N(0, 0.02)
    and BatchNorm scale N(1, 0.02)."""
    bn = BatchNorm()
    assert (bn.momentum, bn.epsilon) == (0.1, 1e-5)
    key = jax.random.key(0)
    weights = np.asarray(torch_uniform(48)(key, (200_000,)))
    assert np.abs(weights).max() <= 1 / np.sqrt(48) and np.abs(weights).max() > 0.99 / np.sqrt(48)
    normal = np.asarray(dcgan_normal()(key, (200_000,)))  # std error of the std: 0.16%
    assert normal.std() == pytest.approx(0.02, rel=0.01) and abs(normal.mean()) < 2e-4
    assert np.asarray(dcgan_normal(1.0)(key, (200_000,))).mean() == pytest.approx(1.0, abs=2e-4)


def test_two_steps_against_the_reference_built_from_its_own_defaults():
    """The lecture's model and optimisers as `torch_reference` makes them with no arguments,
    against `Config()` with only the precision changed (float64, as many-step parity is
    compared): every parameter, statistic and Adam moment to 1e-9 after two steps. The
    first step's moments already show beta1 and beta2 (m = (1 - beta1) g, v = (1 - beta2)
    g^2), though its update is about lr sign(g) whatever they are; the second step's update
    shows them and eps."""
    torch.manual_seed(0)
    model = DCGAN().double()
    optimizers = make_optimizers(model)
    cfg = Config(dtype="float64", conv_impl="matmul")
    batch = 4
    with parity.float64():
        step_cfg = cfg.step_config()
        state = create_train_state(step_cfg, cfg.seed, parity.jax_variables(model, cfg))
        step = jit_train_steps(step_cfg)
        for i in range(2):
            data = parity.images(cfg, batch, seed=100 + i)
            noise = draw_step_randomness(step_key(state), step_cfg, batch)["noise"]
            logs = train_step(model, *optimizers, parity.to_torch_images(data, torch.float64),
                              parity.torch_noise(noise, torch.float64))
            state, metrics = step(state, jnp.asarray(data)[None])
            assert metrics_dict(metrics[0]) == pytest.approx(logs, abs=1e-9)
        assert_same_training_state(cfg, model, optimizers, state, atol=1e-9, rtol_moments=1e-9)
