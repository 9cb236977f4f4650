"""The lecture's generator and discriminator in Flax, NHWC.

Submodules are named after their index in the lecture's `nn.Sequential`
(`conv_0`, `bn_1`, ...), so `generator.3.weight` in a PyTorch checkpoint is
`generator/conv_3/kernel` here; `convert.py` relies on nothing else.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_dcgan.config import Config
from jax_dcgan.layers import BatchNorm, Conv, ConvTranspose, dcgan_normal

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def _activation(kind: str, slope: float):
    if kind == "relu":
        return nn.relu
    return functools.partial(leaky_relu, slope=slope)


def leaky_relu(x: jax.Array, slope: float) -> jax.Array:
    """torch's LeakyReLU, whose gradient at exactly 0 is `slope` (jax.nn's is 1)."""
    return jnp.where(x > 0, x, slope * x)


def _inits(cfg: Config) -> dict:
    if cfg.weight_init == "dcgan":
        return dict(kernel_init=dcgan_normal()), dict(scale_init=dcgan_normal(1.0))
    return {}, {}


class Generator(nn.Module):
    """z (N, latent) -> images (N, H, W, C) in [-1, 1]."""
    cfg: Config
    axis_name: str | None = None

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        cfg, dtype = self.cfg, DTYPES[self.cfg.dtype]
        conv_init, bn_init = _inits(cfg)
        act = _activation(cfg.gen_activation, cfg.gen_slope)
        ups = cfg.num_upsamplings
        widths = [cfg.gen_features * 2 ** (ups - 1 - i) for i in range(ups)]

        x = ConvTranspose(widths[0], 4, 1, 0, dtype=dtype, name="conv_0", **conv_init)(
            z.reshape(z.shape[0], 1, 1, -1))
        idx = 1
        for width in widths[1:] + [cfg.channels]:
            x = BatchNorm(axis_name=self.axis_name, dtype=dtype, name=f"bn_{idx}",
                          **bn_init)(x, train)
            x = act(x)
            x = ConvTranspose(width, 4, 2, 1, dtype=dtype, name=f"conv_{idx + 2}", **conv_init)(x)
            idx += 3
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """images (N, H, W, C) -> logits (N,)."""
    cfg: Config
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg, dtype = self.cfg, DTYPES[self.cfg.dtype]
        conv_init, bn_init = _inits(cfg)
        act = _activation("leaky_relu", cfg.dis_slope)
        widths = [cfg.dis_features * 2 ** i for i in range(cfg.num_upsamplings)]

        x = act(Conv(widths[0], 4, 2, 1, use_bias=True, dtype=dtype, name="conv_0", **conv_init)(x))
        idx = 2
        for width in widths[1:]:
            x = Conv(width, 4, 2, 1, use_bias=False, dtype=dtype, name=f"conv_{idx}", **conv_init)(x)
            x = act(BatchNorm(axis_name=self.axis_name, dtype=dtype, name=f"bn_{idx + 1}",
                              **bn_init)(x, train))
            idx += 3
        x = Conv(1, 4, 1, 0, use_bias=True, dtype=dtype, name=f"conv_{idx}", **conv_init)(x)
        return x.reshape(x.shape[0]).astype(jnp.promote_types(x.dtype, jnp.float32))


def init_variables(cfg: Config, key: jax.Array) -> dict:
    """{'generator': {'params', 'batch_stats'}, 'discriminator': {...}} for `cfg`."""
    kg, kd = jax.random.split(key)
    z = jnp.zeros((1, cfg.latent_dim), jnp.float32)
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
    return {"generator": Generator(cfg).init(kg, z, train=False),
            "discriminator": Discriminator(cfg).init(kd, x, train=False)}
