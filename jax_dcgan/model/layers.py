"""Building blocks with PyTorch's exact semantics, in NHWC, with two convolution backends.

`matmul`: each convolution is a matrix product plus one data rearrangement: im2col
(gathering each output's input window into a row) for the convolution, col2im
(summing each input's products into the outputs they touch) for the transposed
one. Both view the image as blocks of stride x stride pixels, so that they are
unstrided slices and one transpose. XLA's CPU convolutions are slow for strided
and input-dilated forms; this is the fast path on CPUs (docs/BENCHMARKS.md).

`xla`: XLA's native convolutions, which GPUs run as cuDNN kernels and TPUs on
their matrix units. XLA's GPU compiler maps a convolution to cuDNN's
backward-data kernel only when its kernel is reversed, and never maps an
input-dilated one to backward-filter; any other form runs as a forward
convolution over a zero-stuffed input, many times slower (jax-ml/jax#31662,
openxla/xla#34273). Autodiff of a transposed convolution produces exactly such a
kernel gradient, so here each pass is written in one of the three forms:
forward, backward-data (kernel reversed, input dilated) and backward-filter
(window dilated).

In both backends custom VJPs pair the convolution with its transpose, so every
forward and backward pass is one of those forms. Layers whose window is the whole
input (the generator's first, the discriminator's last) are plain matrix products
in both. The two backends agree to float64 rounding (parity_tests/test_layers.py).

Kernels are stored in one layout for both backends, so converting from PyTorch is
a single permutation:
  Conv          (kh, kw, in, out) = Conv2d.weight.permute(2, 3, 1, 0)
  ConvTranspose (in, kh, kw, out) = ConvTranspose2d.weight.permute(0, 2, 3, 1)
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from jax_dcgan.config import CONV_BACKENDS

__all__ = ["BatchNorm", "Conv", "ConvTranspose", "col2im", "conv2d", "conv_transpose2d",
           "dcgan_normal", "im2col"]

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


def _blocks_per_window(k: int, stride: int) -> int:
    """m: a window of k pixels spans m blocks of `stride` (k rounded up to m * stride)."""
    return -(-k // stride)


def im2col(x: jax.Array, k: int, stride: int, padding: int) -> jax.Array:
    """(N, H, W, C) -> (N, Ho, Wo, k*k*C): each output's input window, in (ky, kx, c) order.

    Seen as blocks of stride x stride pixels (a free reshape, then one transpose),
    the padded input holds every window in m x m whole blocks, so the patches are
    m * m unstrided slices. (Where k is not a multiple of the stride, the windows
    are taken m * stride wide and cut back to k.)
    """
    n, h, w, c = x.shape
    s, m = stride, _blocks_per_window(k, stride)
    ho, wo = (h + 2 * padding - k) // s + 1, (w + 2 * padding - k) // s + 1
    if (ho, wo) == (1, 1) and padding == 0 and (h, w) == (k, k):  # the window is the input
        return x.reshape(n, 1, 1, k * k * c)
    bh, bw = ho - 1 + m, wo - 1 + m
    zero = jnp.zeros((), x.dtype)
    x = lax.pad(x, zero, ((0, 0, 0), (padding, s * bh - h - padding, 0),
                          (padding, s * bw - w - padding, 0), (0, 0, 0)))
    x = x.reshape(n, bh, s, bw, s, c).transpose(0, 1, 3, 2, 4, 5)  # (n, I, J, qy, qx, c)
    # Tap (ky, kx) = (s*a + qy, s*b + qx) of output (i, j) is pixel (qy, qx) of block (i+a, j+b).
    rows = [jnp.stack([x[:, a:a + ho, b:b + wo] for b in range(m)], axis=4) for a in range(m)]
    windows = jnp.stack(rows, axis=3).reshape(n, ho, wo, m * s, m * s, c)[:, :, :, :k, :k]
    return windows.reshape(n, ho, wo, k * k * c)


def col2im(y: jax.Array, stride: int, padding: int, h: int, w: int) -> jax.Array:
    """The adjoint of im2col: (N, Hi, Wi, k, k, C) window contributions summed into (N, H, W, C).

    The same blocks as in im2col: tap (s*a + qy, s*b + qx) of input (i, j) lands on
    pixel (qy, qx) of output block (i+a, j+b), so the sum is m * m shifted copies
    (one fused loop), and one transpose puts the blocks' pixels in place.
    """
    n, hi, wi, k, _, c = y.shape
    s, m = stride, _blocks_per_window(k, stride)
    if (hi, wi) == (1, 1) and padding == 0 and (h, w) == (k, k):  # one window: the output
        return y.reshape(n, k, k, c)
    bh, bw = hi - 1 + m, wi - 1 + m
    zero = jnp.zeros((), y.dtype)
    taps = (0, m * s - k, 0)  # zero taps up to whole blocks
    y = lax.pad(y, zero, ((0, 0, 0),) * 3 + (taps, taps, (0, 0, 0)))
    y = y.reshape(n, hi, wi, m, s, m, s, c)
    blocks = sum(lax.pad(y[:, :, :, a, :, b], zero, ((0, 0, 0), (a, m - 1 - a, 0),
                                                     (b, m - 1 - b, 0), (0, 0, 0), (0, 0, 0),
                                                     (0, 0, 0)))
                 for a in range(m) for b in range(m))
    full = blocks.transpose(0, 1, 3, 2, 4, 5).reshape(n, s * bh, s * bw, c)
    return lax.pad(full, zero, ((0, 0, 0), (-padding, h + padding - s * bh, 0),
                                (-padding, w + padding - s * bw, 0), (0, 0, 0)))


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """Rows of `a` (all leading axes) times `b`."""
    return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])


def _transposed_size(size: int, k: int, stride: int, padding: int) -> int:
    return (size - 1) * stride - 2 * padding + k


# -- The matmul backend ----------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """torch.nn.functional.conv2d (NHWC, kernel (k, k, in, out)): im2col, then a matmul."""
    return _conv2d_matmul_fwd(x, kernel, stride, padding)[0]


def _conv2d_matmul_fwd(x, kernel, stride, padding):
    k, _, c, o = kernel.shape
    patches = im2col(x, k, stride, padding)
    return _matmul(patches, kernel.reshape(k * k * c, o)), (patches, kernel, x.shape[1:3])


def _conv2d_matmul_bwd(stride, padding, residuals, dy):
    patches, kernel, (h, w) = residuals
    k, _, c, o = kernel.shape
    d_kernel = (patches.reshape(-1, k * k * c).T @ dy.reshape(-1, o)).reshape(kernel.shape)
    windows = _matmul(dy, kernel.reshape(k * k * c, o).T).reshape(*dy.shape[:3], k, k, c)
    return col2im(windows, stride, padding, h, w), d_kernel


conv2d_matmul.defvjp(_conv2d_matmul_fwd, _conv2d_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose2d_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: int
                            ) -> jax.Array:
    """torch.nn.functional.conv_transpose2d (NHWC, kernel (in, k, k, out)): a matmul, then col2im."""
    c, k, _, o = kernel.shape
    n, h, w, _ = x.shape
    y = _matmul(x, kernel.reshape(c, k * k * o)).reshape(n, h, w, k, k, o)
    return col2im(y, stride, padding, _transposed_size(h, k, stride, padding),
                  _transposed_size(w, k, stride, padding))


def _conv_transpose2d_matmul_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    c, k, _, o = kernel.shape
    windows = im2col(dy, k, stride, padding)  # one row per input pixel
    d_kernel = (x.reshape(-1, c).T @ windows.reshape(-1, k * k * o)).reshape(kernel.shape)
    return _matmul(windows, kernel.reshape(c, k * k * o).T), d_kernel


conv_transpose2d_matmul.defvjp(lambda x, kernel, stride, padding: (
    conv_transpose2d_matmul(x, kernel, stride, padding), (x, kernel)),
    _conv_transpose2d_matmul_bwd)


# -- The xla backend: forward, backward-data and backward-filter convolutions ---------------

def _forward(x: jax.Array, kernel: jax.Array, stride: int, padding: int, spec: str) -> jax.Array:
    """The strided convolution `x` -> `y`, kernel dimensions named by `spec` (e.g. HWIO)."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), [(padding, padding)] * 2,
                                    dimension_numbers=("NHWC", spec, "NHWC"))


