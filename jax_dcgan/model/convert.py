"""Lossless conversion between the lecture's PyTorch state dict and Flax variables.

The mapping is by name: Flax module `deconv_8x8` in `generator` is PyTorch's
`generator.3` (`networks.torch_layer_indices`). Only the two file helpers import
torch, lazily; everything else works on numpy arrays, so conversion logic needs
no torch install.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterator, Mapping

import jax
import numpy as np

from jax_dcgan.common.errors import UserError, summarize
from jax_dcgan.common.files import atomic_write
from jax_dcgan.common.optional import import_torch
from jax_dcgan.config import Config, ModelConfig
from jax_dcgan.model.networks import init_variables, torch_layer_indices

__all__ = ["config_for_state_dict", "from_state_dict", "load_torch_file", "save_torch_file",
           "to_state_dict"]

# Flax leaf -> (PyTorch suffix, axis permutation from PyTorch to Flax or None).
_PARAMS = {
    ("generator", "kernel"): ("weight", (0, 2, 3, 1)),      # ConvTranspose2d (in, out, kh, kw)
    ("discriminator", "kernel"): ("weight", (2, 3, 1, 0)),  # Conv2d (out, in, kh, kw)
    "bias": ("bias", None),
    "scale": ("weight", None),
}
_STATS = {"mean": "running_mean", "var": "running_var", "count": "num_batches_tracked"}


def _leaves(variables: Mapping, cfg: ModelConfig
            ) -> Iterator[tuple[str, tuple, np.ndarray | jax.ShapeDtypeStruct, tuple | None]]:
    """(torch key, flax path, leaf, permutation) for every tensor of the model."""
    indices = torch_layer_indices(cfg)
    for net, collection in itertools.product(("generator", "discriminator"),
                                             ("params", "batch_stats")):
        for module, leaves in variables[net].get(collection, {}).items():
            for name, leaf in leaves.items():
                suffix, perm = ((_STATS[name], None) if collection == "batch_stats"
                                else _PARAMS.get((net, name)) or _PARAMS[name])
                yield (f"{net}.{indices[net][module]}.{suffix}", (net, collection, module, name),
                       leaf, perm)


def to_state_dict(variables: Mapping, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Flax variables of a model of `cfg` -> lecture-format state dict of numpy arrays."""
    out = {}
    for key, _, leaf, perm in _leaves(variables, cfg):
        array = np.asarray(leaf)
        if perm is not None:
            array = array.transpose(np.argsort(perm))
        out[key] = array.astype(np.int64) if key.endswith("num_batches_tracked") else array
    return out


def config_for_state_dict(state_dict: Mapping[str, np.ndarray], base: Config) -> Config:
    """The widths, latent size, channels and image size a lecture-format state dict implies."""
    for key in ("generator.0.weight", "discriminator.0.weight"):
        if key not in state_dict:
            raise UserError(
                f"This is not a state dict of the lecture's DCGAN: it has no {key!r} "
                f"(its first keys: {', '.join(list(state_dict)[:4]) or 'none'}). Save one with "
                "torch.save(model.state_dict(), 'model.pt') from a DCGAN whose submodules are "
                "`generator` and `discriminator`.")
    g_convs = sorted(int(k.split(".")[1]) for k, v in state_dict.items()
                     if k.startswith("generator.") and k.endswith(".weight") and np.ndim(v) == 4)
    ups = len(g_convs) - 1
    first = state_dict["generator.0.weight"]
    return base.replace(
        latent_dim=int(first.shape[0]),
        gen_features=int(first.shape[1]) // 2 ** max(ups - 1, 0),
        dis_features=int(state_dict["discriminator.0.weight"].shape[0]),
        channels=int(state_dict[f"generator.{g_convs[-1]}.weight"].shape[1]),
        image_size=4 * 2 ** ups)


def from_state_dict(state_dict: Mapping[str, np.ndarray], cfg: ModelConfig) -> dict:
    """Lecture-format state dict -> Flax variables for `cfg`, checking every key and shape."""
    template = jax.eval_shape(lambda: init_variables(cfg, jax.random.key(0)))
    expected = {key: (path, leaf, perm) for key, path, leaf, perm in _leaves(template, cfg)}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
        raise UserError(
            f"The state dict does not match the lecture's DCGAN ({'; '.join(parts)}). "
            "Expected the keys of `DCGAN().state_dict()`: generator.0.weight ... "
            "discriminator.11.bias.")
    variables: dict = {}
    for key, (path, leaf, perm) in expected.items():
        array = np.asarray(state_dict[key])
        torch_shape = leaf.shape if perm is None else tuple(leaf.shape[i] for i in np.argsort(perm))
        if array.shape != torch_shape:
            raise UserError(
                f"Tensor {key!r} has shape {tuple(array.shape)} but the model expects "
                f"{torch_shape} (latent {cfg.latent_dim}, widths {cfg.gen_features}/"
                f"{cfg.dis_features}, {cfg.image_size}x{cfg.image_size}x{cfg.channels}). "
                "The file was saved from a differently configured model.")
        if perm is not None:
            array = array.transpose(perm)
        node = variables
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = array.astype(leaf.dtype) if key.endswith("num_batches_tracked") else array
    return variables


def load_torch_file(path: str) -> dict[str, np.ndarray]:
    """A `torch.save`d state dict as numpy arrays (float tensors keep their dtype)."""
    torch = import_torch()
    if not os.path.isfile(path):
        raise UserError(f"No PyTorch file at {path!r}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise UserError(
            f"Could not read {path!r} as a PyTorch state dict ({summarize(e, 200)}). Save the "
            "model with torch.save(model.state_dict(), path), not the whole module.") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(hasattr(v, "numpy") for v in obj.values()):
        raise UserError(f"{path!r} does not hold a state dict (a mapping of names to tensors).")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def save_torch_file(state_dict: Mapping[str, np.ndarray], path: str) -> None:
    """Write `state_dict` as PyTorch tensors, atomically."""
    torch = import_torch()
    with atomic_write(path) as tmp:
        torch.save({k: torch.from_numpy(np.array(v, order="C")) for k, v in state_dict.items()},
                   tmp)
