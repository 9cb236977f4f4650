"""CelebA through tfds's real builder module and download manager, without TensorFlow.

The original files are faked in CelebA's exact formats (a zip of `img_align_celeba/*.jpg`,
the split file, and the attribute/landmark files with their count and header lines), and
only the network is replaced: `requests.Session.get` answers as Google Drive does, with its
confirmation page before the large archive.
"""

import io
import json
import os
import re
import sys
import zipfile

import numpy as np
import pytest
import requests
from PIL import Image
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder as celeb_a_builder

from jax_dcgan import cli
from jax_dcgan.config import Config
from jax_dcgan.data import celeba, dataset
from jax_dcgan.data.synthetic import draw_face

from .helpers import tiny_flags

SPLIT_OF = [0] * 8 + [1] * 2 + [2] * 2  # 12 images: 8 train, 2 valid, 2 test
URLS = {celeb_a_builder.IMG_ALIGNED_DATA: "img_align_celeba.zip",
        celeb_a_builder.EVAL_LIST: "list_eval_partition.txt",
        celeb_a_builder.ATTR_DATA: "list_attr_celeba.txt",
        celeb_a_builder.LANDMARKS_DATA: "list_landmarks_align_celeba.txt",
        celeb_a_builder.IDENTITY_DATA: "identity_CelebA.txt"}


def _write_originals(folder) -> dict[str, str]:
    """CelebA's five original files for 12 faces of 178x218, in their exact formats."""
    os.makedirs(folder, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, len(SPLIT_OF) + 1)]
    with zipfile.ZipFile(os.path.join(folder, "img_align_celeba.zip"), "w") as z:
        for i, name in enumerate(names):
            face = Image.fromarray(draw_face(7, i, 256)).resize((218, 218)).crop((20, 0, 198, 218))
            buffer = io.BytesIO()
            face.save(buffer, "JPEG", quality=90)
            z.writestr(f"img_align_celeba/{name}", buffer.getvalue())
    rows = {
        "list_eval_partition.txt": [f"{n} {s}" for n, s in zip(names, SPLIT_OF)],
        "list_attr_celeba.txt": [str(len(names)), " ".join(celeb_a_builder.ATTR_HEADINGS)]
        + [f"{n} " + " ".join(["-1", " 1"][(i + j) % 2] for j in range(40))
           for i, n in enumerate(names)],
        "list_landmarks_align_celeba.txt": [str(len(names)),
                                            " ".join(celeb_a_builder.LANDMARK_HEADINGS)]
        + [f"{n}   69  109  106  113   77  142   73  152  108  154" for n in names],
        "identity_CelebA.txt": [f"{n} {2880 + i}" for i, n in enumerate(names)],
    }
    for filename, lines in rows.items():
        with open(os.path.join(folder, filename), "w", newline="\r\n") as f:
            f.write("\n".join(lines) + "\n")
    return {url: os.path.join(folder, name) for url, name in URLS.items()}


class _Response:
    def __init__(self, url: str, body: bytes, filename: str | None = None, start: int = 0,
                 cut_after: int | None = None):
        self.url, self.body, self.cut_after = url, body[start:], cut_after
        self.status_code = 206 if start else 200
        self.headers = {"Content-length": str(len(self.body))}
        if filename:
            self.headers["Content-Disposition"] = f'attachment; filename="{filename}"'

    @property
    def text(self) -> str:
        return self.body.decode()

    def raise_for_status(self) -> None:
        pass

    def iter_content(self, chunk_size: int):
        chunk_size = min(chunk_size, 4096)  # a network's small pieces
        for i in range(0, len(self.body), chunk_size):
            if self.cut_after is not None and i >= self.cut_after:
                raise requests.ConnectionError("Connection reset by peer")
            yield self.body[i:i + chunk_size]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeDrive:
    """Google Drive as a downloader meets it: small files at once, the archive after its
    "can't scan this file for viruses" form (or a quota page with no form), byte ranges
    honoured; `cut_after` bytes of the archive, the connection drops once."""

    def __init__(self, files: dict[str, str], quota_exceeded: bool = False,
                 cut_after: int | None = None):
        self.files = {re.search(r"id=([\w-]+)", url).group(1): path for url, path in files.items()}
        self.quota_exceeded, self.cut_after, self.requests = quota_exceeded, cut_after, []

    def get(self, url, headers=None, **kwargs):  # set on Session as a bound method
        self.requests.append((url, (headers or {}).get("Range")))
        file_id = re.search(r"id=([\w-]+)", url).group(1)
        path = self.files[file_id]
        if url.startswith("https://drive.google.com/") and path.endswith(".zip"):
            form = "" if self.quota_exceeded else (
                '<form id="download-form" action="https://drive.usercontent.google.com/download" '
                f'method="get"><input type="hidden" name="id" value="{file_id}">'
                '<input type="hidden" name="export" value="download">'
                '<input type="hidden" name="confirm" value="t"></form>')
            return _Response(url, f"<html><body>Google Drive {form}</body></html>".encode())
        start = int(re.match(r"bytes=(\d+)-", headers["Range"]).group(1)) if headers else 0
        cut = None
        if path.endswith(".zip"):
            cut, self.cut_after = self.cut_after, None
        with open(path, "rb") as f:
            return _Response(url, f.read(), os.path.basename(path), start, cut)


