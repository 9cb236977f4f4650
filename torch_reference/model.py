"""The lecture's `DCGAN` module (STAT 453, L18.6), with the same submodule layout.

A `state_dict` saved by the lecture's notebook (`gan_celeba_01.pt`) loads into
`DCGAN()` with `strict=True`. Widths, latent size, image size and activations are
arguments so the failing variant and small test configurations share the code.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _activation(kind: str, slope: float) -> nn.Module:
    return nn.ReLU(inplace=True) if kind == "relu" else nn.LeakyReLU(slope, inplace=True)


class DCGAN(nn.Module):
    def __init__(self, latent_dim: int = 100, num_feat_maps_gen: int = 64,
                 num_feat_maps_dis: int = 64, color_channels: int = 3, image_size: int = 64,
                 gen_activation: str = "leaky_relu", gen_slope: float = 0.01,
                 dis_slope: float = 0.01, weight_init: str = "torch"):
        super().__init__()
        ups = int(math.log2(image_size)) - 2  # stride-2 layers between 4x4 and the image

        widths = [num_feat_maps_gen * 2 ** (ups - 1 - i) for i in range(ups)]
        gen: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False)]
        for c_in, c_out in zip(widths, widths[1:]):
            gen += [nn.BatchNorm2d(c_in), _activation(gen_activation, gen_slope),
                    nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
        gen += [nn.BatchNorm2d(widths[-1]), _activation(gen_activation, gen_slope),
                nn.ConvTranspose2d(widths[-1], color_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.generator = nn.Sequential(*gen)

        widths = [num_feat_maps_dis * 2 ** i for i in range(ups)]
        dis: list[nn.Module] = [nn.Conv2d(color_channels, widths[0], 4, 2, 1),
                                nn.LeakyReLU(dis_slope, inplace=True)]
        for c_in, c_out in zip(widths, widths[1:]):
            dis += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.LeakyReLU(dis_slope, inplace=True)]
        dis += [nn.Conv2d(widths[-1], 1, 4, 1, 0), nn.Flatten()]
        self.discriminator = nn.Sequential(*dis)

        if weight_init == "dcgan":
            self.apply(_dcgan_init)

    def generator_forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def discriminator_forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.discriminator(img)


def _dcgan_init(m: nn.Module) -> None:
    """Radford et al.: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
