"""Optional dependencies, imported where they are used, with a message that says how to
install them."""

from __future__ import annotations

from types import ModuleType

from jax_dcgan.common.errors import UserError

__all__ = ["import_tensorboardx", "import_tfds", "import_torch"]


def import_torch() -> ModuleType:
    """PyTorch, for .pt files, the reference model, FID and the benchmark."""
    try:
        import torch
    except ImportError:
        raise UserError(
            "This needs PyTorch, which is not installed. Install the extra: pip install "
            "'jax-dcgan[torch]' (on a CPU-only machine first pip install torch "
            "--index-url https://download.pytorch.org/whl/cpu).") from None
    return torch


def import_tfds() -> ModuleType:
    """tensorflow-datasets, for CelebA (absent from some GPU images)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("CelebA is read through tensorflow-datasets, which is not installed: "
                        "pip install tensorflow-datasets array-record (TensorFlow is not "
                        "needed). Or use --dataset folder with an extracted "
                        "img_align_celeba directory.") from None
    return tfds


def import_tensorboardx() -> ModuleType | None:
    """tensorboardX, or None where it is not installed or does not import (e.g. against
    another protobuf): TensorBoard logs are then skipped."""
    try:
        import tensorboardX
    except Exception:  # ImportError, or TypeError from a protobuf it was not built for
        return None
    return tensorboardX
