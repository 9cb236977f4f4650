"""A fuzzed command line: every subcommand with arguments drawn from what users get wrong.

Paths that are missing, files where directories are expected and the reverse, empty or
damaged checkpoints, caches, config files, .pt and .npy files; numbers that are zero,
negative, huge, not a power of two or not numbers; unknown choices. Every case must end in
success or in the one-paragraph error with a non-zero exit, never a traceback, and a
failure must leave every file that existed before unchanged. The examples come from a fixed
seed, so a failure names an argv that reproduces it; JAX_DCGAN_FUZZ_SEED and
JAX_DCGAN_FUZZ_EXAMPLES explore further.
"""

import argparse
import contextlib
import hashlib
import io
import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jax_dcgan import cli
from tests.helpers import ROOT

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
                          "bench", "data", "parity", "animate"])
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
                   ["--seed", number()], ["--bn", rng.choice(["running", "mean"])],
                   ["--interpolate", count()], ["--between", count()]]
    elif command == "eval":
        argv = ["eval", rng.choice(["--checkpoint", "--fake"]), rng.choice(paths),
                "--cache-dir", str(root / "cache")]
        options = [["--num", count()], ["--no-fid"], ["--json"], ["--real", rng.choice(paths)],
                   ["--fake", rng.choice(paths)], ["--image-size", number()],
                   ["--figure", rng.choice(paths + [new + ".png"])]]
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
    elif command == "animate":
        argv = ["animate", rng.choice(paths)]
        options = [["--out", rng.choice(paths + [new + ".webp"])], ["--every", count()],
                   ["--frame-ms", count()]]
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


# Every numeric flag of every subcommand, found in the parser itself (a flag added later is
# swept without being listed here), at each end of its range and beyond.
EXTREMES = ["0", "-1", "1e308", "-1e-308", "nan", "inf", "-inf", "abc", ""]
# For int flags also -2^63 and 2^63 (beyond 64 bits), 2^63 - 1 and 2^62 (a power of two);
# for a float flag those are merely large, as 1e308 is.
INT_EXTREMES = ["-9223372036854775808", "9223372036854775808"]
HUGE = ["9223372036854775807", "4611686018427387904"]
# Repeats of timing: at 2^63 - 1 a command is valid and merely endless, so not drawn huge.
# (A run's steps end at the int32 step counter's limit, so `train` refuses huge counts.)
WORK = {("bench", "--steps"), ("bench", "--repeats"), ("bench", "--loop-epochs"),
        ("compile", "--measure")}
SWEEP_TINY = ["--image-size", "16", "--gen-features", "4", "--dis-features", "4",
              "--latent-dim", "4", "--batch-size", "4"]


def _numeric_flags() -> list[tuple[str, str, type]]:
    """(subcommand, flag, type) for every option parsed as a number (ints all as
    `cli.integer`, which keeps them within 64 bits)."""
    found = []

    def walk(name, parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(f"{name} {sub}".strip(), subparser)
            elif action.type in (int, float, cli.integer):
                assert action.type is not int, f"{name} {action.option_strings[0]}: type=int"
                found.append((name, action.option_strings[0], action.type))

    walk("", cli.build_parser())
    return found


def sweep_bases(root: pathlib.Path) -> dict[str, list[str]]:
    """For each subcommand, an argv that succeeds in a second or two."""
    cache = str(root / "cache")
    run = str(root / "run")
    data = ["--num-synthetic", "8", "--cache-dir", cache]
    # One device and one step per call: one program to compile, none to time.
    one_program = ["--devices", "1", "--steps-per-dispatch", "1"]
    assert cli.main(["train", "--out", run, "--quiet", *SWEEP_TINY, *data, "--steps", "2",
                     *one_program]) == 0
    return {
        "train": ["train", "--out", "{new}", "--quiet", *SWEEP_TINY, *data, "--steps", "1",
                  *one_program],
        "sample": ["sample", "--checkpoint", run, "--out", "{new}.png"],
        "animate": ["animate", run, "--out", "{new}.webp"],
        "eval": ["eval", "--checkpoint", run, "--no-fid", "--num", "4", "--dataset",
                 "synthetic", *data],
        "bench": ["bench", "--variants", "jax-jit-matmul", "--steps", "1", "--repeats", "1",
                  *SWEEP_TINY],
        "compile": ["compile", *SWEEP_TINY, "--steps-per-dispatch", "1"],
        "data prepare": ["data", "prepare", "--quiet", "--image-size", "16", "--num-synthetic",
                         "8", "--cache-dir", "{new}"],  # decoded anew, so --workers is used
    }


def sweep(root: pathlib.Path) -> list[str]:
    """Each numeric flag alone at each extreme, on an argv that otherwise succeeds; the
    problems found."""
    bases, flags = sweep_bases(root), _numeric_flags()
    assert {command for command, _, _ in flags} == set(bases)  # a new subcommand needs a base
    problems = []
    for i, (command, flag, kind) in enumerate(flags):
        values = EXTREMES + (INT_EXTREMES if kind is cli.integer else []) + (
            HUGE if kind is cli.integer and (command, flag) not in WORK else [])
        for value in values:
            argv = [a.replace("{new}", str(root / f"out{i}-{value}")) for a in bases[command]]
            argv.append(f"{flag}={value}")  # "-1" after a space would read as a flag
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = cli.main(argv)
                except SystemExit as e:  # argparse: a usage line and exit 2
                    code = e.code
                except Exception as e:
                    code = f"{type(e).__name__}: {e}"
            if not isinstance(code, int) or "Traceback" in err.getvalue() or (
                    code != 0 and not err.getvalue().strip()):
                problems.append(f"{argv[0]} {flag} {value}: {code}: {err.getvalue()[-300:]}")
    return problems


def test_every_numeric_flag_across_its_range(tmp_path):
    """Success or the one-paragraph error, never a traceback or an exception, for every
    flag and value of `sweep`. In a process of its own: its ~900 runs compile hundreds of
    programs, and in the suite's worker, after the other files' runs in that process, XLA
    crashed while compiling one (an abort, a segfault) in 2 of about 10 suite runs; in a
    process of its own it never did."""
    done = subprocess.run([sys.executable, "-m", "tests.test_fuzz_cli", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    problems = json.loads(done.stdout.splitlines()[-1])
    assert not problems, "\n".join(problems[:20])


if __name__ == "__main__":
    print(json.dumps(sweep(pathlib.Path(sys.argv[1]))))
