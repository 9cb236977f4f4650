"""One typed configuration for model, optimiser, data and loop, plus named presets.

Every field of `Config` becomes a `jax-dcgan train` flag (see `cli.py`), so the help
text lives here, next to the default it explains. The networks take only a
`ModelConfig` (`Config.model`): what they compute, nothing about data or the loop; the
training step a `StepConfig` (`Config.step_config()`). Both hold the run's `Numerics`, where
`--conv-impl auto` is decided once for the devices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from jax_dcgan.common.errors import UserError, summarize

__all__ = ["BENCH_VARIANTS", "BN_STATS", "CONV_BACKENDS", "CONV_IMPLS", "Config", "DTYPES",
           "FID_MODES", "INT64", "ModelConfig", "Numerics", "PRESETS", "StepConfig", "check_seed",
           "conv_backend", "flag", "from_known_fields", "preset", "read_config_file"]


def _field(default: Any, help: str, **choices: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **choices})


CONV_IMPLS = ("auto", "matmul", "xla")  # the flag's choices
CONV_BACKENDS = ("matmul", "xla")  # what runs
DTYPES = ("float32", "bfloat16", "float64")
INT64 = 2 ** 63  # integers are signed 64-bit, as NumPy and JAX hold them
SEEDS = 2 ** 32  # JAX's random keys hold 32 bits of a seed (without its 64-bit mode)


def check_seed(name: str, value: int) -> None:
    """A seed JAX turns into a key of its own: a larger one would repeat a smaller one's run."""
    if not 0 <= value < SEEDS:
        raise UserError(f"--{flag(name)} must lie in [0, {SEEDS}) (JAX's random keys hold "
                        f"32 bits of it), got {value}.")
FID_MODES = ("clean", "legacy_tensorflow")  # see inception.py
BN_STATS = ("batch", "running")  # what BatchNorm normalises with when sampling (`--bn`)
# The variants of `jax-dcgan bench` (bench.py), named here so that the command line's help
# needs no JAX.
BENCH_VARIANTS = ("torch", "torch-compiled", "jax-jit-matmul", "jax-jit-xla", "jax-pmap",
                  "jax-fused-matmul", "jax-fused-xla", "jax-train-loop")


def conv_backend(requested: str, platform: str) -> str:
    """The convolutions a `--conv-impl` runs on `platform`: `auto` is matmul on CPUs, xla on
    GPUs and TPUs."""
    if requested != "auto":
        return requested
    return "matmul" if platform == "cpu" else "xla"


