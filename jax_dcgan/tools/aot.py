"""`jax-dcgan compile`: the training step as `train` runs it, compiled for an accelerator this
machine need not have, read, and costed.

The call is the loop's own: `Parallelism.step_function` of the run's configuration
(`auto` convolutions resolved for the target's platform), the train state and the
uint8 batches placed as `train` places them, one program of K steps (`lax.scan`)
and one of a single step, as a run compiles. K is the flag's, or chosen as `train`
chooses it, from the predicted step time, over the segments of a CelebA run of the
configuration (the lecture's: 20 epochs at batch 128).

The performance model is deliberately plain, so that a device check can confirm
or correct each term:

    step = max(FLOPs / peak, bytes / bandwidth) + launches x LAUNCH_S
           + collectives x latency + collective bytes on the wire / link bandwidth

FLOPs, bytes, launches and collectives are those of the compiled program
(`hlo.Program`), per step and per device; peaks and bandwidths are the target's
datasheet figures (`targets.py`). The per-launch and per-collective costs are
assumptions, stated below, until a device has measured them
(`scripts/gpu_check.py` prints the launch cost its measured step implies).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import statistics
import time
from typing import Any

import jax
import numpy as np

from jax_dcgan.common import runtime
from jax_dcgan.common.errors import UserError, check_batch_split, summarize
from jax_dcgan.common.files import write_text
from jax_dcgan.config import Config
from jax_dcgan.model.step import check_fits, create_train_state
from jax_dcgan.tools.hlo import Program, xla_costs
from jax_dcgan.tools.targets import TARGETS, Target, compile_only_devices, of_device_kind, target
from jax_dcgan.training.dispatch import Plan, choose_steps_per_dispatch
from jax_dcgan.training.parallel import Parallelism

__all__ = ["main", "variants"]

CELEBA_TRAIN_IMAGES = 162_770
# Assumed until measured: the time a GPU spends per kernel of a step beyond the kernel's own
# work (launch, and the gap between small dependent kernels), and the latency of one NCCL
# collective over NVLink for the small messages of this model. TPUs run a step as one
# program with no host launches.
LAUNCH_S = {"cuda": 2e-6, "tpu": 0.0}
COLLECTIVE_LATENCY_S = {"cuda": 10e-6, "tpu": 5e-6}
# Bytes each device moves over its links per byte it contributes (ring algorithms, n devices).
WIRE_FACTOR = {"all-reduce": lambda n: 2 * (n - 1) / n, "all-gather": lambda n: n - 1,
               "reduce-scatter": lambda n: (n - 1) / n, "all-to-all": lambda n: (n - 1) / n,
               "collective-permute": lambda n: 1, "collective-broadcast": lambda n: 1,
               "ragged-all-to-all": lambda n: (n - 1) / n}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One program `jax-dcgan compile` builds: a target, a device count, a dtype, a backend."""
    target: str
    devices: int
    dtype: str
    conv_impl: str

    @property
    def label(self) -> str:
        return f"{self.target}-{self.devices}dev-{self.dtype}-{self.conv_impl}"


def celeba_plan(cfg: Config) -> Plan:
    """A CelebA run of this configuration (the lecture's: 20 epochs at batch 128): its
    epochs, checkpoints and segments."""
    steps_per_epoch = CELEBA_TRAIN_IMAGES // cfg.batch_size
    if not steps_per_epoch:
        raise UserError(f"--batch-size {cfg.batch_size} is more than CelebA's "
                        f"{CELEBA_TRAIN_IMAGES} training images; the prediction is for epochs "
                        "of CelebA, so give a smaller batch.")
    return Plan(steps_per_epoch, cfg.epochs * steps_per_epoch, cfg.checkpoint_every, 1)


def compile_program(cfg: Config, parallelism: Parallelism, steps: int):
    """The compiled call of `steps` steps that `train` dispatches on `parallelism`, kept out of
    JAX's persistent cache (`runtime.no_persistent_cache`)."""
    step_cfg = cfg.step_config(cfg.numerics(parallelism.platform))
    state = parallelism.placed_shapes(
        jax.eval_shape(lambda: create_train_state(step_cfg, cfg.seed)))
    batches = parallelism.batches_shape(steps, cfg.batch_size,
                                        (cfg.image_size, cfg.image_size, cfg.channels))
    with runtime.no_persistent_cache():
        return parallelism.step_function(step_cfg).lower(state, batches).compile()


