"""How fast this machine turns CelebA's original archive into the training cache.

Writes an `img_align_celeba.zip` of N synthetic 178x218 faces saved as JPEGs of about
CelebA's mean size (1,443,490,838 bytes / 202,599 files = 7.1 KB), then times the path
that `jax-dcgan data prepare --dataset celeb_a` takes after its download (zip member
reads, PIL decode, CenterCrop 160, bilinear resize to 64, the uint8 cache) and
extrapolates to CelebA's 202,599 images:

    python scripts/celeba_decode_rate.py --images 4000
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
import zipfile

from PIL import Image

from jax_dcgan.config import Config
from jax_dcgan.data import celeba, dataset
from jax_dcgan.data.synthetic import draw_face

CELEBA_IMAGES = 202_599


def write_archive(folder: str, count: int, quality: int) -> float:
    """The archive and an all-train split file; the mean JPEG size in bytes."""
    total = 0
    with zipfile.ZipFile(os.path.join(folder, celeba.ARCHIVE), "w") as z:
        for i in range(count):
            face = Image.fromarray(draw_face(0, i, 256)).resize((218, 218), Image.BICUBIC)
            buffer = io.BytesIO()
            face.crop((20, 0, 198, 218)).save(buffer, "JPEG", quality=quality)
            total += buffer.tell()
            z.writestr(f"img_align_celeba/{i + 1:06d}.jpg", buffer.getvalue())
    with open(os.path.join(folder, celeba.PARTITION_FILE), "w") as f:
        f.writelines(f"{i + 1:06d}.jpg 0\n" for i in range(count))
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--quality", type=int, default=93,
                        help="JPEG quality of the fakes (93: about CelebA's 7.1 KB)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mean_bytes = write_archive(tmp, args.images, args.quality)
        files = {"img_align_celeba": os.path.join(tmp, celeba.ARCHIVE),
                 "list_eval_partition": os.path.join(tmp, celeba.PARTITION_FILE)}
        celeba.download = lambda root, quiet=False: files  # the files are already here
        cfg = Config(dataset="celeb_a", data_dir=tmp, cache_dir=os.path.join(tmp, "cache"))
        start = time.perf_counter()
        images = dataset.load_dataset(cfg, workers=args.workers)
        seconds = time.perf_counter() - start
    rate = len(images) / seconds
    print(f"{len(images)} images of {mean_bytes / 1e3:.1f} KB on {os.cpu_count()} cores: "
          f"{seconds:.1f} s, {rate:.0f} images/s; CelebA's {CELEBA_IMAGES:,} images would "
          f"take about {CELEBA_IMAGES / rate / 60:.1f} min")


if __name__ == "__main__":
    main()
