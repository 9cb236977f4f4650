"""`jax-dcgan train | sample | convert | eval | bench | compile | parity | data prepare`.

Every bad input ends as one paragraph on stderr and exit status 2 (a UserError),
never a traceback; a run that stops early exits with its own status. Heavy
modules are imported inside the commands, so `--help`, `--version` and argument
errors are instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from jax_dcgan import __version__
from jax_dcgan.common import runtime
from jax_dcgan.common.errors import TrainingStopped, UserError, error_line, summarize
from jax_dcgan.config import (BENCH_VARIANTS, BN_STATS, CONV_BACKENDS, CONV_IMPLS, INT64, PRESETS,
                              Config, check_seed, flag, preset, read_config_file)

__all__ = ["main"]

# The comparisons of `jax-dcgan parity` (jax_dcgan.tools.parity.CHECK_NAMES, without importing it).
PARITY_CHECKS = ["architecture"] + [f"{impl}-{check}" for impl in CONV_BACKENDS for check in (
    "layers", "forward", "gradients", "one-step", "many-steps")] + [
    "matmul-vs-xla", "multi-device", "default-precision"]
# Subcommands that run XLA at length, for which the process restarts with huge pages.
HEAVY_COMMANDS = ("train", "bench", "eval", "parity")


def integer(text: str) -> int:
    """argparse's int, limited to a signed 64-bit integer: what NumPy and JAX take."""
    value = int(text)
    if not -INT64 <= value < INT64:
        raise argparse.ArgumentTypeError(f"{text} is beyond a 64-bit integer")
    return value