def predict(counts: dict, t: Target, dtype: str, devices: int) -> dict:
    """The performance model's terms for one step (seconds) from the program's counts."""
    peak = t.peak_flops(dtype)
    terms = {
        "compute_s": counts["flops"] / peak if peak else None,
        "memory_s": counts["bytes_accessed"] / t.memory_bandwidth,
        "launch_s": counts["launches"] * LAUNCH_S[t.platform],
        "collective_s": (sum(counts["collectives"].values()) * COLLECTIVE_LATENCY_S[t.platform]
                         + sum(WIRE_FACTOR[kind](devices) * size
                               for kind, size in counts["collective_bytes_by_kind"].items())
                         / t.link_bandwidth),
    }
    work = max(terms["compute_s"] or 0.0, terms["memory_s"])
    step = work + terms["launch_s"] + terms["collective_s"]
    bound = max(("compute", terms["compute_s"] or 0.0), ("memory", terms["memory_s"]),
                ("launches", terms["launch_s"]), ("collectives", terms["collective_s"]),
                key=lambda item: item[1])[0]
    return {**terms, "step_s": step, "bound_by": bound, "peak_flops": peak,
            "mfu": counts["flops"] / step / peak if peak else None}


def convolution_problems(counts: dict) -> list[str]:
    """What keeps a GPU step's convolutions off cuDNN's kernels (empty when none)."""
    problems = []
    if counts["convolutions"].get("xla_convolution"):
        problems.append(f"{counts['convolutions']['xla_convolution']:g} convolutions left to "
                        "XLA's own emitter")
    if counts["zero_stuffed_convolutions"]:
        problems.append(f"{counts['zero_stuffed_convolutions']:g} convolutions over a "
                        "zero-stuffed input (an input-dilated convolution no cuDNN kernel took)")
    return problems


def program_kinds(counts: dict) -> dict:
    """What must match between a deviceless and a device compile of a step: its convolution
    calls by kind and its collectives."""
    return {**counts["convolutions"], **counts["collectives"]}


def _counts(program: Program, steps: int) -> dict:
    counts = program.per_step(steps)
    counts["collective_bytes_by_kind"] = {k: v / steps for k, v in
                                          program.collective_bytes.items()}
    return counts


def _memory(compiled, t: Target) -> dict:
    stats = compiled.memory_analysis()
    used = (stats.argument_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes + stats.temp_size_in_bytes
            + stats.generated_code_size_in_bytes)
    return {"argument_bytes": stats.argument_size_in_bytes,
            "output_bytes": stats.output_size_in_bytes,
            "alias_bytes": stats.alias_size_in_bytes, "temp_bytes": stats.temp_size_in_bytes,
            "total_bytes": used, "device_memory_bytes": t.memory_bytes,
            "fraction_of_device": used / t.memory_bytes}


def _compiled(cfg: Config, parallelism: Parallelism, steps: int) -> tuple[Any, Program, float]:
    start = time.perf_counter()
    try:
        compiled = compile_program(cfg, parallelism, steps)
    except (RuntimeError, ValueError, OverflowError, MemoryError) as e:  # XLA's refusals
        raise UserError(f"XLA could not compile the step for {parallelism.devices[0].device_kind} "
                        f"({summarize(e)}); sizes this large do not fit its shapes or this "
                        "machine's memory.") from None
    return compiled, Program.read(compiled.as_text()), time.perf_counter() - start


