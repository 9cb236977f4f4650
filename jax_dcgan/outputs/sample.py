"""Generating images from a generator, and the lecture's 8-column sample grid."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jax_dcgan.common.files import atomic_write
from jax_dcgan.config import BN_STATS, ModelConfig
from jax_dcgan.model.networks import Generator

__all__ = ["GRID_IMAGES", "draw_noise", "generate", "generate_images", "grid_pass", "make_grid",
           "sampling_generator", "save_png", "to_image", "to_pixels"]

@functools.partial(jax.jit, static_argnames=("cfg", "bn"))
def generate(cfg: ModelConfig, generator: dict, noise: jax.Array, bn: str = "batch"
             ) -> jax.Array:
    """Images in [-1, 1] for `noise` (N, latent).

    `bn` "batch" normalises with the batch's own statistics, as the lecture's grids
    do (its model stays in train mode); the updated running statistics are
    discarded, so sampling never changes a model. "running" uses the running
    statistics (eval mode).
    """
    if bn not in BN_STATS:
        raise ValueError(f"bn must be one of {BN_STATS}, not {bn!r}")
    if bn == "batch":
        return grid_pass(cfg, generator, noise)[0]
    variables = {"params": generator["params"], "batch_stats": generator["batch_stats"]}
    return Generator(cfg).apply(variables, noise, train=False)


def grid_pass(cfg: ModelConfig, generator: dict, noise: jax.Array) -> tuple[jax.Array, dict]:
    """The lecture's epoch grid, `model.generator(fixed_noise)` in train mode: normalised
    with the batch's own statistics, and moving the running statistics (and their count)
    as every train-mode pass does. (images, the new batch_stats)."""
    variables = {"params": generator["params"], "batch_stats": generator["batch_stats"]}
    images, new = Generator(cfg).apply(variables, noise, train=True, mutable=["batch_stats"])
    return images, new["batch_stats"]


def sampling_generator(state) -> dict:
    """The generator to sample from: the EMA of its weights when the run keeps one."""
    params = state.g_ema or state.generator["params"]
    return {"params": params, "batch_stats": state.generator["batch_stats"]}


GRID_IMAGES = 64  # the lecture's 8x8 grid of fixed noise


def draw_noise(latent_dim: int, num: int, seed: int) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (num, latent_dim), jnp.float32)


def generate_images(cfg: ModelConfig, generator: dict, num: int, seed: int = 0,
                    chunk: int = 128, bn: str = "batch") -> jax.Array:
    """`num` images in [-1, 1] from noise drawn with `seed`, generated `chunk` at a time (each
    normalised by its own statistics with `bn` "batch", as in training); returned without
    waiting for the device."""
    noise = draw_noise(cfg.latent_dim, num, seed)
    chunk = min(chunk, num)
    return jnp.concatenate([generate(cfg, generator, noise[i:i + chunk], bn)
                            for i in range(0, num, chunk)])


def make_grid(images: np.ndarray, columns: int = 8, padding: int = 2) -> np.ndarray:
    """torchvision's make_grid(normalize=True): min-max scaled to [0, 1], black padding.

    `images` is (N, H, W, C); the result is a (rows, cols) mosaic as float32 HWC.
    """
    images = np.asarray(images, np.float32)
    lo, hi = images.min(), images.max()
    images = (images - lo) / max(hi - lo, 1e-5)
    n, h, w, c = images.shape
    cols = min(columns, n)
    rows = -(-n // cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c),
                    np.float32)
    for i, image in enumerate(images):
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[y:y + h, x:x + w] = image
    return grid


def to_pixels(image: np.ndarray) -> np.ndarray:
    """A [0, 1] float HWC image as uint8, rounded as torchvision's save_image rounds it."""
    return np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8)


def to_image(pixels: np.ndarray) -> Image.Image:
    """uint8 HWC pixels (RGB or grey) as a PIL image."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def save_png(image: np.ndarray, path: str) -> None:
    """Write a [0, 1] float HWC image as a PNG, atomically."""
    with atomic_write(path, ".png") as tmp:
        to_image(to_pixels(image)).save(tmp)
