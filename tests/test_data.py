"""Sources, preprocessing and the cache."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from jax_dcgan.config import Config
from jax_dcgan.data import celeba, dataset
from jax_dcgan.data.synthetic import draw_face


def test_preprocess_is_torchvision_centercrop_then_pil_bilinear_resize():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (218, 178, 3), np.uint8))  # CelebA's size
    ours = dataset.preprocess(image, 160, 64)
    # torchvision: top = round((218 - 160) / 2) = 29, left = round((178 - 160) / 2) = 9.
    expected = np.asarray(image.crop((9, 29, 169, 189)).resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(ours, expected)
    # Odd margins round like torchvision (int(round(x))), i.e. half to even.
    odd = Image.fromarray(rng.integers(0, 256, (165, 171, 3), np.uint8))
    expected = np.asarray(odd.crop((6, 2, 166, 162)).resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(dataset.preprocess(odd, 160, 64), expected)


@pytest.mark.parametrize("mode,fill,rgb", [
    ("L", 200, (200, 200, 200)),
    ("RGBA", (255, 0, 0, 0), (255, 255, 255)),       # fully transparent -> white
    ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
    ("LA", (10, 255), (10, 10, 10)),
    ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ("I;16", 65535, (255, 255, 255)),                 # 16-bit scaled, not clipped
    ("I;16", 32768, (128, 128, 128)),
    ("1", 1, (255, 255, 255)),
])
def test_any_mode_becomes_rgb(mode, fill, rgb):
    image = Image.new(mode, (40, 30), fill)
    out = dataset.preprocess(image, 0, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), rgb, atol=1)


def test_palette_with_transparency_becomes_rgb():
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 255] * 256)
    image.info["transparency"] = 0
    assert tuple(dataset.preprocess(image, 0, 8)[0, 0]) == (255, 255, 255)


def test_smaller_than_crop_uses_largest_centered_square():
    image = Image.fromarray(np.arange(100 * 80 * 3, dtype=np.uint8).reshape(100, 80, 3))
    out = dataset.preprocess(image, 160, 16)
    expected = np.asarray(image.crop((0, 10, 80, 90)).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(out, expected)


def test_synthetic_faces_are_deterministic_and_varied():
    a = np.stack([draw_face(7, i, 32) for i in range(32)])
    b = np.stack([draw_face(7, i, 32) for i in range(32)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(draw_face(8, 0, 32), a[0])
    flat = a.reshape(32, -1).astype(np.float64)
    distances = np.linalg.norm(flat[:, None] - flat[None], axis=-1)[np.triu_indices(32, 1)]
    assert distances.min() > 0.1 * distances.mean()  # no two faces nearly the same
    assert flat.std(axis=0).mean() > 30  # pixels vary a lot across faces


def _write_images(root, count=6):
    """CelebA-like JPEGs plus PNG/WebP files of odd sizes and modes, in subfolders."""
    rng = np.random.default_rng(0)
    os.makedirs(root / "sub", exist_ok=True)
    names = []
    for i in range(count):
        name = f"{i + 1:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), np.uint8)).save(root / name)
        names.append(name)
    Image.fromarray(rng.integers(0, 256, (50, 300), np.uint8), "L").save(root / "sub" / "gray.png")
    Image.fromarray(rng.integers(0, 256, (97, 61, 4), np.uint8), "RGBA").save(root / "sub" / "a.webp")
    return names


def test_folder_source_reads_nested_images_of_any_size_and_mode(tmp_path):
    _write_images(tmp_path / "imgs")
    cfg = Config(dataset="folder", data_dir=str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c"),
                 split="all")
    images = dataset.load_dataset(cfg, quiet=True)
    assert images.shape == (8, 64, 64, 3) and images.dtype == np.uint8


def test_celeba_split_file_selects_the_split(tmp_path):
    names = _write_images(tmp_path / "imgs")
    with open(tmp_path / "imgs" / celeba.PARTITION_FILE, "w") as f:
        for i, name in enumerate(names):
            f.write(f"{name} {0 if i < 3 else (1 if i < 5 else 2)}\n")
    counts = {}
    for split in ("train", "valid", "test", "all"):
        cfg = Config(dataset="folder", data_dir=str(tmp_path / "imgs"), split=split,
                     cache_dir=str(tmp_path / "c"))
        counts[split] = len(dataset.load_dataset(cfg, quiet=True))
    assert counts == {"train": 3, "valid": 2, "test": 1, "all": 8}


def test_cache_is_reused_and_rebuilt_when_source_or_transform_changes(tmp_path, monkeypatch):
    _write_images(tmp_path / "imgs", count=3)
    cfg = Config(dataset="folder", data_dir=str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c"),
                 split="all")
    calls = []
    original = dataset._load_image
    monkeypatch.setattr(dataset, "_load_image", lambda *a: calls.append(a) or original(*a))
    first = np.array(dataset.load_dataset(cfg, quiet=True))
    assert len(calls) == 5
    again = dataset.load_dataset(cfg, quiet=True)
    assert len(calls) == 5  # reused: nothing decoded
    np.testing.assert_array_equal(first, again)

    dataset.load_dataset(cfg.replace(crop_size=100), quiet=True)  # another transform
    assert len(calls) == 10
    Image.new("RGB", (200, 200), (1, 2, 3)).save(tmp_path / "imgs" / "new.png")
    assert len(dataset.load_dataset(cfg, quiet=True)) == 6  # another file: rebuilt
    caches = [d for d in os.listdir(tmp_path / "c") if not d.startswith(".")]
    assert len(caches) == 3
    manifest = json.loads((tmp_path / "c" / caches[0] / "manifest.json").read_text())
    assert manifest["dataset"] == "folder" and manifest["version"] == dataset.CACHE_VERSION


def test_damaged_cache_is_rebuilt(tmp_path):
    cfg = Config(num_synthetic=10, image_size=16, cache_dir=str(tmp_path))
    images = np.array(dataset.load_dataset(cfg, quiet=True))
    (cache,) = [d for d in os.listdir(tmp_path) if not d.startswith(".")]
    with open(tmp_path / cache / "images.npy", "r+b") as f:
        f.truncate(200)
    with pytest.warns(UserWarning, match="stale or damaged"):
        again = dataset.load_dataset(cfg, quiet=True)
    np.testing.assert_array_equal(images, again)


def test_epoch_order_is_a_permutation_that_changes_per_epoch():
    a, b = dataset.epoch_order(42, 0, 100), dataset.epoch_order(42, 1, 100)
    assert sorted(a) == list(range(100)) and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, dataset.epoch_order(42, 0, 100))