def compile_variant(cfg: Config, variant: Variant, steps_per_dispatch: int,
                    hlo_dir: str | None = None) -> dict:
    """Compile one variant's programs (one step, and K steps when K > 1) and report them."""
    t = target(variant.target)
    if variant.dtype == "float64" and t.platform == "tpu":
        raise UserError("--dtype float64 does not compile for TPUs (they have no float64 "
                        "convolutions); use float32 or bfloat16.")
    variant_cfg = cfg.replace(dtype=variant.dtype, conv_impl=variant.conv_impl)
    check_batch_split(variant_cfg.batch_size, variant.devices)
    plan = celeba_plan(variant_cfg)
    with runtime.float64_mode(variant.dtype):
        parallelism = Parallelism(compile_only_devices(t, variant.devices))
        numerics = variant_cfg.numerics(parallelism.platform)
        variant_cfg = variant_cfg.replace(conv_impl=numerics.conv)  # as decided for the target
        variant = dataclasses.replace(variant, conv_impl=variant_cfg.conv_impl)
        programs = {1: _compiled(variant_cfg, parallelism, 1)}
        # TPU programs hold their convolutions in fusions, with input dilation done by the
        # hardware: XLA's own count of the one-step program is the better one there.
        xla_count = xla_costs(programs[1][0]) if t.platform == "tpu" else {}
        if steps_per_dispatch:
            k = min(steps_per_dispatch, max(plan.segments()))
        else:  # as train chooses K, from the (predicted) time of one step
            one = predict({**_counts(programs[1][1], 1), **xla_count}, t, variant.dtype,
                          variant.devices)
            k = choose_steps_per_dispatch(one["step_s"], plan.segments())
        if k > 1:
            programs[k] = _compiled(variant_cfg, parallelism, k)
        leaves = len(jax.tree.leaves(jax.eval_shape(
            lambda: create_train_state(variant_cfg.step_config(numerics), variant_cfg.seed))))
    compiled, program, seconds = programs[k]
    counts = {**_counts(program, k), **xla_count}
    model = predict(counts, t, variant.dtype, variant.devices)
    if hlo_dir:
        for steps, (c, _, _) in programs.items():
            write_text(os.path.join(hlo_dir, f"{variant.label}-{steps}step.hlo.txt"), c.as_text())
    return {
        **dataclasses.asdict(variant), "label": variant.label,
        "device_kind": t.device_kind, "batch_size": variant_cfg.batch_size,
        "steps_per_dispatch": k, "compile_s": sum(p[2] for p in programs.values()),
        "counts": counts,
        "problems": convolution_problems(counts) if t.platform == "cuda" else [],
        "single_step_counts": _counts(programs[1][1], 1),
        "host_transfers_in_loop": program.in_loop["host_transfer"],
        "donated_state_leaves": program.aliased_outputs, "state_leaves": leaves,
        "memory": _memory(compiled, t),
        "model": model,
        "steps_per_s": 1 / model["step_s"],
        "images_per_s": variant_cfg.batch_size / model["step_s"],
        "celeba_run": {"epochs": variant_cfg.epochs, "steps": plan.total_steps,
                       "minutes": plan.total_steps * model["step_s"] / 60},
    }


def _local_call(cfg: Config, v: dict, calls: int):
    """The variant's K-step call compiled for this machine's devices, and a timer of `calls`
    calls back to back on device-resident batches: (program, seconds per step of a repeat)."""
    from jax_dcgan.tools import bench
    parallelism = Parallelism(jax.local_devices()[:v["devices"]])
    k = v["steps_per_dispatch"]
    step_cfg = cfg.step_config(cfg.numerics(parallelism.platform))
    state = parallelism.put(create_train_state(step_cfg, cfg.seed))
    shape = parallelism.batches_shape(k, cfg.batch_size,
                                      (cfg.image_size, cfg.image_size, cfg.channels))
    batch = jax.device_put(np.random.default_rng(0).integers(0, 256, shape.shape, np.uint8),
                           parallelism.batch_sharding)
    compiled = parallelism.step_function(step_cfg).lower(state, batch).compile()
    run = bench.carried_calls(compiled, state, lambda _: batch, k, calls)
    run()  # the first call loads and warms up
    return Program.read(compiled.as_text()), bench.per_step_timer(run, k * calls)


def _start_measuring(cfg: Config, report: dict, calls: int = 4):
    """Compile the variant's call for this machine's devices, time one repeat and record it
    in `report['measured']`; (report, timer, times) for the rounds that follow."""
    program, timer = _local_call(cfg.replace(dtype=report["dtype"],
                                             conv_impl=report["conv_impl"]), report, calls)
    kind = jax.local_devices()[0].device_kind
    chip = of_device_kind(kind)
    report["measured"] = {
        "device_kind": kind, "comparable": chip is not None and chip.name == report["target"],
        "device_program": program_kinds(_counts(program, report["steps_per_dispatch"]))}
    times = [timer()]
    _record_times(report, times)
    return report, timer, times


