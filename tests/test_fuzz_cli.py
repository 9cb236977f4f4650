"""A fuzzed command line: every subcommand with arguments drawn from what users get wrong.

Paths that are missing, files where directories are expected and the reverse, empty or
damaged checkpoints, caches, config files, .pt and .npy files; numbers that are zero,
negative, huge, not a power of two or not numbers; unknown choices. Every case must end in
success or in the one-paragraph error with a non-zero exit, never a traceback, and a
failure must leave every file that existed before unchanged. The examples come from a fixed
seed, so a failure names an argv that reproduces it; JAX_DCGAN_FUZZ_SEED and
JAX_DCGAN_FUZZ_EXAMPLES explore further.
"""

import hashlib
import os
import random

import numpy as np
import pytest
from PIL import Image

from jax_dcgan import cli

EXAMPLES = int(os.environ.get("JAX_DCGAN_FUZZ_EXAMPLES", 120))
SEED = int(os.environ.get("JAX_DCGAN_FUZZ_SEED", 20261130))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "file.txt").write_text("a regular file\n")
    (root / "empty").mkdir()
    (root / "garbage.pt").write_bytes(os.urandom(300))
    (root / "empty.pt").write_bytes(b"")
    np.save(root / "noise_shape.npy", np.zeros((3, 7, 2), np.float32))
    np.save(root / "noise_nan.npy", np.full((4, 8), np.nan, np.float32))
    np.save(root / "noise_int.npy", np.zeros((4, 8), np.int64))
    (root / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "bad.json").write_text("{")
    (root / "field.json").write_text('{"no_such_field": 1}')
    (root / "type.yaml").write_text("batch_size: many\n")
    damaged = root / "damaged_run" / "checkpoints" / "5" / "state"
    damaged.mkdir(parents=True)
    (damaged / "garbage").write_bytes(os.urandom(100))
    (root / "damaged_run" / "config.json").write_text("not json")
    images = root / "images"
    images.mkdir()
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (images / "list_eval_partition.txt").write_text("broken.jpg x\n")
    (root / "one_image").mkdir()
    Image.new("RGB", (20, 20), (200, 30, 30)).save(root / "one_image" / "red.png")
    return root


def _paths(root) -> list[str]:
    names = ["missing", "missing/deeper", "file.txt", "empty", "garbage.pt", "empty.pt",
             "garbage.npy", "noise_shape.npy", "damaged_run", "damaged_run/checkpoints",
             "images", "one_image", "bad.json"]
    return [str(root / n) for n in names]


NUMBERS = ["0", "-1", "3", "16", "15", "1000000000000", "nan", "-inf", "abc", ""]
# Counts of work (steps, epochs, images): a huge one is valid and merely long, so not drawn.
COUNTS = ["0", "-1", "2", "nan", "abc", ""]
TINY = ["--image-size", "16", "--gen-features", "4", "--dis-features", "4", "--latent-dim",
        "4", "--batch-size", "4", "--num-synthetic", "8", "--steps", "1", "--quiet"]