def _use_network(monkeypatch, drive: FakeDrive | None) -> None:
    """The network is `drive`, or none at all (None): every request fails."""
    monkeypatch.setattr(requests.Session, "get", drive.get if drive else _refuse)


def _refuse(session, url, **kwargs):
    raise requests.ConnectionError(f"Failed to resolve 'drive.google.com' ({url})")


@pytest.fixture
def originals(tmp_path, monkeypatch):
    """The fake originals, registered as CelebA's checksums; TensorFlow not importable."""
    files = _write_originals(tmp_path / "originals")
    _register(monkeypatch, files)
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    return files


def _register(monkeypatch, files: dict[str, str]) -> None:
    """The files' sizes and SHA-256 as the checksums that tfds registers for CelebA."""
    infos = {}
    for url, path in files.items():
        info = checksums.compute_url_info(path)
        infos[url] = checksums.UrlInfo(size=info.size, checksum=info.checksum,
                                       filename=os.path.basename(path))
    monkeypatch.setattr(celeb_a_builder.Builder, "url_infos", infos)


def _prepare(data_dir, cache_dir, *flags) -> int:
    return cli.main(["data", "prepare", "--dataset", "celeb_a", "--data-dir", str(data_dir),
                     "--cache-dir", str(cache_dir), "--image-size", "16", "--quiet", *flags])


def test_prepare_then_train_offline(originals, tmp_path, monkeypatch, capsys):
    drive = FakeDrive(originals)
    _use_network(monkeypatch, drive)
    tfds_dir, cache = tmp_path / "tfds", tmp_path / "cache"
    counts = {}
    for split in ("train", "valid", "test", "all"):
        assert _prepare(tfds_dir, cache, "--split", split) == 0
        counts[split] = int(re.search(r"\): (\d+) images", capsys.readouterr().out).group(1))
    assert counts == {"train": 8, "valid": 2, "test": 2, "all": 12}  # the partition file's
    # The split file once, the archive once (its confirmation page, then the file).
    assert len(drive.requests) == 3 and "tensorflow" not in [m.split(".")[0] for m in
                                                             sys.modules if sys.modules[m]]

    # The same JPEGs through the folder source give the same images, in the same order.
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(originals[celeb_a_builder.IMG_ALIGNED_DATA]) as z:
        z.extractall(folder)
    os.replace(originals[celeb_a_builder.EVAL_LIST], folder / celeba.PARTITION_FILE)
    for split in ("train", "test"):
        ours = dataset.load_dataset(Config(dataset="celeb_a", data_dir=str(tfds_dir), split=split,
                                        cache_dir=str(cache), image_size=16), quiet=True)
        theirs = dataset.load_dataset(Config(dataset="folder", split=split, image_size=16,
                                          data_dir=str(folder / "img_align_celeba"),
                                          cache_dir=str(cache)), quiet=True)
        np.testing.assert_array_equal(ours, theirs)

    # A compute node: no network, no downloads; the cache is all it needs.
    _use_network(monkeypatch, None)
    for name in os.listdir(tfds_dir):
        os.rename(tfds_dir / name, tmp_path / f"moved-{name}")
    flags = tiny_flags(cache, dataset="celeb_a", data_dir=str(tfds_dir), batch_size=4, epochs=1)
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--quiet", *flags]) == 0
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")


def test_manual_directory_is_used_and_verified(originals, tmp_path, monkeypatch, capsys):
    _use_network(monkeypatch, None)
    tfds_dir = tmp_path / "tfds"
    manual = tfds_dir / "downloads" / "manual"
    os.makedirs(manual)
    for url in (celeb_a_builder.IMG_ALIGNED_DATA, celeb_a_builder.EVAL_LIST):
        os.link(originals[url], manual / URLS[url])
    assert _prepare(tfds_dir, tmp_path / "cache") == 0

    with open(manual / "list_eval_partition.txt", "a") as f:  # no longer the registered file
        f.write("000013.jpg 0\n")
    assert _prepare(tfds_dir, tmp_path / "other-cache") == 2
    message = capsys.readouterr().err
    assert "not the one tfds registered" in message and "Traceback" not in message
    assert all(name in message for name in URLS.values()) and str(manual) in message