def _record_times(report: dict, times: list[float]) -> None:
    """Measured against predicted: the times, the model's error, the per-launch cost the
    measurement implies, and whether the device's program has the same convolution calls
    and collectives as the deviceless one."""
    m, median = report["model"], statistics.median(times)
    work = max(m["compute_s"] or 0.0, m["memory_s"])
    report["measured"].update(
        step_ms_median=1e3 * median, step_ms_min=1e3 * min(times), repeats=len(times),
        predicted_ms=1e3 * m["step_s"], measured_over_predicted=median / m["step_s"],
        implied_launch_us=1e6 * (median - work - m["collective_s"])
        / max(report["counts"]["launches"], 1),
        program_matches=report["measured"]["device_program"] == program_kinds(report["counts"]))


def assumptions() -> dict:
    return {"launch_s": LAUNCH_S, "collective_latency_s": COLLECTIVE_LATENCY_S,
            "targets": {name: {"device_kind": t.device_kind,
                               "peak_tflops": {d: (t.peak_flops(d) or 0) / 1e12
                                               for d in ("bfloat16", "float32", "float64")},
                               "memory_bandwidth": t.memory_bandwidth,
                               "link_bandwidth": t.link_bandwidth,
                               "memory_bytes": t.memory_bytes, "source": t.source}
                        for name, t in TARGETS.items()}}


def run(cfg: Config, variants: list[Variant], steps_per_dispatch: int,
        hlo_dir: str | None = None, snapshot=None, measure_repeats: int = 0) -> dict:
    """Compile and report every variant; with `measure_repeats`, also time them here."""
    if measure_repeats and any(v.dtype == "float64" for v in variants):
        raise UserError("--measure times float32 and bfloat16 variants; leave out float64.")
    if measure_repeats and max(v.devices for v in variants) > len(jax.local_devices()):
        raise UserError(f"--measure runs on this machine's devices, and it has "
                        f"{len(jax.local_devices())}; lower --devices.")
    result = {"config": {k: getattr(cfg, k) for k in ("batch_size", "gen_features",
                                                      "dis_features", "latent_dim",
                                                      "image_size", "epochs")},
              "jax": jax.__version__, "model_assumptions": assumptions(), "variants": []}
    celeba_plan(cfg)  # a batch larger than CelebA is refused before its memory is counted
    for variant in variants:
        check_fits(cfg.replace(dtype=variant.dtype).model, cfg.batch_size,
                   target(variant.target).memory_bytes, variant.devices)
    measuring = []  # each variant is timed once as soon as it is built (a run cut short
    for variant in variants:  # keeps what it measured), then in interleaved rounds
        result["variants"].append(compile_variant(cfg, variant, steps_per_dispatch, hlo_dir))
        if measure_repeats:
            measuring.append(_start_measuring(cfg, result["variants"][-1]))
        if snapshot:
            snapshot(result)
    for _ in range(measure_repeats - 1):
        for report, timer, times in measuring:
            times.append(timer())
            _record_times(report, times)
        if snapshot:
            snapshot(result)
    return result


def local_target() -> str:
    """The target that this machine's first device is."""
    kind = jax.local_devices()[0].device_kind
    found = of_device_kind(kind)
    if found:
        return found.name
    raise UserError(f"--target local: this machine's device ({kind}) is none of the targets "
                    f"({', '.join(TARGETS)}); name one.")


def variants(targets: list[str], devices: list[int], dtypes: list[str], impls: list[str]
             ) -> list[Variant]:
    targets = [local_target() if name == "local" else target(name).name for name in targets]
    return [Variant(*combo) for combo in itertools.product(targets, devices, dtypes, impls)]


