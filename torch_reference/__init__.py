"""The lecture's PyTorch DCGAN and training step, kept independent of `jax_dcgan`."""

from torch_reference.model import DCGAN
from torch_reference.step import make_optimizers, train_step

__all__ = ["DCGAN", "make_optimizers", "train_step"]
