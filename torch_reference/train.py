"""Train the lecture's PyTorch model on a jax-dcgan dataset cache, for side-by-side experiments.

    python -m torch_reference.train --images CACHE/images.npy --out DIR [--epochs 10] [--seed 0]

The lecture's loop (`lecture_loop`), with what matters for a comparison the same as
`jax-dcgan train`: the same uint8 images, preprocessing, batch size, number of steps,
optimiser and step, and the epoch-end grid drawn in train mode; the shuffling and
noise come from the reference's own generators (torch.randn, as in the lecture).
Writes DIR/metrics.jsonl in jax-dcgan's format and DIR/model.pt in the lecture's
format (convert it with `jax-dcgan convert`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch

from torch_reference.model import DCGAN
from torch_reference.step import make_optimizers, train_step


def to_tensor(batch: np.ndarray, dtype: torch.dtype = torch.float32,
              device: str = "cpu") -> torch.Tensor:
    """uint8 NHWC -> ToTensor + Normalize(0.5, 0.5), NCHW, as the lecture's pipeline
    computes it."""
    x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).to(device, dtype)
    return x.div(255).sub(0.5).div(0.5)


def lecture_loop(model: DCGAN, optimizers, images: np.ndarray, epochs: int, batch_size: int,
                 order: Callable[[int], np.ndarray], grid_noise: torch.Tensor, *,
                 noise: Callable[[int], torch.Tensor] | None = None,
                 dtype: torch.dtype = torch.float32) -> Iterator[dict]:
    """The lecture's loop, one record per step: each epoch's full batches in `order(epoch)`
    (a permutation of the images; like `jax-dcgan train`, and unlike the lecture's
    DataLoader, without the last partial batch), one `train_step` each, with `noise(step)`
    (0-based; default the lecture's fresh torch.randn), then the epoch's grid from
    `grid_noise`, drawn with the model still in train mode, as the lecture draws it (this
    moves G's running statistics). Given another trainer's order, noise and start, it runs
    that trainer's computation (parity_tests/test_loop.py)."""
    steps_per_epoch = len(images) // batch_size
    for epoch in range(epochs):
        permutation = order(epoch)
        for batch in range(steps_per_epoch):
            step = epoch * steps_per_epoch + batch
            real = to_tensor(images[permutation[batch * batch_size:(batch + 1) * batch_size]],
                             dtype)
            metrics = train_step(model, *optimizers, real, None if noise is None else noise(step))
            yield {"step": step + 1, "epoch": epoch + 1, "batch": batch, **metrics}
        with torch.no_grad():
            model.generator_forward(grid_noise)


def train(images: np.ndarray, out: str, epochs: int, batch_size: int, seed: int,
          latent_dim: int, gen_features: int, dis_features: int, gen_activation: str,
          dis_slope: float) -> None:
    torch.manual_seed(seed)
    model = DCGAN(latent_dim, gen_features, dis_features, images.shape[-1], images.shape[1],
                  gen_activation=gen_activation, dis_slope=dis_slope)
    grid_noise = torch.randn(64, latent_dim, 1, 1)  # drawn once at the start, as the lecture
    order_rng = np.random.default_rng(seed)
    steps_per_epoch = len(images) // batch_size
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.jsonl"), "w") as log:
        start = time.perf_counter()
        for record in lecture_loop(model, make_optimizers(model), images, epochs, batch_size,
                                   lambda epoch: order_rng.permutation(len(images)), grid_noise):
            rate = record["step"] * batch_size / (time.perf_counter() - start)
            log.write(json.dumps({**record, "images_per_s": round(rate, 1)}) + "\n")
            if record["batch"] == steps_per_epoch - 1:
                print(f"epoch {record['epoch']}/{epochs}: g_loss {record['g_loss']:.3f}, "
                      f"d_loss {record['d_loss']:.3f}", flush=True)
    torch.save(model.state_dict(), os.path.join(out, "model.pt"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m torch_reference.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="a jax-dcgan cache's images.npy (uint8 NHWC)")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latent-dim", type=int, default=100)
    p.add_argument("--gen-features", type=int, default=32)
    p.add_argument("--dis-features", type=int, default=32)
    p.add_argument("--gen-activation", choices=("leaky_relu", "relu"), default="leaky_relu")
    p.add_argument("--dis-slope", type=float, default=0.01)
    args = p.parse_args(argv)
    train(np.load(args.images, mmap_mode="r"), args.out, args.epochs, args.batch_size, args.seed,
          args.latent_dim, args.gen_features, args.dis_features, args.gen_activation,
          args.dis_slope)


if __name__ == "__main__":
    main()