def format_report(result: dict) -> str:
    c = result["config"]
    lines = [f"jax-dcgan compile: batch {c['batch_size']}, widths {c['gen_features']}/"
             f"{c['dis_features']}, {c['image_size']}x{c['image_size']}; jax {result['jax']}; "
             "per step and per device, predicted (not measured)", ""]
    header = (f"{'variant':34s} {'K':>3s} {'step ms':>8s} {'steps/s':>8s} {'img/s':>8s} "
              f"{'MFU':>6s} {'bound':>11s} {'launch':>6s} {'coll':>5s} {'GFLOP':>7s} "
              f"{'GB':>6s} {'mem GB':>7s} {str(c['epochs']) + ' ep min':>9s}")
    lines.append(header)
    for v in result["variants"]:
        m, n = v["model"], v["counts"]
        mfu = f"{100 * m['mfu']:.1f}%" if m["mfu"] else "-"
        name = f"{v['target']} x{v['devices']} {v['dtype']} {v['conv_impl']}"
        lines.append(
            f"{name:34s} "
            f"{v['steps_per_dispatch']:3d} {1e3 * m['step_s']:8.3f} {v['steps_per_s']:8.0f} "
            f"{v['images_per_s']:8.0f} {mfu:>6s} {m['bound_by']:>11s} {n['launches']:6.0f} "
            f"{sum(n['collectives'].values()):5.0f} {n['flops'] / 1e9:7.1f} "
            f"{n['bytes_accessed'] / 1e9:6.2f} {v['memory']['total_bytes'] / 1e9:7.2f} "
            f"{v['celeba_run']['minutes']:9.1f}")
    lines.append("")
    for v in result["variants"]:
        lines.append(f"{v['label']}: {describe(v)}")
        if "measured" in v:
            lines.append(f"  measured on {measured_line(v['measured'])}")
    lines += ["", "step = max(FLOPs/peak, bytes/bandwidth) + launches x "
              f"{1e6 * LAUNCH_S['cuda']:.0f} us (GPU) + collectives x "
              f"{1e6 * COLLECTIVE_LATENCY_S['cuda']:.0f} us + wire bytes / link bandwidth; "
              "peaks and bandwidths from the datasheets (jax-dcgan compile --json: "
              "model_assumptions)"]
    return "\n".join(lines)


def describe(v: dict) -> str:
    """One line of what the program does per step."""
    n = v["counts"]
    convs = ", ".join(f"{k.removeprefix('cudnn_')} {c:g}" for k, c in n["convolutions"].items())
    gemms = ", ".join(f"{k} {c:g}" for k, c in n["gemms"].items())
    collectives = ", ".join(f"{k} {c:g}" for k, c in n["collectives"].items())
    return (f"convolutions [{convs or 'none'}], zero-stuffed {n['zero_stuffed_convolutions']:g}; "
            f"GEMMs [{gemms or 'none'}]; fusions {n['fusions']:.1f}, copies {n['copies']:.1f}; "
            f"collectives [{collectives or 'none'}] {n['collective_bytes'] / 1e6:.1f} MB; "
            f"host transfers in the loop {v['host_transfers_in_loop']:g}; donated "
            f"{v['donated_state_leaves']}/{v['state_leaves']} state arrays; compiled in "
            f"{v['compile_s']:.1f} s" + "".join(f"; PROBLEM: {p}" for p in v["problems"]))


def measured_line(m: dict) -> str:
    comparison = ("the same convolution calls and collectives as compiled without it"
                  if m["program_matches"] else f"a program that differs: {m['device_program']}")
    return (f"{m['device_kind']}: {m['step_ms_median']:.3f} ms per step (min "
            f"{m['step_ms_min']:.3f}, {m['repeats']} repeats), predicted "
            f"{m['predicted_ms']:.3f} ({m['measured_over_predicted']:.2f}x); implied cost per "
            f"launch {m['implied_launch_us']:.1f} us; "
            + (comparison if m["comparable"] else "not the target's chip, so not compared"))


def main(cfg: Config, variant_list: list[Variant], steps_per_dispatch: int, as_json: bool,
         hlo_dir: str | None, json_out: str | None, measure_repeats: int = 0) -> None:
    def save(result: dict) -> None:
        if json_out:
            write_text(json_out, json.dumps(result, indent=2))

    result = run(cfg, variant_list, steps_per_dispatch, hlo_dir, save, measure_repeats)
    save(result)
    print(json.dumps(result, indent=2) if as_json else format_report(result))