def _add_config_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None,
                      with_preset: bool = True) -> None:
    """One flag per Config field (or the named ones), defaulting to 'not given'."""
    if with_preset:
        parser.add_argument("--preset", choices=sorted(PRESETS),
                            help="start from a named configuration; flags override it")
        parser.add_argument("--config", metavar="FILE",
                            help="a JSON or YAML file of configuration fields (e.g. a run's "
                                 "config.json), applied over --preset; flags override it")
    fields = [f for f in dataclasses.fields(Config) if only is None or f.name in only]
    parser.set_defaults(config_fields=tuple(f.name for f in fields))
    for f in fields:
        help_text = f"{f.metadata['help']} (default: {f.default}, or the preset's)"
        if f.type in ("bool", bool):
            parser.add_argument(f"--{flag(f.name)}", action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            kind = {"int": integer, "float": float, "str": str}[str(f.type)]
            parser.add_argument(f"--{flag(f.name)}", type=kind, default=None, help=help_text,
                                choices=f.metadata.get("choices"))


def config_from_args(args: argparse.Namespace) -> Config:
    """Preset, then config file, then flags."""
    cfg = preset(args.preset) if getattr(args, "preset", None) else Config()
    if getattr(args, "config", None):
        cfg = cfg.replace(**read_config_file(args.config))
    given = {name: getattr(args, name) for name in args.config_fields
             if getattr(args, name) is not None}
    return cfg.replace(**given).validate()


def _positive(args: argparse.Namespace, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise UserError(f"--{flag(name)} must be at least {minimum}, got {value}.")


def _output_paths(args: argparse.Namespace) -> None:
    """Before any work: --hlo-dir names a directory (or nothing yet), --json-out a file in a
    folder this process can write."""
    if args.hlo_dir and os.path.exists(args.hlo_dir) and not os.path.isdir(args.hlo_dir):
        raise UserError(f"--hlo-dir {args.hlo_dir!r} is a file; give a directory (it is "
                        "created if missing).")
    if args.json_out and os.path.isdir(args.json_out):
        raise UserError(f"--json-out {args.json_out!r} is a directory; give the name of a "
                        "file to write.")
    folder = os.path.dirname(os.path.abspath(args.json_out or "."))
    if args.json_out and os.path.isdir(folder) and not os.access(folder, os.W_OK):
        raise UserError(f"--json-out {args.json_out!r}: its folder {folder!r} is not "
                        "writable.")


def _load_noise(path: str, latent_dim: int, num: int | None):
    import numpy as np

    try:
        noise = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"Could not read the noise file {path!r} as a .npy array ({e}).") from None
    if noise.ndim == 4 and noise.shape[2:] == (1, 1):  # PyTorch's (N, latent, 1, 1)
        noise = noise[:, :, 0, 0]
    if noise.ndim != 2 or noise.shape[1] != latent_dim or not np.issubdtype(noise.dtype, np.floating):
        raise UserError(
            f"The noise in {path!r} has shape {noise.shape} and dtype {noise.dtype}; this "
            f"generator needs a float array of shape (N, {latent_dim}) (or (N, {latent_dim}, 1, 1)).")
    if num is not None and num != noise.shape[0]:
        raise UserError(f"--num {num} disagrees with the {noise.shape[0]} noise vectors in "
                        f"{path!r}; leave out --num or give a matching file.")
    return noise.astype(np.float32)


def cmd_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from jax_dcgan.outputs import pictures, sample
    from jax_dcgan.training import checkpoint
    _positive(args, "num", "interpolate", "between")
    check_seed("seed", args.seed)
    animation = _check_walk_flags(args)
    state, cfg = checkpoint.load_checkpoint(args.checkpoint)
    noise = _load_noise(args.noise, cfg.latent_dim, args.num) if args.noise else None
    points = len(noise) if noise is not None else args.interpolate or args.num or 64
    if args.interpolate and (points != args.interpolate or points < 2):
        raise UserError(f"--interpolate {args.interpolate} walks between that many latent "
                        "points, at least 2" + (f"; {args.noise!r} holds {points}."
                                                if args.noise else "."))
    between = args.between if args.between is not None else pictures.BETWEEN
    count = (points - 1) * (between + 1) + 1 if args.interpolate else points
    runtime.check_images_fit(count, cfg.image_size, cfg.channels, asked=(
        f"--interpolate {points} --between {between}" if args.interpolate else ""))
    if noise is None:
        noise = np.asarray(sample.draw_noise(cfg.latent_dim, points, args.seed))
    if args.interpolate:
        noise = pictures.interpolation_noise(noise, between + 1)
    # A walk's images are each their own vector's (running statistics), not a function of
    # the others in one batch; grids use the batch's, as the lecture's do.
    bn = args.bn or ("running" if args.interpolate else "batch")
    images = np.asarray(sample.generate(cfg.model, sample.sampling_generator(state), noise, bn))
    if args.interpolate:
        pictures.save_interpolation(images, args.out, animation)
    else:
        sample.save_png(sample.make_grid(images), args.out)
    if args.save_array:
        np.save(args.save_array, images.astype(np.float32))
    written = f"{args.out} and {animation}" if args.interpolate else args.out
    print(f"wrote {len(images)} {'images of a walk' if args.interpolate else 'samples'} to "
          f"{written}" + (f" and {args.save_array}" if args.save_array else ""))


def _check_walk_flags(args: argparse.Namespace) -> str | None:
    """Before any work: the flags of --interpolate agree, and the animation written beside
    --out (its name with .webp) is a file of its own. Returns the animation's path."""
    if not args.interpolate:
        if args.between is not None:
            raise UserError("--between sets the images between two points of "
                            "--interpolate; give --interpolate N too.")
        return None
    if args.num:
        raise UserError("--interpolate N draws N points and the images between them; leave "
                        "out --num.")
    animation = os.path.splitext(args.out)[0] + ".webp"
    if os.path.abspath(animation) == os.path.abspath(args.out):
        raise UserError(f"--out {args.out!r} would be overwritten by the walk's animation "
                        "(written beside it as .webp); give the strip a .png name.")
    if os.path.isdir(animation):
        raise UserError(f"The walk's animation goes to {animation!r}, which is a directory; "
                        "give --out another name.")
    return animation


def cmd_animate(args: argparse.Namespace) -> None:
    from jax_dcgan.outputs import pictures
    if not 1 <= args.frame_ms <= 60_000:
        raise UserError(f"--frame-ms must lie in 1..60000 (a minute a frame at most), got "
                        f"{args.frame_ms}.")
    _positive(args, "every")
    out = args.out or os.path.join(args.run, pictures.ANIMATION)
    frames = pictures.animate_grids(os.path.join(args.run, "samples"), out, args.frame_ms,
                                    args.every)
    print(f"wrote {frames} epoch grids as one animation to {out}")


def cmd_convert(args: argparse.Namespace) -> None:
    from jax_dcgan.model import convert
    from jax_dcgan.training import checkpoint
    if args.from_torch:
        import jax
        import numpy as np

        from jax_dcgan.model.step import create_train_state

        if os.path.isfile(args.out) or (os.path.isdir(args.out) and os.listdir(args.out)):
            raise UserError(f"{args.out!r} exists (a file, or a directory that is not empty); "
                            "convert into a new directory so that nothing is overwritten.")
        state_dict = convert.load_torch_file(args.from_torch)
        base = preset(args.preset) if args.preset else Config()
        cfg = convert.config_for_state_dict(state_dict, base).validate()
        variables = convert.from_state_dict(state_dict, cfg.model)
        variables = jax.tree.map(
            lambda a: a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a, variables)
        checkpoints = checkpoint.Checkpoints(args.out)
        checkpoints.save(create_train_state(cfg.step_config(), cfg.seed, variables), cfg)
        checkpoints.wait()
        print(f"wrote a step-0 checkpoint of {args.from_torch} to {args.out} "
              f"(latent {cfg.latent_dim}, widths {cfg.gen_features}/{cfg.dis_features}, "
              f"{cfg.image_size}x{cfg.image_size})")
    else:
        state, cfg = checkpoint.load_checkpoint(args.to_torch)
        convert.save_torch_file(convert.to_state_dict(
            {"generator": state.generator, "discriminator": state.discriminator}, cfg.model),
            args.out)
        print(f"wrote the lecture-format state dict of {args.to_torch} to {args.out}")


def cmd_eval(args: argparse.Namespace) -> None:
    import json

    from jax_dcgan.quality import metrics
    from jax_dcgan.training import checkpoint
    _positive(args, "num", minimum=2)
    _positive(args, "image_size")
    check_seed("seed", args.seed)
    _check_eval_sources(args)
    if not args.no_fid:
        metrics.check_inception(args.inception)  # before any work: say at once what is missing
    reference = metrics.Reference.load(args.real) if _is_statistics(args.real) else None
    state, cfg = (checkpoint.load_checkpoint(args.checkpoint) if args.checkpoint
                  else (None, Config()))
    cfg = cfg.replace(**{k: getattr(args, k) for k in ("dataset", "data_dir", "split",
                                                        "crop_size", "num_synthetic",
                                                        "cache_dir", "image_size", "fid_mode")
                         if getattr(args, k) is not None})
    if reference and reference.mode not in (None, cfg.fid_mode):
        raise UserError(f"{args.real!r} holds statistics of FID mode {reference.mode}; "
                        f"compare in the same mode (--fid-mode {reference.mode}).")
    fake, real = _eval_images(args, cfg, state, with_real=reference is None)
    network = None if args.no_fid else metrics.inception_network(args.inception, cfg.fid_mode)
    if reference:  # statistics alone: FID (KID where they hold features), no SWD
        result = {"num": len(fake), **reference.scores(network, fake, args.seed)}
    else:
        result = metrics.evaluate(real, fake, args.seed, network)
    if args.figure:  # once the scores stand: a failure before leaves an old figure as it was
        from jax_dcgan.outputs import pictures, sample
        sample.save_png(pictures.real_beside_fake(real[:sample.GRID_IMAGES],
                                                  fake[:sample.GRID_IMAGES]), args.figure)
    if state is not None:
        result["step"] = int(state.step)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    swd = (f"SWD {result['swd']:.2f} (x1e3; per level "
           f"{', '.join(f'{k}px {v:.1f}' for k, v in result['swd_levels'].items())})"
           if "swd" in result else "no SWD (--real is statistics, not images)")
    what = f"step {result['step']}" if state is not None else args.fake
    print(f"{what}, {result['num']} images: {swd}" + metrics.inception_summary(result))


def _is_statistics(real: str | None) -> bool:
    """Whether --real names reference statistics rather than a folder of images."""
    return bool(real) and not os.path.isdir(real) and real.lower().endswith(".npz")


def _eval_images(args: argparse.Namespace, cfg: Config, state, with_real: bool):
    """(images to score, real images or None): a folder's or the checkpoint's samples, and
    a folder's or the dataset's, both through the lecture's crop and resize."""
    import numpy as np

    from jax_dcgan.data import dataset
    from jax_dcgan.outputs import sample
    def folder(path: str) -> np.ndarray:  # cached as a dataset
        return dataset.load_dataset(cfg.replace(dataset="folder", data_dir=path, split="all")
                                 .validate())

    real = None
    if with_real:
        real = folder(args.real) if args.real else dataset.load_dataset(cfg.validate())
    if state is None:
        fake = folder(args.fake)[:args.num]
    else:
        num = args.num if real is None else min(args.num, len(real))
        runtime.check_images_fit(num, cfg.image_size, cfg.channels)
        fake = np.asarray(sample.generate_images(
            cfg.model, sample.sampling_generator(state), num, args.seed, cfg.batch_size,
            bn=args.bn))
    if len(fake) < 2 or (real is not None and len(real) < 2):
        raise UserError(f"eval compares sets of at least 2 images; got {len(fake)} to score"
                        + ("." if real is None else f" and {len(real)} real ones."))
    return fake, real


def _check_eval_sources(args: argparse.Namespace) -> None:
    """Before any work: folders that exist, and one source of real images."""
    if args.fake is not None and not os.path.isdir(args.fake):
        raise UserError(f"--fake {args.fake!r} is not a directory; give a folder of "
                        "JPEG/PNG/WebP images.")
    if args.real is not None and not (os.path.isdir(args.real) or _is_statistics(args.real)):
        raise UserError(f"--real {args.real!r} is neither a directory of images nor an .npz "
                        "of reference statistics.")
    if _is_statistics(args.real) and not os.path.isfile(args.real):
        raise UserError(f"--real {args.real!r} does not exist; give a folder of images, or "
                        "reference statistics that eval or clean-fid wrote.")
    if _is_statistics(args.real) and args.figure:
        raise UserError("--figure shows real images beside the scored ones, and --real gives "
                        "statistics; give a folder of images, or the dataset's flags.")
    if _is_statistics(args.real) and args.no_fid:
        raise UserError("--real gives reference statistics, which serve FID and KID only; "
                        "with --no-fid there is nothing to compute.")
    if args.real is not None and (args.dataset or args.data_dir):
        raise UserError("--real gives the real images; it replaces --dataset and "
                        "--data-dir, so give one or the other.")
    if args.fake is not None and args.real is None and args.dataset is None:
        raise UserError("--fake DIR needs real images to compare with: --real DIR, or "
                        "--dataset (with its flags).")
    if args.checkpoint and args.image_size:
        raise UserError("--image-size is for --fake folders: a checkpoint's samples have its "
                        "model's size, and the real images are made to match.")


def cmd_train(args: argparse.Namespace) -> None:
    from jax_dcgan.training import distributed
    from jax_dcgan.training.loop import train
    cfg = config_from_args(args)
    _positive(args, "heartbeat_timeout")
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           args.distributed, args.heartbeat_timeout)
    train(cfg, args.out, resume=args.resume, quiet=args.quiet)


