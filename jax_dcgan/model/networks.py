"""The lecture's generator and discriminator in Flax, NHWC.

Layers are named for what they make (`deconv_8x8` makes the 8x8 maps);
`torch_layer_indices` gives each one's index in the lecture's `nn.Sequential`, so
`generator.3.weight` in a PyTorch checkpoint is `generator/deconv_8x8/kernel` here.
The shape comments are those of the lecture's model (64x64 images, widths 64).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from jax_dcgan.config import ModelConfig
from jax_dcgan.model.layers import BatchNorm, Conv, ConvTranspose, dcgan_normal

__all__ = ["Discriminator", "Generator", "init_variables", "leaky_relu",
           "torch_layer_indices", "training_bytes"]



def leaky_relu(x: jax.Array, slope: float) -> jax.Array:
    """torch's LeakyReLU, whose gradient at exactly 0 is `slope` (jax.nn's is 1)."""
    return jnp.where(x > 0, x, slope * x)


def _activation(kind: str, slope: float):
    return nn.relu if kind == "relu" else functools.partial(leaky_relu, slope=slope)


def _layer_kwargs(cfg: ModelConfig) -> tuple[dict, dict]:
    """Keyword arguments of the convolutions and of the BatchNorms."""
    dtype = jnp.dtype(cfg.numerics.dtype)
    conv, bn = dict(dtype=dtype, backend=cfg.numerics.conv), dict(dtype=dtype)
    if cfg.weight_init == "dcgan":
        conv["kernel_init"], bn["scale_init"] = dcgan_normal(), dcgan_normal(1.0)
    return conv, bn


def _sizes(cfg: ModelConfig) -> list[int]:
    """The square feature-map sizes from 4x4 to the image: 4, 8, 16, 32, 64 in the lecture."""
    return [4 * 2 ** i for i in range(cfg.num_upsamplings + 1)]


def _name(kind: str, size: int) -> str:
    return f"{kind}_{size}x{size}"


class Generator(nn.Module):
    """z (N, latent) -> images (N, H, W, C) in [-1, 1]."""
    cfg: ModelConfig
    axis_name: str | None = None  # BatchNorm statistics over this pmap axis too

    @nn.compact
    def __call__(self, z: jax.Array, train: bool) -> jax.Array:
        cfg = self.cfg
        conv, bn = _layer_kwargs(cfg)
        act = _activation(cfg.gen_activation, cfg.gen_slope)
        sizes = _sizes(cfg)
        widths = [cfg.gen_features * 2 ** (len(sizes) - 2 - i) for i in range(len(sizes) - 1)]

        x = z.reshape(z.shape[0], 1, 1, -1)                                    # (N, 1, 1, 100)
        x = ConvTranspose(widths[0], 4, 1, 0, name="project", **conv)(x)       # (N, 4, 4, 512)
        for size, width in zip(sizes[:-2], widths[1:]):                        # 8x8x256 ... 32x32x64
            x = act(BatchNorm(axis_name=self.axis_name, name=_name("bn", size), **bn)(x, train))
            x = ConvTranspose(width, 4, 2, 1, name=_name("deconv", 2 * size), **conv)(x)
        x = act(BatchNorm(axis_name=self.axis_name, name=_name("bn", sizes[-2]), **bn)(x, train))
        x = ConvTranspose(cfg.channels, 4, 2, 1, name="to_rgb", **conv)(x)   # (N, 64, 64, 3)
        return jnp.tanh(x)


class Discriminator(nn.Module):
    """images (N, H, W, C) -> logits (N,). With `groups` > 1 the batch is that many passes'
    batches one after the other (the lecture's real and fake passes): the convolutions run
    once over all of them, each BatchNorm normalises each with its own statistics and moves
    its running statistics once per pass, in order, as separate calls would."""
    cfg: ModelConfig
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, groups: int = 1) -> jax.Array:
        cfg = self.cfg
        conv, bn = _layer_kwargs(cfg)
        act = _activation("leaky_relu", cfg.dis_slope)
        sizes = _sizes(cfg)[::-1]  # 64, 32, 16, 8, 4
        widths = [cfg.dis_features * 2 ** i for i in range(len(sizes) - 1)]

        x = act(Conv(widths[0], 4, 2, 1, use_bias=True, name="from_rgb", **conv)(x))  # (N, 32, 32, 64)
        for size, width in zip(sizes[2:], widths[1:]):                         # 16x16x128 ... 4x4x512
            x = Conv(width, 4, 2, 1, use_bias=False, name=_name("conv", size), **conv)(x)
            x = act(BatchNorm(axis_name=self.axis_name, name=_name("bn", size), **bn)(
                x, train, groups))
        x = Conv(1, 4, 1, 0, use_bias=True, name="logit", **conv)(x)           # (N, 1, 1, 1)
        return x.reshape(x.shape[0]).astype(jnp.promote_types(x.dtype, jnp.float32))


def torch_layer_indices(cfg: ModelConfig) -> dict[str, dict[str, int]]:
    """Each layer's index in the lecture's `nn.Sequential`, per network.

    In both networks a BatchNorm directly follows its convolution and an activation
    sits between every other pair of layers, so the indices step by 1, then by 2.
    """
    sizes = _sizes(cfg)
    generator = ["project"] + [name for size in sizes[:-2] for name in
                               (_name("bn", size), _name("deconv", 2 * size))]
    generator += [_name("bn", sizes[-2]), "to_rgb"]
    discriminator = ["from_rgb"] + [name for size in sizes[::-1][2:] for name in
                                    (_name("conv", size), _name("bn", size))] + ["logit"]
    indices = {}
    for net, names in (("generator", generator), ("discriminator", discriminator)):
        index, indices[net] = 0, {}
        for previous, name in zip([None] + names, names):
            if previous is not None:
                index += 1 if name.startswith("bn_") else 2
            indices[net][name] = index
    return indices


def training_bytes(cfg: ModelConfig, batch_size: int) -> int:
    """At least what a training step holds: the convolution weights with their gradients and
    Adam's two moments, and every feature map of both networks kept for the backward pass,
    the discriminator's for real and fake. Counted in Python integers from the widths before
    any array exists, so that sizes no device holds are refused with a message, not by XLA."""
    sizes = _sizes(cfg)                                                    # 4 ... 64
    n = len(sizes)
    gen = [cfg.gen_features * 2 ** (n - 2 - i) for i in range(n - 1)] + [cfg.channels]
    dis = [cfg.channels] + [cfg.dis_features * 2 ** i for i in range(n - 1)]  # 64x64 ... 4x4
    weights = 16 * (cfg.latent_dim * gen[0] + dis[-1] + sum(
        a * b for widths in (gen, dis) for a, b in zip(widths, widths[1:])))
    maps = (sum(s * s * w for s, w in zip(sizes, gen))
            + 2 * sum(s * s * w for s, w in zip(sizes[::-1], dis)))
    dtype = cfg.numerics.dtype
    weight_bytes = 8 if dtype == "float64" else 4  # bfloat16 keeps float32 weights
    return 4 * weight_bytes * weights + jnp.dtype(dtype).itemsize * batch_size * maps


@functools.partial(jax.jit, static_argnums=0)
def init_variables(cfg: ModelConfig, key: jax.Array) -> dict:
    """{'generator': {'params', 'batch_stats'}, 'discriminator': {...}} for `cfg`. Compiled
    as one program: op by op it is ~170 small ones, 10-16 s at every start on a CPU."""
    kg, kd = jax.random.split(key)
    z = jnp.zeros((1, cfg.latent_dim), jnp.float32)
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.channels), jnp.float32)
    return {"generator": Generator(cfg).init(kg, z, train=False),
            "discriminator": Discriminator(cfg).init(kd, x, train=False)}
