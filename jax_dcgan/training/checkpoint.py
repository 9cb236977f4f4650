"""Checkpoints: orbax step directories holding the train state, the config that made it,
and the loop's progress (what the loop knows beyond the state: the best diversity
seen so far, the steps per dispatch it chose).

`convert` writes the same format as `train`, so `sample`, `eval` and `--resume`
take either. Orbax writes each step into a temporary directory and renames it
when complete, so a killed process never leaves a half-written step behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from jax_dcgan.common import runtime
from jax_dcgan.common.errors import UserError, summarize
from jax_dcgan.config import Config, from_known_fields
from jax_dcgan.model.step import TrainState, create_train_state, raw_key

__all__ = ["Checkpoints", "Progress", "load_checkpoint", "restart_advice"]


@dataclasses.dataclass
class Progress:
    """What a checkpoint keeps beside the state for an exact resume: the steps per call the
    run chose and for which devices, and the best diversity seen so far."""
    steps_per_dispatch: int = 0
    platform: str = ""
    device_count: int = 0
    best_diversity: float = 0.0


RUN_SUBDIR = "checkpoints"


class Checkpoints:
    """The checkpoints of one run: save every so often, keep the last few, restore any."""

    def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                               read_only=read_only)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, state: TrainState, cfg: Config, progress: Progress | None = None) -> None:
        """Save `state` (one device's copy) under its step; returns once it is safe to donate.

        The files are written in the background; a failure shows at the next save or
        `wait`, as a UserError that names what is still intact.
        """
        step = int(state.step)
        if step in self._manager.all_steps():
            return
        with self._reporting(f"step {step}"):
            self._manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(raw_key(state)),
                config=ocp.args.JsonSave(cfg.to_dict()),
                progress=ocp.args.JsonSave(dataclasses.asdict(progress or Progress()))))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None = None, sharding: jax.sharding.Sharding | None = None
                ) -> tuple[TrainState, Config, Progress]:
        """(state, config, progress) at `step` (default: the latest), the state on `sharding`
        (default: the first local device; naming it lets a checkpoint of a multi-process run
        load in one process)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"There is no complete checkpoint in {self.directory!r}.")
        path = os.path.join(self.directory, str(step))
        try:
            items = {"config": ocp.args.JsonRestore()}
            if os.path.isdir(os.path.join(path, "progress")):
                items["progress"] = ocp.args.JsonRestore()
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            cfg = Config.from_dict(restored.config)
            progress = from_known_fields(Progress, restored.progress if "progress" in items
                                         else {})
            _check_readable(os.path.join(path, "state"))
        except UserError:
            raise
        except Exception as e:  # orbax and tensorstore raise many types for damaged files
            raise _unreadable(path, summarize(e)) from None
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        with runtime.float64_mode(cfg.dtype):
            abstract = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                _stored_shapes(cfg))
            try:
                state = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract))).state
            except Exception as e:  # readable but not this configuration's tree
                raise _unreadable(path, _first_mismatch(os.path.join(path, "state"), cfg)
                                  or summarize(e)) from None
        return state.replace(rng=jax.random.wrap_key_data(state.rng)), cfg, progress

    def wait(self) -> None:
        with self._reporting("the last checkpoint"):
            self._manager.wait_until_finished()

    @contextlib.contextmanager
    def _reporting(self, what: str):
        try:
            yield
        except Exception as e:  # OSError (disk full, permissions) or orbax's wrappers of it
            with contextlib.suppress(Exception):  # let earlier saves finish, to list them
                self._manager.wait_until_finished()
            intact = [s for s in self._manager.all_steps() if os.path.isdir(
                os.path.join(self.directory, str(s)))]
            kept = f"the checkpoint of step {max(intact)} is intact" if intact else \
                "no earlier checkpoint exists"
            raise UserError(
                f"Could not write {what} to {self.directory} ({summarize(e)}); {kept}. Free "
                "space or fix the permissions, then continue with --resume.") from None

    def close(self) -> None:
        """Finish the saves under way (reporting a failure as `wait` does), then release."""
        try:
            self.wait()
        finally:
            self._manager.close()


def _stored_shapes(cfg: Config) -> TrainState:
    """The shapes and dtypes a checkpoint of `cfg` holds."""
    return jax.eval_shape(lambda: raw_key(create_train_state(cfg.step_config(), cfg.seed)))


def restart_advice(directory: str, processes: int) -> str:
    """What every process of a run that lost one should do, from what is on disk now
    (orbax renames a step's directory into place only once it is complete)."""
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()] \
        if os.path.isdir(directory) else []
    if not steps:
        return (f"No checkpoint was written yet: start all {processes} processes again with "
                "--resume, which starts the run over in the same directory.")
    return (f"The last intact checkpoint is step {max(steps)} in {directory}: start all "
            f"{processes} processes again with --resume to continue from it.")


def _unreadable(path: str, reason: str) -> UserError:
    return UserError(
        f"The checkpoint {path!r} could not be read ({reason}). It is damaged, partly "
        "written, or was written by another version or configuration than its config; use "
        "an earlier step, or train again.")


def _check_readable(directory: str) -> None:
    """Read every stored chunk once, synchronously, so damage shows as one clean exception.

    Orbax restores chunks concurrently and closes its event loop at the first failure;
    tensorstore then prints a traceback for every chunk still in flight.
    """
    store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{directory}/"}).result()
    for key in store.list().result():
        store.read(key).result()


def _first_mismatch(directory: str, cfg: Config) -> str | None:
    """'<tensor> is stored as (..) but this configuration has (..)', or None if shapes agree."""
    try:
        with ocp.StandardCheckpointer() as reader:
            stored = reader.metadata(directory).item_metadata
        shapes = {m.name: tuple(m.shape) for m in jax.tree.leaves(stored)}
    except Exception:  # no readable metadata: the generic message will do
        return None
    abstract = _stored_shapes(cfg)
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        name = ".".join(str(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))))
                        for k in path)
        if name not in shapes:
            return f"tensor {name} is missing"
        if shapes[name] != tuple(leaf.shape):
            return (f"tensor {name} is stored with shape {shapes[name]} but its configuration "
                    f"gives {tuple(leaf.shape)}")
    return None


def locate(path: str) -> tuple[str, int | None]:
    """(checkpoints directory, step or None for the latest) for a run, checkpoints or step dir."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise UserError(
            f"No checkpoint at {path!r}: give a run directory (from `jax-dcgan train`), its "
            f"`{RUN_SUBDIR}` directory, one step inside it, or the output of `jax-dcgan convert`.")
    if os.path.isdir(os.path.join(path, RUN_SUBDIR)):
        return os.path.join(path, RUN_SUBDIR), None
    if os.path.isdir(os.path.join(path, "state")) and os.path.basename(path).isdigit():
        return os.path.dirname(path), int(os.path.basename(path))
    return path, None


def load_checkpoint(path: str) -> tuple[TrainState, Config]:
    """The train state and config stored at `path` (see `locate`). A float64 run's come
    back in float32, as sampling, evaluation and the lecture's .pt format use them."""
    directory, step = locate(path)
    state, cfg, _ = Checkpoints(directory, read_only=True).restore(step)
    if cfg.dtype == "float64":
        state = jax.tree.map(lambda a: a.astype(np.float32)
                             if jax.dtypes.issubdtype(a.dtype, np.floating) else a, state)
        cfg = cfg.replace(dtype="float32")
    return state, cfg
