"""Building blocks with PyTorch's exact semantics, in NHWC.

Both convolutions are written as one matrix product plus cheap data movement,
because that is what XLA runs fast on every backend. XLA's own CPU kernels for
strided and input-dilated convolutions (and the layouts it picks for their
gradients inside `scan`) were measured 3-20x slower than PyTorch; see
docs/BENCHMARKS.md.

Kernels are stored in the layout their matrix product reads, so converting
from PyTorch is a single permutation:
  Conv          (kh, kw, in, out) = Conv2d.weight.permute(2, 3, 1, 0)
  ConvTranspose (in, kh, kw, out) = ConvTranspose2d.weight.permute(0, 2, 3, 1)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

Initializer = Callable[..., jax.Array]


def torch_uniform(fan_in: int) -> Initializer:
    """PyTorch's default conv init for weights and biases, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / np.sqrt(fan_in)
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


def dcgan_normal(mean: float = 0.0) -> Initializer:
    """Radford et al.'s N(mean, 0.02)."""
    def init(key, shape, dtype=jnp.float32):
        return mean + 0.02 * jax.random.normal(key, shape, dtype)
    return init


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """Conv2d as im2col (one strided slice per kernel tap) and one matmul."""
    kh, kw, c, o = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if (ho, wo) == (1, 1) and padding == 0 and (h, w) == (kh, kw):  # a dense layer
        return (x.reshape(n, -1) @ kernel.reshape(-1, o)).reshape(n, 1, 1, o)
    x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    patches = jnp.concatenate(
        [x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
         for i in range(kh) for j in range(kw)], axis=-1)
    return (patches.reshape(-1, kh * kw * c) @ kernel.reshape(-1, o)).reshape(n, ho, wo, o)


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """ConvTranspose2d by its definition: one matmul, then each tap scattered into place.

    out[s*i - p + k] += x[i] @ W[k]: the tap-k products form a strided grid, which
    `lax.pad` with interior padding s - 1 (and edge padding k - p, cropping where
    negative) puts at the right offsets; XLA fuses the sum of the taps into one loop.
    """
    c, kh, kw, o = kernel.shape
    n, h, w, _ = x.shape
    ho, wo = (h - 1) * stride - 2 * padding + kh, (w - 1) * stride - 2 * padding + kw
    y = (x.reshape(-1, c) @ kernel.reshape(c, -1)).reshape(n, h, w, kh, kw, o)
    zero = jnp.zeros((), y.dtype)

    def place(i: int, size: int, out: int) -> tuple[int, int, int]:
        low = i - padding
        return low, out - low - (size - 1) * stride - 1, stride - 1

    return sum(lax.pad(y[:, :, :, i, j], zero, ((0, 0, 0), place(i, h, ho), place(j, w, wo),
                                                (0, 0, 0)))
               for i in range(kh) for j in range(kw))


class Conv(nn.Module):
    """torch.nn.Conv2d with a square kernel."""
    features: int
    kernel_size: int
    stride: int
    padding: int
    use_bias: bool
    kernel_init: Initializer | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        default = torch_uniform(k * k * c)
        kernel = self.param("kernel", self.kernel_init or default, (k, k, c, self.features))
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
        if self.use_bias:
            init = nn.initializers.zeros if self.kernel_init else default
            y = y + self.param("bias", init, (self.features,)).astype(self.dtype)
        return y


class ConvTranspose(nn.Module):
    """torch.nn.ConvTranspose2d with a square kernel and no bias."""
    features: int
    kernel_size: int
    stride: int
    padding: int
    kernel_init: Initializer | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        # PyTorch takes ConvTranspose2d's fan_in from weight.shape[1], the *output* channels.
        default = torch_uniform(k * k * self.features)
        kernel = self.param("kernel", self.kernel_init or default,
                            (x.shape[-1], k, k, self.features))
        return conv_transpose2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                                self.padding)


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d: biased variance to normalise, unbiased in `var`, momentum 0.1.

    Statistics are float32 whatever the compute dtype. With `axis_name`, the batch
    statistics are those of the global batch across devices (SyncBatchNorm).
    `count` mirrors PyTorch's `num_batches_tracked` so checkpoints round-trip.
    """
    momentum: float = 0.1
    epsilon: float = 1e-5
    axis_name: str | None = None
    scale_init: Initializer = nn.initializers.ones
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        count = self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)

        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = self._global_mean(x32, axes)
            var = self._global_mean(jnp.square(x32 - mean), axes)
            if not self.is_initializing():
                n = x.size // c * (1 if self.axis_name is None else lax.psum(1, self.axis_name))
                m, dtype = self.momentum, ra_mean.value.dtype
                ra_mean.value = (1 - m) * ra_mean.value + m * mean.astype(dtype)
                ra_var.value = (1 - m) * ra_var.value + m * (var * n / (n - 1)).astype(dtype)
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x32 - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)

    def _global_mean(self, x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
        mean = jnp.mean(x, axis=axes)
        return mean if self.axis_name is None else lax.pmean(mean, self.axis_name)
