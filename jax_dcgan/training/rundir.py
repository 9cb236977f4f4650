"""A run's directory: what it holds, the checks before a run writes to it, and the record
of each start.

    config.json       the configuration (also what `--config` reads back)
    run.json          one entry per start: versions, devices, git commit, choices made
    metrics.jsonl     one record per step, per epoch end and per evaluation
    samples/          the fixed-noise grid of every epoch
    losses.png, quality.png, tensorboard/, checkpoints/, model.pt
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

from jax_dcgan.common.errors import UserError, summarize
from jax_dcgan.common.files import write_text
from jax_dcgan.config import Config, flag

__all__ = ["RunDir", "environment", "prepare", "record_start"]

# Fields a resumed run may change: how long and how it runs, not what it computes.
RESUMABLE_CHANGES = ("epochs", "steps", "log_every", "checkpoint_every", "checkpoint_minutes",
                     "keep_checkpoints", "devices", "steps_per_dispatch", "data_on_device",
                     "cache_dir", "eval_every", "eval_samples", "on_nonfinite", "conv_impl",
                     "compilation_cache", "tensorboard")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "torch",
            "tensorboardX")


@dataclasses.dataclass(frozen=True)
class RunDir:
    """A run's output directory and the paths of what it holds."""
    path: str

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def metrics(self) -> str:
        return self.file("metrics.jsonl")

    @property
    def samples(self) -> str:
        return self.file("samples")

    @property
    def checkpoints(self) -> str:
        return self.file("checkpoints")

    @property
    def tensorboard(self) -> str:
        return self.file("tensorboard")


def prepare(out: str, cfg: Config, resume: bool) -> RunDir:
    """Refuse to mix two configurations in one directory; write config.json for a new run."""
    run = RunDir(os.path.abspath(out))
    if os.path.exists(run.path) and not os.path.isdir(run.path):
        raise UserError(f"--out {out!r} is a file, not a directory; choose a directory.")
    config_path = run.file("config.json")
    if os.path.exists(config_path):
        previous = _read_config(config_path)
        if not resume:
            raise UserError(f"{out!r} already holds a training run. Continue it with --resume, "
                            "or choose another --out so that nothing in it is overwritten.")
        for f in dataclasses.fields(Config):
            ours, theirs = getattr(cfg, f.name), getattr(previous, f.name)
            if f.name not in RESUMABLE_CHANGES and ours != theirs:
                raise UserError(
                    f"--resume: the run in {out!r} was made with --{flag(f.name)} {theirs!r}, "
                    f"not {ours!r}. A resumed run must compute the same thing; only these may "
                    f"change: {', '.join(RESUMABLE_CHANGES)}.")
    elif os.path.isdir(run.path) and os.listdir(run.path):
        raise UserError(f"{out!r} is not empty and holds no training run; choose another --out.")
    os.makedirs(run.samples, exist_ok=True)
    write_text(config_path, cfg.to_json())
    return run


def _read_config(path: str) -> Config:
    try:
        with open(path) as f:
            return Config.from_dict(json.load(f))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{path} is unreadable ({summarize(e)}); move the directory aside or "
                        "fix it.") from None


def record_start(run: RunDir, entry: dict) -> None:
    """Add this start (step, choices, environment) to run.json."""
    path = run.file("run.json")
    starts = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                starts = json.load(f).get("starts", [])
        except (OSError, ValueError, AttributeError):
            starts = []  # a damaged record of earlier starts is not worth stopping for
    write_text(path, json.dumps({"starts": starts + [entry]}, indent=2))


def environment(devices: list) -> dict:
    """Versions, Python, platform, devices and the git commit, for run.json."""
    import jax

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions, "python": sys.version.split()[0], "platform": platform.platform(),
        "host": platform.node(), "processes": jax.process_count(),
        "devices": [getattr(d, "device_kind", d.platform) for d in devices],
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of this package's checkout ('+' if it has uncommitted changes), if any."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode:
        return None
    return commit.stdout.strip() + ("+" if dirty.stdout.strip() else "")
