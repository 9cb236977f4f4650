"""Shared builders: the PyTorch reference and the Flax model with the same weights."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import torch

from jax_dcgan.config import Config
from jax_dcgan.convert import from_state_dict, to_state_dict
from torch_reference import DCGAN

SEED_CFG = Config()  # the lecture's widths: 64/64, latent 100, 64x64x3
SMALL_CFG = Config(gen_features=8, dis_features=8, latent_dim=16, image_size=32)
CONV_IMPLS = ("matmul", "xla")


def torch_model(cfg: Config, seed: int = 0, dtype=torch.float32) -> DCGAN:
    torch.manual_seed(seed)
    return DCGAN(cfg.latent_dim, cfg.gen_features, cfg.dis_features, cfg.channels,
                 cfg.image_size, cfg.gen_activation, cfg.gen_slope, cfg.dis_slope,
                 cfg.weight_init).to(dtype)


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def jax_variables(model: DCGAN, cfg: Config) -> dict:
    return jax.tree.map(jax.numpy.asarray, from_state_dict(state_dict_numpy(model), cfg.model))


def images(cfg: Config, n: int, seed: int = 0) -> np.ndarray:
    """A uint8 NHWC batch."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, cfg.image_size, cfg.image_size, cfg.channels), np.uint8)


def to_torch_images(batch: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """ToTensor + Normalize(0.5, 0.5), as the lecture's pipeline computes it."""
    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).to(dtype).div(255)
    return x.sub(0.5).div(0.5)


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def flax_tree_as_torch(params: dict, net: str, cfg: Config) -> dict[str, np.ndarray]:
    """A params-shaped tree of one network (gradients, Adam moments) in PyTorch layout."""
    return to_state_dict({"generator": {}, "discriminator": {}, net: {"params": params}},
                         cfg.model)


@contextlib.contextmanager
def float64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
