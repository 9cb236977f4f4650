"""CelebA without TensorFlow: tfds fetches and verifies the original files, Python reads them.

tensorflow-datasets knows CelebA's URLs and registered checksums, and its download
manager caches verified downloads and takes files placed in its manual directory.
Preparing its own records needs TensorFlow (its zip extractor imports it), so this module
stops after the download and reads `img_align_celeba.zip` with `zipfile` and the split
from `list_eval_partition.txt`. Records that tfds already prepared elsewhere (array_record
files, e.g. built with TensorFlow on another machine) are read instead when present.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import urllib.parse
import zipfile
from typing import Callable, Sequence

import numpy as np

from jax_dcgan.errors import UserError, summarize
from jax_dcgan.optional import import_tfds

ARCHIVE = "img_align_celeba.zip"
PARTITION_FILE = "list_eval_partition.txt"  # "000001.jpg 0": 0 train, 1 valid, 2 test
PARTITION_IDS = {"train": {0}, "valid": {1}, "test": {2}, "all": {0, 1, 2}}
TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test",
               "all": "train+validation+test"}
# tfds's download keys for the two files read here, and the names of all five original
# files (tfds's own builder needs every one; the last three are attributes, landmarks and
# identities, which training does not use).
DOWNLOADS = {"img_align_celeba": "IMG_ALIGNED_DATA", "list_eval_partition": "EVAL_LIST"}
ORIGINAL_FILES = (ARCHIVE, PARTITION_FILE, "list_attr_celeba.txt",
                  "list_landmarks_align_celeba.txt", "identity_CelebA.txt")
# Python modules that tfds imports lazily on this path, and the packages that provide them.
PIP_NAMES = {"tensorflow_datasets": "tensorflow-datasets", "bs4": "beautifulsoup4",
             "importlib_resources": "importlib_resources", "array_record": "array-record"}


@dataclasses.dataclass(frozen=True)
class Images:
    """One split's images in a fixed order: `load(item)` gives the original file's bytes, or
    the pixels as tfds decoded them from its records."""
    items: Sequence
    load: Callable[[object], bytes | np.ndarray]
    name: Callable[[object], str]


def data_dir(configured: str) -> str:
    return os.path.abspath(os.path.expanduser(
        configured or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"))


def manual_dir(root: str) -> str:
    return os.path.join(root, "downloads", "manual")


def origin(root: str) -> str:
    """Where the images will come from, decided without touching the network."""
    return "tfds-array_record" if _prepared_builder(root) is not None else "original-files"


def open_split(root: str, split: str, quiet: bool = False) -> Images:
    """The split's images: from tfds's prepared records, else from the original files,
    downloaded (or taken from the manual directory) and verified first."""
    builder = _prepared_builder(root)
    if builder is not None:
        return _prepared_split(builder, split)
    paths = download(root, quiet)
    return _original_split(paths["img_align_celeba"], paths["list_eval_partition"], split)


def download(root: str, quiet: bool = False) -> dict[str, str]:
    """The archive and the split file, verified against tfds's registered checksums."""
    with _library_errors():
        tfds = import_tfds()
        from tensorflow_datasets.datasets.celeb_a import celeb_a_dataset_builder as celeb_a

        urls = {key: getattr(celeb_a, constant) for key, constant in DOWNLOADS.items()}
        registered = tfds.builder_cls("celeb_a").url_infos
        manager = tfds.download.DownloadManager(
            download_dir=os.path.join(root, "downloads"), manual_dir=manual_dir(root),
            url_infos={url: registered[url] for url in urls.values()}, dataset_name="celeb_a")
    if quiet:
        tfds.disable_progress_bar()
    with _download_errors(root):
        _fail_fast_offline(root, {url: registered[url].filename for url in urls.values()})
        return {key: os.fspath(path) for key, path in manager.download(urls).items()}


def _fail_fast_offline(root: str, filenames: dict[str, str]) -> None:
    """Without a network, tfds's downloader retries for minutes before it gives up; when
    some file is neither in the manual directory nor downloaded before (tfds records each
    download's URL in a .INFO file beside it), fail at once if the host cannot be resolved."""
    downloaded = set()
    for folder, _, files in os.walk(os.path.join(root, "downloads")):
        for name in files:
            if name.endswith(".INFO"):
                with open(os.path.join(folder, name)) as f:
                    downloaded.update(json.load(f).get("urls", []))
    for url, filename in filenames.items():
        if url in downloaded or os.path.exists(os.path.join(manual_dir(root), filename)):
            continue
        host = urllib.parse.urlparse(url).hostname
        try:
            socket.getaddrinfo(host, 443)
        except OSError as e:
            raise ConnectionError(f"{host} cannot be resolved ({e})") from None


def read_partition(path: str, split: str) -> set[str]:
    """The file names of `split` in CelebA's split file (count and header lines are not
    part of this file's format)."""
    wanted, ids = set(), PARTITION_IDS[split]
    with open(path) as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise UserError(f"{path}:{number} is not '<file> <0|1|2>': {line.strip()!r}. "
                                "Fix or remove the split file, or use --split all.")
            if int(parts[1]) in ids:
                wanted.add(parts[0])
    return wanted


