"""Sources (synthetic, folder, celeb_a) -> one uint8 (N, H, W, C) cache on disk.

Each source is decoded once, in parallel threads (PIL releases the GIL while
decoding and resizing), into `<cache>/<key>/images.npy` with a manifest of
source, count and transform; the key changes whenever they do, so a changed
folder or transform rebuilds the cache and a repeated run reuses it. The cache
is written to a temporary directory and renamed into place, so an interrupted
build never leaves a cache that looks complete.

This module does not import JAX: the training loop decides where batches go.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
import warnings
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from jax_dcgan.common.errors import UserError
from jax_dcgan.config import Config
from jax_dcgan.data import celeba
from jax_dcgan.data.synthetic import draw_face

__all__ = ["cache_root", "epoch_order", "load_dataset"]

CACHE_VERSION = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_PIXELS = 80_000_000  # larger images are refused rather than decoded (decompression bombs)


def preprocess(image: Image.Image, crop_size: int, image_size: int) -> np.ndarray:
    """The lecture's transform up to ToTensor: CenterCrop(crop) -> Resize(size, bilinear).

    Any PIL mode becomes RGB: 16-bit and 32-bit greyscale are scaled to 8 bits,
    transparency is composited over white, palettes and CMYK are converted.
    Images smaller than `crop_size` (or `crop_size` 0) are cropped to their
    largest centered square instead of being padded with black.
    """
    image = to_rgb(image)
    w, h = image.size
    crop = min(crop_size or min(w, h), w, h)
    # torchvision's CenterCrop rounds the offsets this way.
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        scale = 1 / 256 if image.mode.startswith("I;16") or np.asarray(image).max() > 255 else 1
        image = image.point(lambda v: v * scale).convert("L")
    elif image.mode == "F":
        image = image.point(lambda v: v * 255 if 0 <= v <= 1 else v).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


@dataclasses.dataclass(frozen=True)
class Items:
    """What to decode: the items and one loader per item."""
    items: Sequence
    load: Callable[[object], np.ndarray]
    name: Callable[[object], str] = str


@dataclasses.dataclass(frozen=True)
class Source:
    """A description (the cache key) and, called only when the cache must be built, the
    items to decode: a cached CelebA never touches tfds or the network."""
    description: dict
    open: Callable[[bool], Items]  # quiet -> items


def synthetic_source(cfg: Config) -> Source:
    return Source({"dataset": "synthetic", "seed": cfg.data_seed, "count": cfg.num_synthetic,
                   "image_size": cfg.image_size},
                  lambda quiet: Items(range(cfg.num_synthetic),
                                lambda i: draw_face(cfg.data_seed, i, cfg.image_size)))


def folder_source(cfg: Config) -> Source:
    root = os.path.abspath(os.path.expanduser(cfg.data_dir))
    if not os.path.isdir(root):
        raise UserError(f"--data-dir {cfg.data_dir!r} is not a directory. Point it at a folder "
                        "of JPEG/PNG/WebP images, e.g. CelebA's extracted img_align_celeba.")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(root, followlinks=True)
                   for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise UserError(f"No images (*{', *'.join(IMAGE_SUFFIXES)}) under {root!r}. Point "
                        "--data-dir at a folder that contains them (subfolders are searched).")
    split_note = "all files"
    partition = _find_partition_file(root)
    if partition and cfg.split != "all":
        wanted = celeba.read_partition(partition, cfg.split)
        paths = [p for p in paths if os.path.basename(p) in wanted]
        split_note = f"{cfg.split} split of {partition}"
        if not paths:
            raise UserError(f"None of the images under {root!r} is in the {cfg.split} split of "
                            f"{partition}; check the file or use --split all.")
    fingerprint = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        fingerprint.update(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return Source({"dataset": "folder", "root": root, "split": split_note, "count": len(paths),
                   "files": fingerprint.hexdigest(), "crop_size": cfg.crop_size,
                   "image_size": cfg.image_size},
                  lambda quiet: Items(
                      paths, lambda p: _load_image(p, cfg.crop_size, cfg.image_size),
                      lambda p: os.path.relpath(p, root)))


def _find_partition_file(root: str) -> str | None:
    for folder in (root, os.path.dirname(root)):
        candidate = os.path.join(folder, celeba.PARTITION_FILE)
        if os.path.isfile(candidate):
            return candidate
    return None


def _load_image(file, crop_size: int, image_size: int) -> np.ndarray:
    """Decode a path or file object, refusing decompression bombs."""
    with Image.open(file) as image:
        if image.width * image.height > MAX_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is more than {MAX_PIXELS}")
        image.load()
        return preprocess(image, crop_size, image_size)


def celeb_a_source(cfg: Config) -> Source:
    """CelebA's JPEGs from tfds's prepared records or the original files; see celeba.py."""
    root = celeba.data_dir(cfg.data_dir)
    # Not the data directory: a login node and a compute node may mount it differently.
    description = {"dataset": "celeb_a", "split": cfg.split, "origin": celeba.origin(root),
                   "crop_size": cfg.crop_size, "image_size": cfg.image_size}

    def open_items(quiet: bool) -> Items:
        images = celeba.open_split(root, cfg.split, quiet)

        def load(item) -> np.ndarray:
            original = images.load(item)
            if isinstance(original, np.ndarray):
                return preprocess(Image.fromarray(original), cfg.crop_size, cfg.image_size)
            return _load_image(io.BytesIO(original), cfg.crop_size, cfg.image_size)

        return Items(images.items, load, images.name)

    return Source(description, open_items)


SOURCES = {"synthetic": synthetic_source, "folder": folder_source, "celeb_a": celeb_a_source}


def cache_root(cfg: Config) -> str:
    return os.path.abspath(os.path.expanduser(cfg.cache_dir or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "jax_dcgan")))


def load_dataset(cfg: Config, workers: int | None = None, quiet: bool = False) -> np.ndarray:
    """The dataset as a read-only memory-mapped uint8 (N, H, W, C) array, built if needed."""
    source = SOURCES[cfg.dataset](cfg)
    manifest = {"version": CACHE_VERSION, **source.description}
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    directory = os.path.join(cache_root(cfg), f"{cfg.dataset}-{key}")
    images = _open_cache(directory, manifest)
    if images is None:
        shape = (cfg.image_size, cfg.image_size, 3)
        _build_cache(source, manifest, shape, directory, workers, quiet)
        images = _open_cache(directory, manifest)
        assert images is not None
    return images


def _open_cache(directory: str, manifest: dict) -> np.ndarray | None:
    """The cached images if the cache is complete and matches; None means rebuild it."""
    if not os.path.exists(directory):
        return None
    try:
        with open(os.path.join(directory, "manifest.json")) as f:
            stored = json.load(f)
        images = np.load(os.path.join(directory, "images.npy"), mmap_mode="r")
        if {k: stored.get(k) for k in manifest} != manifest or images.shape[0] != stored["kept"] \
                or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError("manifest and images disagree")
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"The dataset cache {directory} is stale or damaged ({e}); rebuilding it.")
        return None
    return images


def _build_cache(source: Source, manifest: dict, shape: tuple[int, int, int], directory: str,
                 workers: int | None, quiet: bool) -> None:
    items = source.open(quiet)
    folder = os.path.dirname(directory)
    try:
        os.makedirs(folder, exist_ok=True)
        need, free = len(items.items) * math.prod(shape), shutil.disk_usage(folder).free
        if need > free:
            raise UserError(f"{manifest['dataset']}: {len(items.items)} images of "
                            f"{'x'.join(map(str, shape))} need {need / 2**30:.3g} GiB in "
                            f"{folder!r}, which has {free / 2**30:.3g} GiB free; give fewer or "
                            "smaller images, or another --cache-dir.")
        tmp = tempfile.mkdtemp(prefix=".building-", dir=folder)
    except OSError as e:
        raise UserError(f"The dataset cache cannot be written in {folder!r} "
                        f"({e.strerror}); give --cache-dir a writable directory.") from None
    try:
        kept, skipped = _decode(items, os.path.join(tmp, "images.npy"), shape,
                                workers or min(8, (os.cpu_count() or 1) + 2),
                                f"decoding {manifest['dataset']}", quiet)
        if not kept:
            raise UserError(
                f"None of the {len(items.items)} files of {manifest['dataset']} is a readable "
                f"image (e.g. {', '.join(skipped[:3])}); check the files or --data-dir.")
        if skipped:
            warnings.warn(
                f"Skipped {len(skipped)} of {len(items.items)} files that are not readable "
                f"images (e.g. {', '.join(skipped[:3])}); training uses the other {kept}.")
        _truncate_npy(os.path.join(tmp, "images.npy"), kept, shape)
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump({**manifest, "kept": kept, "skipped": len(skipped),
                       "skipped_examples": skipped[:10]}, f, indent=2)
        if os.path.exists(directory):
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _decode(items: Items, path: str, shape: tuple[int, int, int], workers: int,
            description: str, quiet: bool) -> tuple[int, list[str]]:
    """Decode every item into a new .npy at `path`, readable images first; (how many were,
    the names of those that were not)."""
    out = np.lib.format.open_memmap(path, "w+", np.uint8, (len(items.items),) + shape)
    kept, skipped = 0, []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, tqdm(
            total=len(items.items), desc=description, unit="img", disable=quiet,
            dynamic_ncols=True) as bar:
        for start in range(0, len(items.items), 1024):  # bounded memory in flight
            chunk = items.items[start:start + 1024]
            for item, image in zip(chunk, pool.map(lambda i: _try_load(items, i), chunk)):
                if image is None:
                    skipped.append(items.name(item))
                    continue
                out[kept] = image
                kept += 1
            bar.update(len(chunk))
    out.flush()
    return kept, skipped


def _try_load(items: Items, item) -> np.ndarray | None:
    try:
        image = items.load(item)
    except UserError:
        raise
    except Exception:  # PIL raises many types for truncated or non-image files
        return None
    return image if image.ndim == 3 and image.shape[-1] == 3 else None


def _truncate_npy(path: str, rows: int, shape: tuple[int, ...]) -> None:
    """Shrink a .npy written for more rows to its first `rows`, without copying the data."""
    full = np.load(path, mmap_mode="r")
    if full.shape[0] == rows:
        return
    header_len = full.offset
    del full
    with open(path, "r+b") as f:
        f.seek(0)
        header = {"descr": "|u1", "fortran_order": False, "shape": (rows,) + shape}
        np.lib.format.write_array_header_1_0(f, header)
        assert f.tell() == header_len, "npy header changed length"
        f.truncate(header_len + rows * int(np.prod(shape)))


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The data order of one epoch; the same for every device count and after a resume."""
    return np.random.default_rng([seed, 0xDA7A, epoch]).permutation(count)
