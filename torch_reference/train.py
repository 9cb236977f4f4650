"""Train the lecture's PyTorch model on a jax-dcgan dataset cache, for side-by-side experiments.

    python -m torch_reference.train --images CACHE/images.npy --out DIR [--epochs 10] [--seed 0]

The same loop as `jax-dcgan train` in what matters for a comparison: the same
uint8 images, preprocessing, batch size, number of steps, optimiser and step;
the shuffling and noise come from the reference's own generators (torch.randn,
as in the lecture). Writes DIR/metrics.jsonl in jax-dcgan's format and
DIR/model.pt in the lecture's format (convert it with `jax-dcgan convert`).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from torch_reference.model import DCGAN
from torch_reference.step import make_optimizers, train_step


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> ToTensor + Normalize(0.5, 0.5), NCHW."""
    x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).float().div(255)
    return x.sub(0.5).div(0.5)


def train(images: np.ndarray, out: str, epochs: int, batch_size: int, seed: int,
          latent_dim: int, gen_features: int, dis_features: int, gen_activation: str,
          dis_slope: float) -> None:
    torch.manual_seed(seed)
    model = DCGAN(latent_dim, gen_features, dis_features, images.shape[-1], images.shape[1],
                  gen_activation=gen_activation, dis_slope=dis_slope)
    opt_g, opt_d = make_optimizers(model)
    order_rng = np.random.default_rng(seed)
    steps_per_epoch = len(images) // batch_size
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "metrics.jsonl"), "w") as log:
        step, start = 0, time.perf_counter()
        for epoch in range(epochs):
            order = order_rng.permutation(len(images))
            for batch in range(steps_per_epoch):
                real = to_tensor(images[np.sort(order[batch * batch_size:(batch + 1) * batch_size])])
                metrics = train_step(model, opt_g, opt_d, real)
                step += 1
                log.write(json.dumps({"step": step, "epoch": epoch + 1, "batch": batch, **metrics,
                                      "images_per_s": round(step * batch_size /
                                                            (time.perf_counter() - start), 1)})
                          + "\n")
            print(f"epoch {epoch + 1}/{epochs}: g_loss {metrics['g_loss']:.3f}, "
                  f"d_loss {metrics['d_loss']:.3f}", flush=True)
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
