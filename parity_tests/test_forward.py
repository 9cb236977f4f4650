"""Shapes after every layer, and whole forward passes of G and D in train and eval mode,
in both convolution backends."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_dcgan.models import Discriminator, Generator, torch_layer_indices

from .common import (CONV_IMPLS, SEED_CFG, images, jax_variables, nchw, to_torch_images,
                     torch_model)

ATOL = 1e-5  # float32, the lecture's widths


def _torch_shapes(seq: torch.nn.Sequential, x: torch.Tensor) -> dict[int, tuple]:
    shapes = {}
    for i, layer in enumerate(seq):
        x = layer(x)
        shapes[i] = tuple(x.shape)
    return shapes


def _flax_shapes(module, net, variables, x) -> dict[int, tuple]:
    """Output shape (NCHW) of every layer, keyed by its index in the lecture's Sequential."""
    _, state = module.apply(variables, x, train=True, capture_intermediates=True,
                            mutable=["batch_stats", "intermediates"])
    indices = torch_layer_indices(SEED_CFG.model)[net]
    shapes = {}
    for name, value in state["intermediates"].items():
        if name != "__call__":
            n, h, w, c = value["__call__"][0].shape
            shapes[indices[name]] = (n, c, h, w)
    return shapes


def test_shape_after_every_layer():
    model = torch_model(SEED_CFG)
    variables = jax_variables(model, SEED_CFG)
    z = torch.randn(2, 100, 1, 1)
    g_torch = _torch_shapes(model.generator, z)
    assert [g_torch[i][1:] for i in (0, 3, 6, 9, 12)] == [
        (512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), (3, 64, 64)]
    g_flax = _flax_shapes(Generator(SEED_CFG.model), "generator", variables["generator"],
                          jnp.zeros((2, 100)))
    assert set(g_flax) == {0, 1, 3, 4, 6, 7, 9, 10, 12}
    assert all(g_flax[i] == g_torch[i] for i in g_flax)

    x = torch.randn(2, 3, 64, 64)
    d_torch = _torch_shapes(model.discriminator, x)
    assert [d_torch[i][1:] for i in (0, 2, 5, 8, 11, 12)] == [
        (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (1, 1, 1), (1,)]
    d_flax = _flax_shapes(Discriminator(SEED_CFG.model), "discriminator",
                          variables["discriminator"], jnp.zeros((2, 64, 64, 3)))
    assert set(d_flax) == {0, 2, 3, 5, 6, 8, 9, 11}
    assert all(d_flax[i] == d_torch[i] for i in d_flax)


def test_readable_layer_names_map_to_the_lecture_indices():
    assert torch_layer_indices(SEED_CFG.model) == {
        "generator": {"project": 0, "bn_4x4": 1, "deconv_8x8": 3, "bn_8x8": 4,
                      "deconv_16x16": 6, "bn_16x16": 7, "deconv_32x32": 9, "bn_32x32": 10,
                      "to_rgb": 12},
        "discriminator": {"from_rgb": 0, "conv_16x16": 2, "bn_16x16": 3, "conv_8x8": 5,
                          "bn_8x8": 6, "conv_4x4": 8, "bn_4x4": 9, "logit": 11}}


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_generator_forward(train, impl):
    model = torch_model(SEED_CFG)
    for _ in range(3):  # give the running statistics something to hold
        model.generator(torch.randn(16, 100, 1, 1))
    variables = jax_variables(model, SEED_CFG)["generator"]
    z = torch.randn(16, 100, 1, 1)
    model.train(train)
    expected = model.generator(z).detach().numpy()
    module = Generator(SEED_CFG.replace(conv_impl=impl).model)
    if train:
        ours, new = module.apply(variables, jnp.asarray(z.numpy()[:, :, 0, 0]), train=True,
                                 mutable=["batch_stats"])
        _assert_stats_equal(new["batch_stats"], model.generator)
    else:
        ours = module.apply(variables, jnp.asarray(z.numpy()[:, :, 0, 0]), train=False)
    np.testing.assert_allclose(nchw(ours), expected, atol=ATOL)


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("train", [True, False])
def test_discriminator_forward(train, impl):
    model = torch_model(SEED_CFG)
    for seed in range(3):
        model.discriminator(to_torch_images(images(SEED_CFG, 16, seed)))
    variables = jax_variables(model, SEED_CFG)["discriminator"]
    batch = images(SEED_CFG, 16, seed=9)
    model.train(train)
    expected = model.discriminator(to_torch_images(batch)).detach().numpy()[:, 0]
    x = jnp.asarray(to_torch_images(batch).numpy().transpose(0, 2, 3, 1))
    module = Discriminator(SEED_CFG.replace(conv_impl=impl).model)
    if train:
        ours, new = module.apply(variables, x, train=True, mutable=["batch_stats"])
        _assert_stats_equal(new["batch_stats"], model.discriminator)
    else:
        ours = module.apply(variables, x, train=False)
    np.testing.assert_allclose(np.asarray(ours), expected, atol=ATOL)


def _assert_stats_equal(stats: dict, seq: torch.nn.Sequential) -> None:
    net = "generator" if isinstance(seq[0], torch.nn.ConvTranspose2d) else "discriminator"
    indices = torch_layer_indices(SEED_CFG.model)[net]
    for name, leaves in stats.items():
        layer = seq[indices[name]]
        np.testing.assert_allclose(leaves["mean"], layer.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(leaves["var"], layer.running_var.numpy(), rtol=1e-5)
        assert int(leaves["count"]) == int(layer.num_batches_tracked)
