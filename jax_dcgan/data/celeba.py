"""CelebA without TensorFlow: tfds's URLs and checksums, resumable downloads, zipfile.

tensorflow-datasets knows CelebA's Google Drive URLs and the sizes and SHA-256 of its
original files, and its download manager verifies files found in its manual directory.
The files are fetched into that directory (resuming an interrupted download, which
tfds's own downloader does not) and then verified by it. Preparing tfds's own records
would need TensorFlow (its zip extractor imports it), so this module reads
`img_align_celeba.zip` with `zipfile` and the split from `list_eval_partition.txt`.
Records that tfds already prepared elsewhere (array_record files, e.g. built with
TensorFlow on another machine) are read instead when present.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import threading
import urllib.parse
import zipfile
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from jax_dcgan.common.errors import UserError, summarize
from jax_dcgan.common.optional import import_tfds

__all__ = ["ARCHIVE", "PARTITION_FILE", "data_dir", "download", "open_split", "origin",
           "read_partition"]

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
    """Where the images will come from, decided from the files alone (no tfds, no network:
    a cached dataset is found on machines without either)."""
    return "tfds-array_record" if _records_prepared(root) else "original-files"


def _records_prepared(root: str) -> bool:
    """Whether tfds prepared CelebA under `root` as array_record files (tfrecord files
    would need TensorFlow to read); tfds's dataset_info.json says which."""
    for info in glob.glob(os.path.join(root, "celeb_a", "*", "dataset_info.json")):
        try:
            with open(info) as f:
                if json.load(f).get("fileFormat") == "array_record":
                    return True
        except (OSError, ValueError):
            continue
    return False


def open_split(root: str, split: str, quiet: bool = False) -> Images:
    """The split's images: from tfds's prepared records, else from the original files,
    downloaded (or taken from the manual directory) and verified first."""
    if _records_prepared(root):
        return _prepared_split(root, split)
    paths = download(root, quiet)
    return _original_split(paths["img_align_celeba"], paths["list_eval_partition"], split)


def download(root: str, quiet: bool = False) -> dict[str, str]:
    """The archive and the split file, verified against tfds's registered checksums.

    Files missing from the manual directory are fetched into it under their original
    names, an interrupted one resumed with an HTTP Range request (tfds's own downloader
    starts every attempt from zero, which a 1.4 GB file from Google Drive may never
    survive); tfds's download manager then verifies each against its registered size and
    SHA-256, as it does files placed there by hand."""
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
        for url in urls.values():
            target = os.path.join(manual_dir(root), registered[url].filename)
            if not os.path.exists(target):
                _fetch(url, target, int(registered[url].size), quiet)
        return {key: os.fspath(path) for key, path in manager.download(urls).items()}


class DriveRefused(Exception):
    """Google Drive answered with a page instead of the file (its quota page)."""


def _fetch(url: str, target: str, size: int, quiet: bool) -> None:
    """Download `url` to `target` through `target.part`, continuing a partial one."""
    import requests

    os.makedirs(os.path.dirname(target), exist_ok=True)
    part = target + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have < size:
        with requests.Session() as session, _get(session, url, have) as response:
            resumed = response.status_code == 206  # else the server sent the whole file
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=size, initial=have if resumed else 0, unit="B", unit_scale=True,
                    unit_divisor=1024, desc=f"downloading {os.path.basename(target)}",
                    disable=quiet, dynamic_ncols=True) as bar:
                for block in response.iter_content(1 << 20):
                    bar.update(f.write(block))
    os.replace(part, target)


def _get(session, url: str, have: int):
    """The file's response from `have` on, through Google Drive's confirmation form for
    files too large for its virus scan."""
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = session.get(url, stream=True, headers=headers, timeout=60)
    if "Content-Disposition" not in response.headers:
        page = response.text
        response.close()
        response = session.get(_confirmed(url, page), stream=True, headers=headers, timeout=60)
    response.raise_for_status()
    if "Content-Disposition" not in response.headers:
        raise DriveRefused(f"{url} answered with a page, not the file")
    return response


def _confirmed(url: str, page: str) -> str:
    """The download link in Google Drive's "can't scan this file for viruses" form."""
    from bs4 import BeautifulSoup

    form = BeautifulSoup(page, "html.parser").find("form")
    if form is None or not form.get("action"):
        raise DriveRefused(f"{url} answered with a page that offers no download")
    fields = {i["name"]: i.get("value", "") for i in form.find_all("input") if i.get("name")}
    return f"{urllib.parse.urljoin(url, form['action'])}?{urllib.parse.urlencode(fields)}"


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
    names = sorted(wanted)  # a stable order (tfds's records are shuffled: another order)
    return Images([members[n] for n in names], reader.read, os.path.basename)


class _ZipReader:
    """Reads members from decoding threads: one open ZipFile per thread."""

    def __init__(self, path: str):
        self.path, self.local = path, threading.local()

    def read(self, member: str) -> bytes:
        if not hasattr(self.local, "zip"):
            self.local.zip = zipfile.ZipFile(self.path)
        return self.local.zip.read(member)


def _prepared_split(root: str, split: str) -> Images:
    name = TFDS_SPLITS[split]
    with _library_errors():
        records = import_tfds().builder("celeb_a", data_dir=root).as_data_source(split=name)
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
    import requests
    from tensorflow_datasets.core.download import download_manager, util

    if isinstance(error, download_manager.NonMatchingChecksumError):
        details = " ".join(str(error).split())  # the file, expected and got
        return (f"a file is not the one tfds registered for CelebA ({details}); a damaged, "
                "truncated or different file fails this way. Delete that file and run again, "
                "or place the originals by hand.")
    if isinstance(error, DriveRefused):
        return (f"Google Drive did not offer the file ({summarize(error)}), as it does when "
                "CelebA's daily download quota is used up. Retry in a day (a partial download "
                "resumes) or place the files by hand.")
    if isinstance(error, (util.DownloadError, requests.HTTPError)):
        return f"the server refused ({summarize(error)}). Retry later or place the files by hand."
    if isinstance(error, (ConnectionError, requests.RequestException)):
        return (f"the network failed ({summarize(error)}); run again and an interrupted "
                "download resumes where it stopped. Compute nodes often have no network: run "
                "`jax-dcgan data prepare` where there is one first, with the same "
                "--cache-dir, and the cache is found without downloading.")
    if isinstance(error, OSError):
        return f"a file could not be written or read ({summarize(error)})."
    return None