def _draw(rng: random.Random, root) -> list[str]:
    """One argv: a subcommand, mostly valid tiny settings, and a few fuzzed arguments."""
    paths, number, count = _paths(root), lambda: rng.choice(NUMBERS), lambda: rng.choice(COUNTS)
    new = str(root / f"out{rng.randrange(10 ** 6)}")
    command = rng.choice(["train", "train", "sample", "eval", "convert-from", "convert-to",
                          "bench", "data", "parity"])
    if command == "train":
        argv = ["train", "--out", rng.choice(paths + [new]), *TINY, "--cache-dir",
                str(root / "cache")]
        options = [["--batch-size", number()], ["--image-size", number()],
                   ["--steps", count()], ["--lr-g", number()], ["--devices", number()],
                   ["--checkpoint-every", number()], ["--epochs", count()],
                   ["--dataset", "folder", "--data-dir", rng.choice(paths)],
                   ["--config", rng.choice([str(root / n) for n in
                                            ("bad.json", "field.json", "type.yaml")] + paths)],
                   ["--preset", rng.choice(["seed", "nope"])], ["--resume"],
                   ["--heartbeat-timeout", number()],
                   ["--dtype", rng.choice(["float64", "float16"])],
                   ["--num-processes", count()], ["--eval-every", count()]]
    elif command == "sample":
        argv = ["sample", "--checkpoint", rng.choice(paths), "--out",
                rng.choice([new + ".png", str(root / "missing" / "g.png"), str(root / "empty")])]
        options = [["--num", count()], ["--noise", rng.choice(paths + [
            str(root / n) for n in ("noise_shape.npy", "noise_nan.npy", "noise_int.npy")])],
                   ["--seed", number()], ["--bn", rng.choice(["running", "mean"])]]
    elif command == "eval":
        argv = ["eval", rng.choice(["--checkpoint", "--fake"]), rng.choice(paths),
                "--cache-dir", str(root / "cache")]
        options = [["--num", count()], ["--no-fid"], ["--json"], ["--real", rng.choice(paths)],
                   ["--fake", rng.choice(paths)], ["--image-size", number()]]
    elif command == "convert-from":
        argv = ["convert", "--from-torch", rng.choice(paths), "--out", rng.choice(paths + [new])]
        options = [["--preset", rng.choice(["seed-relu", "nope"])]]
    elif command == "convert-to":
        argv = ["convert", "--to-torch", rng.choice(paths), "--out", rng.choice(paths + [new])]
        options = []
    elif command == "bench":
        argv = ["bench", "--variants", rng.choice(["jax-jit-matmul", "nope"]), "--steps", "1",
                "--repeats", "1", "--image-size", "16", "--gen-features", "4",
                "--dis-features", "4", "--batch-size", "4"]
        options = [["--steps", count()], ["--repeats", count()], ["--loop-epochs", count()],
                   ["--batch-size", number()], ["--json-out", rng.choice(paths + [new])],
                   ["--hlo-dir", rng.choice(paths)]]
    elif command == "data":
        argv = ["data", "prepare", "--cache-dir", str(root / "cache"), "--quiet",
                "--image-size", "16", "--num-synthetic", "8"]
        options = [["--dataset", "folder", "--data-dir", rng.choice(paths)],
                   ["--workers", count()], ["--image-size", number()],
                   ["--split", rng.choice(["train", "bogus"])], ["--crop-size", number()],
                   ["--num-synthetic", count()], ["--cache-dir", rng.choice(paths)]]
    else:
        argv = ["parity", "--checkpoint", rng.choice(paths), "--only", "architecture"]
        options = [["--preset", rng.choice(["seed-relu", "nope"])], ["--json"]]
    for option in rng.sample(options, min(len(options), rng.randrange(0, 3))):
        argv += option
    return argv


def _snapshot(root) -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                found[path] = hashlib.sha256(f.read()).hexdigest()
    return found


def test_no_argv_ends_in_a_traceback_or_changes_what_exists(sandbox, capsys):
    rng = random.Random(SEED)
    problems = []
    for _ in range(EXAMPLES):
        argv = _draw(rng, sandbox)
        before = _snapshot(sandbox)
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse: a usage line and exit 2
            code = e.code
        except Exception as e:  # what the tool should have turned into its own message
            problems.append(f"{argv}: {type(e).__name__}: {e}")
            continue
        err = capsys.readouterr().err
        if "Traceback" in err:
            problems.append(f"{argv}: traceback on stderr")
        if code != 0 and not err.strip():
            problems.append(f"{argv}: exit {code} without a message")
        if code == 0:  # a success may write where it was told to
            continue
        after = _snapshot(sandbox)
        changed = [p for p, digest in before.items() if after.get(p) != digest
                   and "/cache/" not in p]
        if changed:
            problems.append(f"{argv}: changed {changed[:3]}")
    assert not problems, "\n".join(problems[:10])
