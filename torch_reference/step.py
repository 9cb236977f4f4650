"""One training step of the lecture's `train_gan_v1`, as a function.

The order matters for exactness: G makes one fake batch; D sees the real and the
detached fake batch in two separate train-mode passes (separate BatchNorm
statistics, running stats updated twice) and takes an Adam step on the averaged
loss; then the *updated* D sees the same fake batch a third time and G takes its
step on the flipped-label loss. The fake accuracy is measured on that third pass,
as in the lecture's code (the variable `discr_pred_fake` is reassigned there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch_reference.model import DCGAN


def make_optimizers(model: DCGAN, lr_g: float = 2e-4, lr_d: float = 2e-4,
                    betas: tuple[float, float] = (0.5, 0.999), eps: float = 1e-8,
                    fused: bool | None = None):
    """The lecture's Adam for G and D; `fused` picks PyTorch's fused CUDA kernel."""
    return (torch.optim.Adam(model.generator.parameters(), lr=lr_g, betas=betas, eps=eps,
                             fused=fused),
            torch.optim.Adam(model.discriminator.parameters(), lr=lr_d, betas=betas, eps=eps,
                             fused=fused))


def train_step(model: DCGAN, opt_gen: torch.optim.Optimizer, opt_dis: torch.optim.Optimizer,
               real: torch.Tensor, noise: torch.Tensor | None = None, *,
               gen_noise: torch.Tensor | None = None,
               dis_targets: tuple[torch.Tensor, torch.Tensor] | None = None,
               item: bool = True) -> dict:
    """Update D then G on one batch; returns the losses and D's accuracies in percent, as
    floats as in the lecture (`.item()`, which waits for the GPU every step), or with
    `item=False` as tensors on the device.

    `noise` (N, latent, 1, 1) defaults to a fresh `torch.randn` draw, as in the lecture.
    `gen_noise`, if given, is a second batch of noise for the generator step
    (the lecture's reuse of the discriminator's fake batch is the default).
    `dis_targets` replaces D's (real, fake) labels 1 and 0, e.g. smoothed or flipped.
    """
    model.train()
    n = real.shape[0]
    ones = torch.ones(n, dtype=real.dtype, device=real.device)
    zeros = torch.zeros_like(ones)
    if noise is None:
        noise = torch.randn(n, model.generator[0].in_channels, 1, 1,
                            dtype=real.dtype, device=real.device)
    real_target, fake_target = dis_targets if dis_targets is not None else (ones, zeros)

    fake = model.generator_forward(noise)

    opt_dis.zero_grad()
    pred_real = model.discriminator_forward(real).view(-1)
    pred_fake = model.discriminator_forward(fake.detach()).view(-1)
    d_loss = 0.5 * (F.binary_cross_entropy_with_logits(pred_real, real_target)
                    + F.binary_cross_entropy_with_logits(pred_fake, fake_target))
    d_loss.backward()
    opt_dis.step()

    opt_gen.zero_grad()
    if gen_noise is not None:
        fake = model.generator_forward(gen_noise)
    pred_fake = model.discriminator_forward(fake).view(-1)
    g_loss = F.binary_cross_entropy_with_logits(pred_fake, ones)
    g_loss.backward()
    opt_gen.step()

    metrics = {
        "g_loss": g_loss.detach(),
        "d_loss": d_loss.detach(),
        "acc_real": ((pred_real.detach() > 0).to(real.dtype) == ones).to(real.dtype).mean() * 100,
        "acc_fake": ((pred_fake.detach() > 0).to(real.dtype) == zeros).to(real.dtype).mean() * 100,
    }
    return {k: v.item() for k, v in metrics.items()} if item else metrics