def _original_split(archive: str, partition: str, split: str) -> Images:
    wanted = read_partition(partition, split)
    try:
        with zipfile.ZipFile(archive) as z:
            members = {os.path.basename(n): n for n in z.namelist() if not n.endswith("/")}
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{archive} is not a readable zip archive ({summarize(e)}); delete it "
                        "and run again to download it anew, or replace it with CelebA's "
                        f"original {ARCHIVE}.") from None
    missing = sorted(wanted - members.keys())
    if missing:
        raise UserError(f"{len(missing)} images of the {split} split in {partition} are not in "
                        f"{archive} (e.g. {', '.join(missing[:3])}); the two files do not "
                        "belong together. Replace them with CelebA's originals.")
    reader = _ZipReader(archive)
    names = sorted(wanted)  # the order of tfds's own CelebA records within a split
    return Images([members[n] for n in names], reader.read, os.path.basename)


class _ZipReader:
    """Reads members from decoding threads: one open ZipFile per thread."""

    def __init__(self, path: str):
        self.path, self.local = path, threading.local()

    def read(self, member: str) -> bytes:
        if not hasattr(self.local, "zip"):
            self.local.zip = zipfile.ZipFile(self.path)
        return self.local.zip.read(member)


def _prepared_builder(root: str):
    """tfds's CelebA builder if its array_record files are prepared under `root`, else None."""
    if not os.path.isdir(os.path.join(root, "celeb_a")):
        return None
    with _library_errors():
        tfds = import_tfds()
        builder = tfds.builder("celeb_a", data_dir=root, file_format="array_record")
        readable = tfds.core.FileFormat.ARRAY_RECORD  # tfrecord files would need TensorFlow
        return builder if builder.is_prepared() and builder.info.file_format == readable else None


def _prepared_split(builder, split: str) -> Images:
    name = TFDS_SPLITS[split]
    with _library_errors():
        records = builder.as_data_source(split=name)
    return Images(range(len(records)), lambda i: records[i]["image"],
                  lambda i: f"celeb_a[{name}][{i}]")


@contextlib.contextmanager
def _library_errors():
    """A module that tfds imports on first use is reported as that, with its pip name."""
    try:
        yield
    except ImportError as e:
        top = _missing_module(e)
        hint = (" (or install TensorFlow and let tfds prepare CelebA itself)"
                if top == "tensorflow" else "")
        raise UserError(f"Reading CelebA through tensorflow-datasets needs the Python module "
                        f"{top!r}, which is not installed: pip install "
                        f"{PIP_NAMES.get(top, top)}{hint}.") from None


def _missing_module(error: BaseException | None) -> str:
    """The top-level module an ImportError is about (tfds re-raises them without `name`)."""
    while error is not None:
        if getattr(error, "name", None):
            return error.name.split(".")[0]
        error = error.__cause__
    return "?"


@contextlib.contextmanager
def _download_errors(root: str):
    """Download failures in words that name their cause and the way around it."""
    with _library_errors():
        try:
            yield
        except Exception as e:
            cause = _download_failure(e)
            if cause is None:
                raise
            raise UserError(
                f"CelebA's original files could not be fetched: {cause} Another way in: "
                "download them yourself from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
                f"(Align&Cropped Images) and put them, under these exact names, in "
                f"{manual_dir(root)}: {', '.join(ORIGINAL_FILES)} (jax-dcgan reads the first "
                "two; tfds's own builder needs all five), then run again. Or use --dataset "
                "folder --data-dir DIR with an extracted img_align_celeba directory and its "
                f"{PARTITION_FILE} beside it.") from None


def _download_failure(error: Exception) -> str | None:
    """What went wrong with a download, in one sentence; None if it is not a download error."""
    from tensorflow_datasets.core.download import download_manager, util

    if isinstance(error, download_manager.NonMatchingChecksumError):
        details = " ".join(str(error).split())  # the file, expected and got
        return (f"a file is not the one tfds registered for CelebA ({details}). Google Drive "
                "serves a warning or quota page instead of the file when CelebA has been "
                "downloaded too often, and a damaged or different file in the manual "
                "directory fails the same way: delete that file, then retry later or place "
                "the originals by hand.")
    if isinstance(error, ValueError) and "GDrive" in str(error):
        return (f"Google Drive did not offer the file ({summarize(error)}), as it does when "
                "CelebA's daily download quota is used up. Retry in a day or place the files "
                "by hand.")
    if isinstance(error, util.DownloadError):
        return f"the server refused ({summarize(error)}). Retry later or place the files by hand."
    if isinstance(error, ConnectionError) or type(error).__module__.split(".")[0] in (
            "requests", "urllib3"):
        return (f"the network is not reachable ({summarize(error)}). Compute nodes often have "
                "none: run `jax-dcgan data prepare` where there is a network first, with the "
                "same --cache-dir, and the cache is found without downloading.")
    if isinstance(error, OSError):
        return f"a file could not be written or read ({summarize(error)})."
    return None