def cmd_bench(args: argparse.Namespace) -> None:
    import jax

    from jax_dcgan.tools import bench
    if args.batch_size is None:  # the lecture's 128 where it fits in time, 32 on a CPU
        args.batch_size = 32 if jax.default_backend() == "cpu" else 128
    _positive(args, "steps", "repeats", "fid")
    if args.fid and (args.layers or args.variants or args.hlo_dir):
        raise UserError("--fid times FID's network alone; --layers, --variants and --hlo-dir "
                        "are for the training step, so leave them out.")
    _positive(args, "loop_epochs", minimum=2)  # the first epoch (compilation) is not timed
    _output_paths(args)
    cfg = config_from_args(args)
    with runtime.float64_mode(cfg.dtype):
        bench.main(cfg, args.steps, args.repeats, tuple(args.variants) if args.variants else None,
                   args.json, args.layers, args.hlo_dir, args.loop_epochs, args.json_out,
                   args.fid)


def cmd_compile(args: argparse.Namespace) -> None:
    from jax_dcgan.tools import aot
    if min(args.devices) < 1:
        raise UserError(f"--devices must be at least 1, got {min(args.devices)}.")
    _output_paths(args)
    _positive(args, "measure")
    cfg = config_from_args(args)
    dtypes, impls = args.dtypes or [cfg.dtype], args.conv_impls or [cfg.conv_impl]
    with runtime.no_persistent_cache():  # --measure's too: `compile` leaves the cache alone
        aot.main(cfg, aot.variants(args.target, args.devices, dtypes, impls),
                 cfg.steps_per_dispatch, args.json, args.hlo_dir, args.json_out,
                 args.measure or 0)