@pytest.mark.parametrize("fault, cause", [
    ("quota", "quota is used up"),
    ("no bs4", "pip install beautifulsoup4"),
    ("offline", "network failed"),
])
def test_download_failures_name_their_cause(fault, cause, originals, tmp_path, monkeypatch,
                                            capsys):
    drive = FakeDrive(originals, quota_exceeded=fault == "quota")
    _use_network(monkeypatch, None if fault == "offline" else drive)
    if fault == "no bs4":  # needed for Drive's confirmation page
        monkeypatch.setitem(sys.modules, "bs4", None)
    assert _prepare(tmp_path / "tfds", tmp_path / "cache") == 2
    message = capsys.readouterr().err
    assert cause in message and "Traceback" not in message and "\n" not in message.strip()
    assert not os.path.exists(tmp_path / "cache") or not os.listdir(tmp_path / "cache")


def test_an_interrupted_download_resumes(originals, tmp_path, monkeypatch, capsys):
    archive = originals[celeb_a_builder.IMG_ALIGNED_DATA]
    size = os.path.getsize(archive)
    drive = FakeDrive(originals, cut_after=size // 2)
    _use_network(monkeypatch, drive)
    assert _prepare(tmp_path / "tfds", tmp_path / "cache") == 2
    assert "resumes where it stopped" in capsys.readouterr().err
    part = tmp_path / "tfds" / "downloads" / "manual" / "img_align_celeba.zip.part"
    partial = part.stat().st_size
    assert size // 2 <= partial < size

    assert _prepare(tmp_path / "tfds", tmp_path / "cache") == 0  # the rest, then verified
    ranges = [r for url, r in drive.requests if "usercontent" in url]
    assert ranges == [None, f"bytes={partial}-"]
    assert not part.exists() and (part.parent / "img_align_celeba.zip").stat().st_size == size


@pytest.mark.parametrize("damage, cause", [
    ("archive", "is not a readable zip archive"),
    ("split file", "the two files do not belong together"),
])
def test_registered_but_damaged_files_are_named(damage, cause, originals, tmp_path, monkeypatch,
                                                capsys):
    """What the checksums cannot catch (tfds's prepared files, or checksums registered for
    other files) still ends in one paragraph naming the file."""
    if damage == "archive":
        with open(originals[celeb_a_builder.IMG_ALIGNED_DATA], "r+b") as f:
            f.truncate(100)
    else:
        with open(originals[celeb_a_builder.EVAL_LIST], "a") as f:
            f.write("999999.jpg 0\n")
    _register(monkeypatch, originals)
    _use_network(monkeypatch, FakeDrive(originals))
    assert _prepare(tmp_path / "tfds", tmp_path / "cache") == 2
    message = capsys.readouterr().err
    assert cause in message and "Traceback" not in message


def _tfds_prepared(root, file_format: str) -> None:
    """What tfds leaves after preparing CelebA: its dataset_info.json names the format."""
    os.makedirs(root / "celeb_a" / "2.1.0")
    (root / "celeb_a" / "2.1.0" / "dataset_info.json").write_text(
        json.dumps({"name": "celeb_a", "version": "2.1.0", "fileFormat": file_format}))


def test_records_prepared_by_tfds_are_read_when_present(tmp_path):
    """array_record files that tfds prepared (elsewhere, with TensorFlow) are read as they
    are; tfds's mock stands in for their contents."""
    import tensorflow_datasets as tfds

    _tfds_prepared(tmp_path / "tfds", "array_record")
    cfg = Config(dataset="celeb_a", data_dir=str(tmp_path / "tfds"), cache_dir=str(tmp_path),
                 image_size=32)
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        images = dataset.load_dataset(cfg, quiet=True)
    assert images.shape == (12, 32, 32, 3)
    (cache,) = [d for d in os.listdir(tmp_path) if d.startswith("celeb_a-")]
    assert "tfds-array_record" in (tmp_path / cache / "manifest.json").read_text()


def test_records_in_tfrecord_format_fall_back_to_the_original_files(originals, tmp_path,
                                                                  monkeypatch):
    """tfds's default format needs TensorFlow to read: the original files are used."""
    _tfds_prepared(tmp_path / "tfds", "tfrecord")
    _use_network(monkeypatch, FakeDrive(originals))
    assert _prepare(tmp_path / "tfds", tmp_path / "cache") == 0
    (cache,) = [d for d in os.listdir(tmp_path / "cache") if d.startswith("celeb_a-")]
    assert '"original-files"' in (tmp_path / "cache" / cache / "manifest.json").read_text()
    images = np.load(tmp_path / "cache" / cache / "images.npy", mmap_mode="r")
    assert images.shape == (8, 16, 16, 3) and images.max() > images.min()  # the train split
