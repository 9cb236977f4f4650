"""The pictures people expect from a GAN besides its epoch grids: the fixed-noise grids of
every epoch as one animation (`progress.webp`, as the PyTorch DCGAN tutorial ends), a walk
through the latent space by spherical interpolation, and the data's images beside the
model's.

Animations are lossless animated WebP (Pillow writes it with no other dependency), so
every frame is exactly the PNG it was made from.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image

from jax_dcgan.common.errors import UserError
from jax_dcgan.common.files import atomic_write
from jax_dcgan.outputs.sample import make_grid, save_png, to_image, to_pixels

__all__ = ["ANIMATION", "BETWEEN", "animate_grids", "epoch_grids", "interpolation_noise",
           "real_beside_fake", "save_interpolation"]

ANIMATION = "progress.webp"
FRAME_MS = 250  # a frame per epoch, four epochs a second
BETWEEN = 7  # images between two points of a latent walk
GAP = 8  # pixels between the real and the fake grids


def save_animation(frames: list[np.ndarray], path: str, frame_ms: int = FRAME_MS) -> None:
    """uint8 HWC frames (RGB or grey) as a looping lossless animated WebP, atomically."""
    pictures = [to_image(frame) for frame in frames]
    with atomic_write(path, ".webp") as tmp:
        pictures[0].save(tmp, format="WEBP", save_all=True, append_images=pictures[1:],
                         duration=frame_ms, loop=0, lossless=True)


def read_animation(path: str) -> list[np.ndarray]:
    """The frames of an animation as uint8 HWC RGB arrays."""
    frames = []
    with Image.open(path) as animation:
        for index in range(animation.n_frames):
            animation.seek(index)
            frames.append(np.asarray(animation.convert("RGB")))
    return frames


def epoch_grids(samples_dir: str) -> list[str]:
    """samples/epoch_XXX.png in epoch order (not a writer's temporary file beside one)."""
    found = {}
    for name in os.listdir(samples_dir) if os.path.isdir(samples_dir) else []:
        match = re.fullmatch(r"epoch_(\d+)\.png", name)
        if match:
            found[int(match.group(1))] = os.path.join(samples_dir, name)
    return [found[epoch] for epoch in sorted(found)]


def animate_grids(samples_dir: str, out: str, frame_ms: int = FRAME_MS, every: int = 1) -> int:
    """Every `every`-th epoch grid under `samples_dir` (the first and the last always), in
    epoch order, as one animation; the number of frames."""
    paths = epoch_grids(samples_dir)
    if not paths:
        raise UserError(f"{samples_dir!r} has no epoch grids (samples/epoch_XXX.png) to "
                        "animate; give a run directory of `jax-dcgan train`.")
    chosen = paths[::every] + ([paths[-1]] if (len(paths) - 1) % every else [])
    frames = []
    for path in chosen:
        with Image.open(path) as grid:
            frames.append(np.asarray(grid.convert("RGB")))
    if len({frame.shape for frame in frames}) > 1:
        raise UserError(f"The epoch grids under {samples_dir!r} differ in size (the run's "
                        "image size changed?); animate the grids of one configuration.")
    save_animation(frames, out, frame_ms)
    return len(frames)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from `a` (t=0) to `b` (t=1): Gaussian noise lives near a
    sphere, and a straight line between two points would pass inside it, where the
    generator saw no noise."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a64) * np.linalg.norm(b64)
    angle = np.arccos(np.clip(np.dot(a64, b64) / norms, -1.0, 1.0)) if norms else np.pi
    if angle > np.pi - 1e-6:  # no one great circle: the walk would pass through 0
        raise UserError("Two consecutive latent points are zero or point in opposite "
                        "directions, so no arc joins them; give other --noise vectors.")
    if angle < 1e-6:  # (nearly) the same direction: the line is the arc
        return ((1 - t) * a64 + t * b64).astype(np.float32)
    return ((np.sin((1 - t) * angle) * a64 + np.sin(t * angle) * b64)
            / np.sin(angle)).astype(np.float32)


def interpolation_noise(points: np.ndarray, steps: int) -> np.ndarray:
    """`steps` vectors from each of `points` (P, latent) towards the next, then the last
    point: (steps * (P - 1) + 1, latent)."""
    path = [slerp(a, b, i / steps) for a, b in zip(points, points[1:]) for i in range(steps)]
    return np.stack(path + [np.asarray(points[-1], np.float32)])


def real_beside_fake(real: np.ndarray, fake: np.ndarray) -> np.ndarray:
    """The tutorial's last figure: a grid of the data's images left, the model's right, as
    a [0, 1] float HWC picture; each grid is scaled from its own minimum to maximum (as
    the lecture's grids are), so uint8 images and [-1, 1] ones both work."""
    left, right = make_grid(np.asarray(real, np.float32)), make_grid(fake)
    height = max(len(left), len(right))
    left, right = (np.pad(grid, ((0, height - len(grid)), (0, 0), (0, 0)))
                   for grid in (left, right))
    return np.concatenate([left, np.zeros((height, GAP, left.shape[-1]), np.float32), right],
                          axis=1)


def save_interpolation(images: np.ndarray, strip_path: str, animation_path: str,
                       frame_ms: int = FRAME_MS // 2) -> None:
    """The images of a latent walk (N, H, W, C in [-1, 1]) as one strip PNG and as an
    animation of one image per frame, both scaled together (as one grid)."""
    save_png(make_grid(images, columns=len(images)), strip_path)
    joined = to_pixels(make_grid(images, columns=len(images), padding=0))
    save_animation(np.split(joined, len(images), axis=1), animation_path, frame_ms)