def cmd_data_prepare(args: argparse.Namespace) -> None:
    import os

    from jax_dcgan.data import dataset
    _positive(args, "workers")
    cfg = config_from_args(args)
    images = dataset.load_dataset(cfg, workers=args.workers, quiet=args.quiet)
    print(f"{cfg.dataset} ({cfg.split} split): {images.shape[0]} images of "
          f"{'x'.join(map(str, images.shape[1:]))} in {os.path.dirname(images.filename)}; "
          "train finds them there with the same --cache-dir and data flags.")


def cmd_parity(args: argparse.Namespace) -> int:
    if "jax" not in sys.modules:  # a CPU gets 4 devices, so that data parallelism is compared
        runtime.force_host_devices(4)
    import dataclasses as dc
    import json

    import jax
    from tqdm.auto import tqdm

    from jax_dcgan.model import convert
    from jax_dcgan.tools import parity
    cfg, state_dict = preset(args.preset) if args.preset else Config(), None
    if args.checkpoint:
        state_dict = convert.load_torch_file(args.checkpoint)
        cfg = convert.config_for_state_dict(state_dict, cfg).validate()
        convert.from_state_dict(state_dict, cfg.model)  # names the first mismatching tensor
    setup = parity.default_setup(cfg, state_dict)
    checks, rows = [(n, c) for n, c in parity.checks(setup) if n in (args.only or [n])], []
    with parity.full_precision(), tqdm(checks, desc="parity", unit="check", disable=args.json,
                                       dynamic_ncols=True) as bar:
        for name, check in bar:
            bar.set_postfix_str(name)
            rows += [dc.replace(row, group=name) for row in check()]
    passed = parity.passed(rows)
    if args.json:
        print(json.dumps({"jax_backend": jax.default_backend(), "torch_device": setup.device,
                          "weights": args.checkpoint or "PyTorch's init, seed 0",
                          "passed": passed, "rows": [parity.as_json(r) for r in rows]}, indent=2))
    else:
        print(parity.format_table(rows, setup, args.checkpoint))
    return 0 if passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jax-dcgan", description="The DCGAN of STAT 453 L18.6 in JAX: exact and fast.")
    parser.add_argument("--version", action="version", version=f"jax-dcgan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_command(sub)
    _add_bench_command(sub)
    _add_compile_command(sub)
    _add_eval_command(sub)
    _add_sample_command(sub)
    _add_animate_command(sub)
    _add_parity_command(sub)
    _add_data_command(sub)
    _add_convert_command(sub)
    return parser


def _add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train on synthetic faces, a folder of images or CelebA")
    p.add_argument("--out", required=True, help="run directory: metrics, samples, checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest checkpoint (if any)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or console lines")
    group = p.add_argument_group("multi-process (jax.distributed; also JAX_COORDINATOR_ADDRESS, "
                                 "JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
    group.add_argument("--coordinator-address", metavar="HOST:PORT",
                       help="process 0's address, the same for every process")
    group.add_argument("--num-processes", type=integer, help="how many processes take part")
    group.add_argument("--process-id", type=integer, help="this process's index, 0..N-1")
    group.add_argument("--distributed", action="store_true",
                       help="detect the above from the cluster (SLURM, TPU pod, Kubernetes, MPI)")
    group.add_argument("--heartbeat-timeout", type=integer, metavar="SECONDS",
                       default=20,
                       help="a process silent this long is lost: the others stop, naming it "
                            "and the checkpoint to --resume from (default: %(default)s)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)


def _add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="time the training step: PyTorch and JAX side by side")
    p.add_argument("--steps", type=integer, default=10,
                   help="steps per timed block, per fused call and per train-loop epoch")
    p.add_argument("--repeats", type=integer, default=5,
                   help="timed blocks per variant, interleaved")
    p.add_argument("--variants", nargs="+", choices=BENCH_VARIANTS, metavar="VARIANT",
                   help=f"which to run: {' '.join(BENCH_VARIANTS)} (default: all; on a CPU "
                        "all but jax-fused-xla)")
    p.add_argument("--loop-epochs", type=integer, default=3,
                   help="epochs of each jax-train-loop run (the first is not timed)")
    p.add_argument("--layers", action="store_true",
                   help="time each convolution layer's forward + backward pass, matmul vs xla")
    p.add_argument("--hlo-dir", metavar="DIR", help="write the jit variants' compiled programs")
    p.add_argument("--fid", type=integer, metavar="N", help="time FID's Inception network instead, "
                   "on N images per repeat: as shipped (PyTorch, CPU) vs JAX on this device")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--json-out", metavar="FILE",
                   help="also write the JSON object to FILE, rewritten as results come in")
    _add_config_flags(p, only=("batch_size", "gen_features", "dis_features", "latent_dim",
                               "image_size", "dtype", "devices", "seed", "compilation_cache",
                               "cache_dir", "fid_mode"), with_preset=False)
    p.set_defaults(func=cmd_bench)


def _add_compile_command(sub) -> None:
    from jax_dcgan.tools.targets import TARGETS  # imports no JAX

    p = sub.add_parser("compile", help="compile the training step for a GPU or TPU this machine "
                                       "need not have, and predict its speed")
    p.add_argument("--target", nargs="+", choices=sorted(TARGETS) + ["local"], default=["h200"],
                   metavar="TARGET", help=f"accelerators: {' '.join(TARGETS)}, or local (this "
                                          "machine's own kind) (default: h200)")
    p.add_argument("--devices", nargs="+", type=integer, default=[1],
                   help="devices of one host the step is data parallel over (default: 1)")
    p.add_argument("--dtype", nargs="+", dest="dtypes", choices=("float32", "bfloat16",
                                                                 "float64"),
                   help="compute dtypes (default: the configuration's, float32)")
    p.add_argument("--conv-impl", nargs="+", dest="conv_impls", choices=CONV_IMPLS,
                   help="convolution backends; auto is xla on accelerators (default: the "
                        "configuration's, auto)")
    p.add_argument("--hlo-dir", metavar="DIR", help="write each compiled program's HLO there")
    p.add_argument("--measure", type=integer, metavar="REPEATS",
                   help="also compile each variant for this machine's own devices and time it "
                        "(REPEATS interleaved repeats): measured vs predicted, and whether the "
                        "device's program matches the deviceless one")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--json-out", metavar="FILE",
                   help="also write the JSON object to FILE, rewritten after each variant")
    _add_config_flags(p, only=("batch_size", "gen_features", "dis_features", "latent_dim",
                               "channels", "image_size", "gen_activation", "gen_slope",
                               "dis_slope", "weight_init", "fresh_noise", "label_flip",
                               "label_smoothing", "ema_decay", "epochs", "checkpoint_every",
                               "steps_per_dispatch"))
    p.set_defaults(func=cmd_compile)