def _backward_data(dy: jax.Array, kernel: jax.Array, stride: int, padding: int, spec: str,
                   x_shape: tuple[int, ...]) -> jax.Array:
    """The transpose of `_forward` in its input: JAX's rule writes it with the kernel reversed
    and the input dilated by the stride, the form cuDNN's backward-data kernel takes."""
    forward = functools.partial(_forward, kernel=kernel, stride=stride, padding=padding,
                                spec=spec)
    return jax.linear_transpose(forward, jax.ShapeDtypeStruct(x_shape, dy.dtype))(dy)[0]


def _backward_filter(dy: jax.Array, x: jax.Array, stride: int, padding: int, spec: str,
                     kernel_shape: tuple[int, ...]) -> jax.Array:
    """The kernel gradient of `_forward(x, kernel)` for the output gradient `dy`: a
    convolution of `x` with `dy` dilated by the stride, the form cuDNN's backward-filter
    kernel takes. (A transposed convolution is `_forward`'s transpose, so its kernel gradient
    is this with the two roles swapped: its output gradient as `x`, its input as `dy`.)"""
    forward = functools.partial(_forward, x, stride=stride, padding=padding, spec=spec)
    return jax.linear_transpose(forward, jax.ShapeDtypeStruct(kernel_shape, dy.dtype))(dy)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """torch.nn.functional.conv2d (NHWC, kernel (k, k, in, out)) as an XLA convolution."""
    return _forward(x, kernel, stride, padding, "HWIO")