@dataclasses.dataclass(frozen=True)
class Numerics:
    """How the networks compute: the convolution backend (decided for the devices, never
    `auto`) and the compute dtype."""
    conv: str
    dtype: str

    def __post_init__(self):
        if self.conv not in CONV_BACKENDS:
            raise ValueError(f"conv must be one of {CONV_BACKENDS}, not {self.conv!r} "
                             "(Config.numerics decides `auto`)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What the generator and discriminator compute; hashable, so a jitted function can be
    specialised on it without recompiling when unrelated run settings change. Made from a
    `Config` (`Config().model`), which holds the defaults and checks the values."""
    latent_dim: int
    gen_features: int
    dis_features: int
    channels: int
    image_size: int
    gen_activation: str
    gen_slope: float
    dis_slope: float
    weight_init: str
    numerics: Numerics

    @property
    def num_upsamplings(self) -> int:
        """Stride-2 layers between 4x4 and the image size (4 for 64x64, as in the lecture)."""
        return int(math.log2(self.image_size)) - 2


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the training step computes besides the networks: Adam's settings for G and D and
    the lecture's step variants; hashable, as `ModelConfig`."""
    model: ModelConfig
    lr_g: float
    lr_d: float
    beta1: float
    beta2: float
    eps: float
    fresh_noise: bool
    label_flip: float
    label_smoothing: float
    ema_decay: float


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run: each field is a `jax-dcgan train` flag, its help beside it."""
    # Data.
    dataset: str = _field("synthetic", "image source", choices=("synthetic", "folder", "celeb_a"))
    data_dir: str = _field("", "folder of images (--dataset folder) or tfds data dir (celeb_a)")
    split: str = _field("train", "dataset split", choices=("train", "valid", "test", "all"))
    crop_size: int = _field(160, "center crop before resizing (0: the largest centered square)")
    image_size: int = _field(64, "side of the square images (a power of two, >= 16)")
    num_synthetic: int = _field(20000, "number of built-in synthetic faces")
    data_seed: int = _field(42, "seed of the synthetic faces (apart from --seed, so that "
                                "runs with other seeds learn from the same faces)")
    cache_dir: str = _field("", "where decoded datasets and compiled programs are cached "
                                "(default ~/.cache/jax_dcgan)")
    data_on_device: str = _field(
        "auto", "keep the whole dataset on the accelerator", choices=("auto", "yes", "no"))

    # Model.
    latent_dim: int = _field(100, "size of the noise vector")
    gen_features: int = _field(64, "generator width (channels of its last hidden layer)")
    dis_features: int = _field(64, "discriminator width (channels of its first layer)")
    channels: int = _field(3, "colour channels of the images")
    gen_activation: str = _field(
        "leaky_relu", "generator hidden activation", choices=("leaky_relu", "relu"))
    gen_slope: float = _field(0.01, "negative slope of the generator's LeakyReLU")
    dis_slope: float = _field(0.01, "negative slope of the discriminator's LeakyReLU")
    weight_init: str = _field(
        "torch", "weight init: PyTorch's defaults or DCGAN's N(0, 0.02)",
        choices=("torch", "dcgan"))
    dtype: str = _field(
        "float32", "compute dtype: bfloat16 keeps parameters, optimiser state and BatchNorm "
        "in float32; float64 computes and keeps everything in float64 (JAX's x64 mode for "
        "the run; not on TPUs)",
        choices=DTYPES)
    conv_impl: str = _field(
        "auto", "convolutions: matmul (im2col + matrix products, fastest on CPUs), xla (XLA's "
        "native convolutions: cuDNN on GPUs, the MXU on TPUs), or auto (matmul on CPUs, xla "
        "elsewhere); the maths is the same", choices=CONV_IMPLS)

    # Optimiser (Adam for both networks).
    lr_g: float = _field(2e-4, "generator learning rate")
    lr_d: float = _field(2e-4, "discriminator learning rate")
    beta1: float = _field(0.5, "Adam beta1")
    beta2: float = _field(0.999, "Adam beta2")
    eps: float = _field(1e-8, "Adam epsilon")

    # Training-step variants the lecture discusses (all off in the `seed` preset).
    fresh_noise: bool = _field(False, "draw new noise for the generator step")
    label_flip: float = _field(0.0, "probability of flipping each discriminator label")
    label_smoothing: float = _field(0.0, "one-sided smoothing: real label = 1 - this")
    ema_decay: float = _field(0.0, "EMA of generator weights for sampling (0: off)")

    # Loop.
    batch_size: int = _field(128, "global batch size (split evenly over devices)")
    epochs: int = _field(20, "epochs to train (ignored when --steps is set)")
    steps: int = _field(0, "total training steps (0: use --epochs)")
    seed: int = _field(42, "seed for initialisation, noise and data order")
    log_every: int = _field(100, "steps between console lines and metric flushes")
    checkpoint_every: int = _field(1000, "steps between checkpoints (0: off; one is always "
                                         "saved at the end)")
    checkpoint_minutes: float = _field(
        10.0, "also checkpoint when this many minutes have passed since the last one (0: off)")
    keep_checkpoints: int = _field(3, "how many recent checkpoints to keep")
    grid_updates_stats: bool = _field(
        True, "each epoch's grid is a train-mode pass of G, which also moves G's BatchNorm "
              "running statistics and count, as the lecture's loop does (so model.pt equals "
              "what it saves); off: grids leave the model untouched")
    eval_every: int = _field(0, "epochs between SWD/FID evaluations (0: off)")
    eval_samples: int = _field(2048, "images generated for each evaluation")
    fid_mode: str = _field(
        "clean", "how FID's network sees images: clean (PIL bicubic to 299, as clean-fid "
        "recommends) or legacy_tensorflow (TF1 bilinear, as TTUR and StyleGAN2-ADA)",
        choices=FID_MODES)
    devices: int = _field(0, "local devices to use (0: all)")
    steps_per_dispatch: int = _field(
        0, "training steps fused into one device call, at most the steps between epoch ends "
           "and checkpoints (0: chosen from the measured step time so that a call lasts about "
           "50 ms, and kept for the run)")
    compilation_cache: bool = _field(
        True, "keep compiled programs in the cache dir, so that a resume or a second run "
              "does not compile again")
    tensorboard: bool = _field(True, "write TensorBoard event files to <out>/tensorboard")
    on_nonfinite: str = _field(
        "stop", "when losses turn NaN/inf: stop, or roll back to the last checkpoint and go on "
        "with a new noise stream", choices=("stop", "rollback"))

    def validate(self) -> "Config":
        """Raise a UserError naming the first bad field; return self for chaining."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise UserError(
                    f"--{flag(f.name)} is {value!r}, which is not one of {', '.join(choices)}.")
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"--{flag(f.name)} must be a finite number, got {value}.")
            if isinstance(value, int) and not isinstance(value, bool) and not (
                    -INT64 <= value < INT64):
                raise UserError(f"--{flag(f.name)} {value} is beyond a 64-bit integer.")
        positive = ("image_size", "num_synthetic", "latent_dim", "gen_features",
                    "dis_features", "channels", "lr_g", "lr_d", "eps", "batch_size", "epochs",
                    "log_every", "keep_checkpoints", "eval_samples")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{flag(name)} must be positive, got {getattr(self, name)}.")
        for name in ("crop_size", "steps", "devices", "eval_every", "gen_slope", "dis_slope",
                     "ema_decay", "label_flip", "label_smoothing", "checkpoint_every",
                     "checkpoint_minutes", "steps_per_dispatch", "data_seed"):
            if getattr(self, name) < 0:
                raise UserError(f"--{flag(name)} must not be negative, got {getattr(self, name)}.")
        check_seed("seed", self.seed)
        for name in ("beta1", "beta2", "ema_decay", "label_flip", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{flag(name)} must lie in [0, 1), got {getattr(self, name)}.")
        if self.image_size < 16 or self.image_size & (self.image_size - 1):
            raise UserError(
                f"--image-size must be a power of two of at least 16, got {self.image_size}: "
                "the networks double (halve) the resolution once per layer from (to) 4x4.")
        if self.dataset == "folder" and not self.data_dir:
            raise UserError("--dataset folder needs --data-dir DIR, a directory of images.")
        return self

    def numerics(self, platform: str | None = None) -> Numerics:
        """The convolutions and dtype of a run on `platform` (default: JAX's default
        backend); the loop asks once, for its devices."""
        if platform is None:
            import jax
            platform = jax.default_backend()
        return Numerics(conv_backend(self.conv_impl, platform), self.dtype)

    def model_config(self, numerics: Numerics | None = None) -> ModelConfig:
        """What the networks compute with `numerics` (default: `self.numerics()`, which
        starts JAX's backends to ask for the default one)."""
        return self._subset(ModelConfig, numerics=numerics or self.numerics())

    def step_config(self, numerics: Numerics | None = None) -> StepConfig:
        """What the training step computes with `numerics` (default as `model_config`)."""
        return self._subset(StepConfig, model=self.model_config(numerics))

    def _subset(self, cls: type, **given: Any) -> Any:
        """`cls` with `given` and, for its other fields, this configuration's values."""
        return cls(**given, **{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)
                               if f.name not in given})

    @property
    def model(self) -> ModelConfig:
        """The networks' configuration on JAX's default backend (`model_config()`)."""
        return self.model_config()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        return from_known_fields(cls, d)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def from_known_fields(cls: type, d: dict[str, Any]) -> Any:
    """A dataclass from the fields `d` names; others (e.g. of another version, in a saved
    file) are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


def flag(name: str) -> str:
    """The command-line flag of a field, without its dashes: `batch_size` -> `batch-size`."""
    return name.replace("_", "-")


# Named starting points; flags override them.
PRESETS: dict[str, dict[str, Any]] = {
    # The lecture's run: CelebA, batch 128, 20 epochs, Adam 2e-4 (0.5, 0.999), seed 42.
    "seed": dict(dataset="celeb_a"),
    # The lecture's failing run: ReLU in G, LeakyReLU(0.2) in D; collapses after a while.
    "seed-relu": dict(dataset="celeb_a", gen_activation="relu", dis_slope=0.2),
    # Radford et al. (2016): ReLU in G, LeakyReLU(0.2) in D, N(0, 0.02) initialisation.
    "dcgan-paper": dict(dataset="celeb_a", gen_activation="relu", dis_slope=0.2,
                        weight_init="dcgan"),
    # The lecture's algorithm, small enough for a 2-core CPU: about five minutes to faces.
    "demo": dict(dataset="synthetic", num_synthetic=8192, image_size=32, gen_features=32,
                 dis_features=32, batch_size=64, epochs=25, checkpoint_every=640),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"Unknown preset {name!r}. Known presets: {', '.join(PRESETS)}.")
    return Config(**PRESETS[name])


def read_config_file(path: str) -> dict[str, Any]:
    """The Config fields in a JSON or YAML file (e.g. a run's config.json), checked by name
    and type; the caller applies them over a preset and under the flags."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"Could not read the config file {path!r} ({e.strerror}).") from None
    except UnicodeDecodeError:
        raise UserError(f"The config file {path!r} is not text; give a JSON or YAML file "
                        "(e.g. a run's config.json).") from None
    if os.path.splitext(path)[1].lower() in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserError(f"{path!r} is not valid YAML ({summarize(e)}).") from None
    else:
        try:
            values = json.loads(text)
        except ValueError as e:
            raise UserError(f"{path!r} is not valid JSON ({e}).") from None
    if not isinstance(values, dict):
        raise UserError(f"{path!r} must hold a mapping of Config fields to values, "
                        f"not {type(values).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"{path!r} sets {', '.join(map(repr, unknown))}, which "
                        f"{'is not a field' if len(unknown) == 1 else 'are not fields'} of the "
                        "configuration; the fields are the train flags (jax-dcgan train --help).")
    for name, value in values.items():
        kind = type(fields[name].default)
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[name], ok = float(value), True
        if not ok:
            expected = {int: "an integer", float: "a number", str: "a string",
                        bool: "true or false"}[kind]
            raise UserError(f"{path!r}: {name} is {value!r}, but --{flag(name)} takes "
                            f"{expected}.")
    return values