def _add_eval_command(sub) -> None:
    p = sub.add_parser("eval", help="FID, KID and SWD of a checkpoint's samples, or of a folder "
                                    "of images, against a dataset or another folder")
    scored = p.add_mutually_exclusive_group(required=True)
    scored.add_argument("--checkpoint", help="run, checkpoints or step directory whose samples "
                                             "to score")
    scored.add_argument("--fake", metavar="DIR", help="score a folder of images instead (e.g. "
                                                      "another model's samples)")
    p.add_argument("--real", metavar="DIR_OR_NPZ",
                   help="the real images from a folder (all of its files), instead of "
                        "--dataset; or reference statistics (.npz: mu, sigma, and feats for "
                        "KID, as eval caches them beside a dataset or clean-fid writes them)")
    p.add_argument("--num", type=integer, default=2048,
                   help="samples, or the first images of --fake, and as many real images")
    p.add_argument("--seed", type=integer, default=0,
                   help="seed for the noise, SWD's projections and KID's subsets")
    p.add_argument("--bn", choices=BN_STATS, default="batch",
                   help="BatchNorm statistics while generating (see sample)")
    p.add_argument("--no-fid", action="store_true",
                   help="SWD only (no Inception network, so no FID or KID)")
    p.add_argument("--inception", choices=("jax", "torch"), default="jax",
                   help="run FID's network in JAX on this machine's accelerator (default; "
                        "PyTorch is needed once, to convert it) or as shipped, in PyTorch on "
                        "the CPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--figure", metavar="PNG",
                   help="also write 64 real images beside 64 of the scored ones there")
    _add_config_flags(p, only=("dataset", "data_dir", "split", "crop_size", "image_size",
                               "num_synthetic", "cache_dir", "fid_mode"), with_preset=False)
    p.set_defaults(func=cmd_eval)


