"""jax-dcgan: the DCGAN of STAT 453 lecture L18.6, exact against PyTorch and fast in JAX.

The package's layers, each importing only those below it (pyproject.toml's import contract):

    cli        the `jax-dcgan` command
    tools      benchmark, parity report, ahead-of-time compilation for other accelerators
    training   the loop: dispatch plan, batch feed, devices and hosts, checkpoints, writers
    data | quality | outputs    images in; SWD, FID, KID; samples, grids, plots, pictures
    model      layers, generator and discriminator, the training step, the PyTorch mapping
    config     Config (every flag), ModelConfig, StepConfig, presets
    common     errors, atomic files, optional imports, the JAX process set-up

The names below are the Python API (the README's example). Importing the package is cheap
(no JAX import until one of them is used): the data workers and the command line's error
paths rely on that.
"""

import importlib

__version__ = "0.3.0"

_EXPORTS = {
    "Config": "jax_dcgan.config",
    "ModelConfig": "jax_dcgan.config",
    "StepConfig": "jax_dcgan.config",
    "Numerics": "jax_dcgan.config",
    "Generator": "jax_dcgan.model.networks",
    "Discriminator": "jax_dcgan.model.networks",
    "TrainState": "jax_dcgan.model.step",
    "create_train_state": "jax_dcgan.model.step",
    "jit_train_steps": "jax_dcgan.model.step",
    "pmap_train_steps": "jax_dcgan.model.step",
    "to_state_dict": "jax_dcgan.model.convert",
    "from_state_dict": "jax_dcgan.model.convert",
    "train": "jax_dcgan.training.loop",
    "load_checkpoint": "jax_dcgan.training.checkpoint",
    "sampling_generator": "jax_dcgan.outputs.sample",
    "generate_images": "jax_dcgan.outputs.sample",
    "make_grid": "jax_dcgan.outputs.sample",
    "save_png": "jax_dcgan.outputs.sample",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jax_dcgan' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