def _conv2d_xla_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    return (_backward_data(dy, kernel, stride, padding, "HWIO", x.shape),
            _backward_filter(dy, x, stride, padding, "HWIO", kernel.shape))


conv2d_xla.defvjp(lambda x, kernel, stride, padding: (
    conv2d_xla(x, kernel, stride, padding), (x, kernel)), _conv2d_xla_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose2d_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: int
                         ) -> jax.Array:
    """torch.nn.functional.conv_transpose2d (NHWC, kernel (in, k, k, out)): the backward-data
    pass of the convolution that maps `out` channels to `in` with this kernel (OHWI)."""
    c, k, _, o = kernel.shape
    n, h, w, _ = x.shape
    shape = (n, _transposed_size(h, k, stride, padding), _transposed_size(w, k, stride, padding), o)
    return _backward_data(x, kernel, stride, padding, "OHWI", shape)


def _conv_transpose2d_xla_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    return (_forward(dy, kernel, stride, padding, "OHWI"),
            _backward_filter(x, dy, stride, padding, "OHWI", kernel.shape))


conv_transpose2d_xla.defvjp(lambda x, kernel, stride, padding: (
    conv_transpose2d_xla(x, kernel, stride, padding), (x, kernel)), _conv_transpose2d_xla_bwd)


# -- Choosing a backend ----------------------------------------------------------------------

def _check_backend(backend: str) -> None:
    if backend not in CONV_BACKENDS:
        raise ValueError(f"backend must be one of {CONV_BACKENDS}, not {backend!r}: "
                         "Config.numerics decides `auto` for the devices")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int, backend: str
           ) -> jax.Array:
    """torch.nn.functional.conv2d in NHWC with `backend` (matmul or xla)."""
    _check_backend(backend)
    k = kernel.shape[0]
    whole_window = x.shape[1:3] == (k, k) and padding == 0
    if whole_window or backend == "matmul":
        return conv2d_matmul(x, kernel, stride, padding)
    return conv2d_xla(x, kernel, stride, padding)


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int, backend: str
                     ) -> jax.Array:
    """torch.nn.functional.conv_transpose2d in NHWC with `backend` (matmul or xla)."""
    _check_backend(backend)
    whole_window = x.shape[1:3] == (1, 1) and padding == 0
    if whole_window or backend == "matmul":
        return conv_transpose2d_matmul(x, kernel, stride, padding)
    return conv_transpose2d_xla(x, kernel, stride, padding)


class Conv(nn.Module):
    """torch.nn.Conv2d with a square kernel."""
    features: int
    kernel_size: int
    stride: int
    padding: int
    use_bias: bool
    backend: str
    kernel_init: Initializer | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, c = self.kernel_size, x.shape[-1]
        default = torch_uniform(k * k * c)
        kernel = self.param("kernel", self.kernel_init or default, (k, k, c, self.features))
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding,
                   self.backend)
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
    backend: str
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
                                self.padding, self.backend)


class BatchNorm(nn.Module):
    """torch.nn.BatchNorm2d: biased variance to normalise, unbiased in `var`, momentum 0.1.

    Statistics are float32 whatever the compute dtype. With `axis_name`, the batch
    statistics are those of the global batch across devices (SyncBatchNorm).
    `count` mirrors PyTorch's `num_batches_tracked` so checkpoints round-trip.

    `groups` > 1 stands for that many train-mode calls on consecutive slices of the
    batch (the discriminator's real and fake passes): each slice is normalised with
    its own statistics and the running statistics move once per slice, in order, so
    that the convolutions around it can run once over all slices.
    """
    momentum: float = 0.1
    epsilon: float = 1e-5
    axis_name: str | None = None
    scale_init: Initializer = nn.initializers.ones
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, groups: int = 1) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        count = self.variable("batch_stats", "count", jnp.zeros, (), jnp.int32)

        if x.shape[0] % groups:
            raise ValueError(f"a batch of {x.shape[0]} does not split into {groups} groups")
        x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        x32 = x32.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        if train:
            axes = tuple(range(1, x32.ndim - 1))
            mean = self._global_mean(x32, axes, keepdims=True)
            var = self._global_mean(jnp.square(x32 - mean), axes, keepdims=True)
            if not self.is_initializing():
                n = x32[0].size // c * (1 if self.axis_name is None
                                        else lax.axis_size(self.axis_name))
                m, dtype = self.momentum, ra_mean.value.dtype
                for g in range(groups):
                    ra_mean.value = (1 - m) * ra_mean.value + m * mean[g].reshape(c).astype(dtype)
                    ra_var.value = (1 - m) * ra_var.value + m * (
                        var[g].reshape(c) * n / (n - 1)).astype(dtype)
                count.value = count.value + groups
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x32 - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.reshape(x.shape).astype(self.dtype)

    def _global_mean(self, x: jax.Array, axes: tuple[int, ...], keepdims: bool) -> jax.Array:
        mean = jnp.mean(x, axis=axes, keepdims=keepdims)
        return mean if self.axis_name is None else lax.pmean(mean, self.axis_name)