def _add_sample_command(sub) -> None:
    p = sub.add_parser("sample", help="draw a grid of faces from a checkpoint")
    p.add_argument("--checkpoint", required=True, help="run, checkpoints or step directory")
    p.add_argument("--num", type=integer, default=None, help="number of images (default 64)")
    p.add_argument("--seed", type=integer, default=0, help="seed for the noise")
    p.add_argument("--out", required=True, help="grid PNG to write")
    p.add_argument("--noise", help="(N, latent) float32 .npy to use instead of drawing")
    p.add_argument("--save-array", help="also write the images as (N, H, W, C) float32 .npy")
    p.add_argument("--bn", choices=BN_STATS,
                   help="BatchNorm statistics: running (eval mode) or the batch's own "
                        "(train mode, as the lecture's grids); default batch, and running "
                        "for --interpolate (each image then depends on its vector alone)")
    p.add_argument("--interpolate", type=integer, metavar="N",
                   help="walk between N latent points (from --seed, or the vectors of "
                        "--noise) by spherical interpolation: a strip PNG at --out and an "
                        "animation beside it (.webp)")
    p.add_argument("--between", type=integer,
                   help="images between two points of --interpolate (default 7)")
    p.set_defaults(func=cmd_sample)


def _add_animate_command(sub) -> None:
    p = sub.add_parser("animate", help="a run's epoch grids as one animation (progress.webp)")
    p.add_argument("run", help="run directory of `jax-dcgan train`")
    p.add_argument("--out", help="animation to write (default RUN/progress.webp)")
    p.add_argument("--frame-ms", type=integer, default=250, help="milliseconds per frame")
    p.add_argument("--every", type=integer, default=1,
                   help="every N-th epoch's grid (the first and the last always): a smaller "
                        "file for a long run (default 1: all)")
    p.set_defaults(func=cmd_animate)


def _add_parity_command(sub) -> None:
    p = sub.add_parser("parity", help="compare JAX with the lecture's PyTorch model and step, "
                                      "on this machine's devices")
    p.add_argument("--checkpoint", metavar="MODEL.pt",
                   help="a lecture-format state dict to compare with (default: PyTorch's "
                        "initialization, seed 0)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="activations and options of the model (default: the lecture's)")
    p.add_argument("--only", nargs="+", metavar="CHECK", choices=PARITY_CHECKS,
                   help=f"run only these: {' '.join(PARITY_CHECKS)} (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_parity)


def _add_data_command(sub) -> None:
    p = sub.add_parser("data", help="prepare a dataset's cache once (e.g. on a login node)")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser(
        "prepare", help="download (or find in the manual directory), verify and decode into "
                        "the cache that train reads, with no network needed afterwards")
    q.add_argument("--workers", type=integer,
                   help="decoding threads (default: cores + 2, at most 8)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(q, only=("dataset", "data_dir", "split", "crop_size", "image_size",
                               "num_synthetic", "data_seed", "cache_dir"))
    q.set_defaults(func=cmd_data_prepare)


def _add_convert_command(sub) -> None:
    p = sub.add_parser("convert", help="convert between the lecture's .pt and a checkpoint")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--from-torch", metavar="MODEL.pt", help="lecture-format state dict")
    which.add_argument("--to-torch", metavar="CKPT_DIR", help="checkpoint to export")
    p.add_argument("--out", required=True, help="checkpoint directory or .pt file to write")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="activations of the converted model (--from-torch); default: the lecture's")
    p.set_defaults(func=cmd_convert)


def _quiet_libraries() -> None:
    """Library log lines (orbax's absl warnings, asyncio's about background tasks) are not for
    users; errors reach them as this tool's own messages."""
    import logging
    import warnings

    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.formatwarning = lambda message, category, *rest: f"jax-dcgan: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime.quiet_absent_accelerators()
    runtime.threads_for_host_collectives()
    if argv is None:  # a command line, not a call from Python, whose process is left as it was
        if args.command in HEAVY_COMMANDS:
            runtime.reexec_with_huge_pages()
        _quiet_libraries()
    try:
        return args.func(args) or 0
    except (UserError, TrainingStopped) as e:
        print(error_line(args.command, e), file=sys.stderr)
        return e.exit_code
    except OSError as e:  # training names its checkpoints itself; elsewhere, one paragraph
        print(f"jax-dcgan {args.command}: error: a file could not be read or written "
              f"({summarize(e)}); check the paths given, their permissions and the free "
              "space.", file=sys.stderr)
        return 1
    except MemoryError:
        print(f"jax-dcgan {args.command}: error: the host ran out of memory; smaller sizes "
              "(--batch-size, --image-size, --num, the dataset) need less.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"jax-dcgan {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
