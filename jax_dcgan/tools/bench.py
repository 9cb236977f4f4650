"""Side-by-side timing of the training step: PyTorch as users run it, and the JAX variants.

Every variant runs the same configuration on this machine in one process.
Compilation and warm-up are excluded from the timed part (and reported); the
timed repeats are interleaved across variants so that drift in the machine's
speed hits all of them alike; each figure is the median (min, max) over repeats.

Variants:
  torch              the lecture's eager step (its metrics read with .item() every step)
  torch-compiled     what a PyTorch user runs on a GPU: torch.compile'd networks in
                     channels_last, fused Adam on CUDA, metrics left on the device (bf16
                     autocast with --dtype bfloat16)
  jax-jit-matmul     one step per call on one device, convolutions as matmuls
  jax-jit-xla        the same with XLA's native convolutions (cuDNN on GPUs)
  jax-pmap           one step per call on every local device (--conv-impl auto)
  jax-fused-matmul   `steps` steps per call (lax.scan) on device-resident batches, four
                     calls per timed block dispatched back to back
  jax-fused-xla      the same with XLA's native convolutions
  jax-train-loop     `jax-dcgan train` itself with its default flags (steps per call,
                     epoch ends, logging, checkpoints), on epochs of `steps` steps: its
                     steady rate after the first epoch, from its own metrics

FLOPs per step come from XLA's cost analysis of the one-step program; model FLOP
utilisation divides them by the step time and the device's peak where it is known.
`layer_times` times each convolution layer's forward and backward pass in both backends.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jax_dcgan.common import runtime
from jax_dcgan.common.errors import check_batch_split, summarize
from jax_dcgan.common.files import write_text
from jax_dcgan.common.optional import import_torch
from jax_dcgan.config import BENCH_VARIANTS, CONV_BACKENDS, Config
from jax_dcgan.data.dataset import cache_root
from jax_dcgan.model.layers import Conv, ConvTranspose, conv2d, conv_transpose2d
from jax_dcgan.model.networks import Discriminator, Generator
from jax_dcgan.model.step import check_fits, create_train_state, jit_train_steps, pmap_train_steps
from jax_dcgan.outputs.plots import read_metrics, steady_images_per_s
from jax_dcgan.tools.hlo import Program, xla_costs
from jax_dcgan.tools.targets import peak_flops
from jax_dcgan.training import rundir
from jax_dcgan.training.feeding import Batches
from jax_dcgan.training.loop import train
from jax_dcgan.training.parallel import Parallelism, device_sharding, replicate

__all__ = ["carried_calls", "format_fid", "main", "per_step_timer"]


@dataclasses.dataclass
class Timed:
    """One variant of the benchmark, ready to time: its name, framework and step timer."""
    name: str
    framework: str
    measure: Callable[[], float] | None  # seconds per step of one timed repeat
    compile_s: float
    times: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None
    extra: dict = dataclasses.field(default_factory=dict)


def _images(cfg: Config, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, 256, (n, cfg.image_size, cfg.image_size, cfg.channels), np.uint8)


def _first_call(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_step_timer(run: Callable[[], None], steps: int) -> Callable[[], float]:
    """A timed repeat of `run`, which takes `steps` steps: seconds per step."""
    def measure():
        start = time.perf_counter()
        run()
        return (time.perf_counter() - start) / steps
    return measure


def torch_variant(cfg: Config, steps: int, compiled: bool) -> Timed:
    torch = import_torch()
    from torch_reference import DCGAN, make_optimizers, train_step

    name = "torch-compiled" if compiled else "torch"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)
    model = DCGAN(cfg.latent_dim, cfg.gen_features, cfg.dis_features, cfg.channels,
                  cfg.image_size).to(device)
    real = torch.from_numpy(_images(cfg, cfg.batch_size)).to(device).permute(0, 3, 1, 2)
    real = real.float().div(255).sub(0.5).div(0.5).contiguous()
    if compiled:
        model = model.to(memory_format=torch.channels_last)
        model.generator = torch.compile(model.generator)
        model.discriminator = torch.compile(model.discriminator)
        real = real.contiguous(memory_format=torch.channels_last)
    # What a PyTorch user runs on a GPU: fused Adam, and no wait for the GPU every step.
    opt_g, opt_d = make_optimizers(model, cfg.lr_g, cfg.lr_d, (cfg.beta1, cfg.beta2), cfg.eps,
                                   fused=compiled and device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run():
        with autocast:
            for _ in range(steps):
                noise = torch.randn(cfg.batch_size, cfg.latent_dim, 1, 1, device=device)
                train_step(model, opt_g, opt_d, real, noise, item=not compiled)
        if device == "cuda":
            torch.cuda.synchronize()

    try:
        timed = Timed(name, "torch", per_step_timer(run, steps), _first_call(run))
    except Exception as e:  # torch.compile needs a C++ compiler on CPUs, Triton on GPUs
        return Timed(name, "torch", None, 0.0, error=f"could not run: {summarize(e)}")
    if device == "cuda":
        timed.extra["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return timed


def carried_calls(step, state, batch_of: Callable[[int], jax.Array], steps_per_call: int,
                  calls: int) -> Callable[[], None]:
    """`calls` calls of `step`, carrying the state across blocks."""
    box = [state, 0]

    def run():
        state, position = box
        for _ in range(calls):
            state, metrics = step(state, batch_of(position))
            position += steps_per_call
        box[:] = [state, position]
        jax.block_until_ready(metrics)
    return run


def compile_step(cfg: Config, device) -> tuple[Callable, object, jax.Array]:
    """The one-step program on `device`, compiled ahead of time: (callable, state, batch)."""
    step_cfg = cfg.step_config()
    state = jax.device_put(create_train_state(step_cfg, cfg.seed), device)
    batch = jax.device_put(_images(cfg, cfg.batch_size)[None], device)
    return jit_train_steps(step_cfg).lower(state, batch).compile(), state, batch


def jit_variant(cfg: Config, steps: int, impl: str) -> Timed:
    start = time.perf_counter()
    compiled, state, batch = compile_step(cfg.replace(conv_impl=impl), jax.local_devices()[0])
    run = carried_calls(compiled, state, lambda _: batch, 1, steps)
    run()
    timed = Timed(f"jax-jit-{impl}", "jax", per_step_timer(run, steps),
                  time.perf_counter() - start)
    timed.extra["flops_per_step"] = xla_costs(compiled).get("flops")
    hlo = compiled.as_text()
    timed.extra["library_calls"] = Program.read(hlo).library_calls
    timed.extra["hlo"] = hlo
    return timed


def pmap_variant(cfg: Config, steps: int, devices: list) -> Timed:
    d = len(devices)
    step_cfg = cfg.step_config()
    step = pmap_train_steps(step_cfg, devices)
    batch = jax.device_put(_images(cfg, cfg.batch_size).reshape(d, 1, cfg.batch_size // d,
                                                                *([cfg.image_size] * 2), -1),
                           device_sharding(devices))
    state = replicate(create_train_state(step_cfg, cfg.seed), devices)
    run = carried_calls(step, state, lambda _: batch, 1, steps)
    return Timed(f"jax-pmap ({d} device{'s' if d > 1 else ''})", "jax",
                 per_step_timer(run, steps), _first_call(run))


def fused_variant(cfg: Config, steps: int, impl: str, calls: int = 4) -> Timed:
    """`calls` calls of `steps` steps each per timed block, dispatched back to back on
    batches gathered on the device: the rate of a device that never waits for the host."""
    device = jax.local_devices()[0]
    parallelism = Parallelism([device])
    batches = Batches(_images(cfg, cfg.batch_size * steps * 2), cfg.batch_size, cfg.seed,
                      parallelism, resident=True)
    step_cfg = cfg.replace(conv_impl=impl).step_config()
    state = jax.device_put(create_train_state(step_cfg, cfg.seed), device)
    run = carried_calls(jit_train_steps(step_cfg), state,
                        lambda position: batches.get(position % (2 * steps), steps), steps, calls)
    return Timed(f"jax-fused-{impl} ({steps} steps/call)", "jax",
                 per_step_timer(run, steps * calls), _first_call(run))


def train_loop_variant(cfg: Config, steps: int, epochs: int) -> Timed:
    """`jax-dcgan train` with default loop flags on epochs of `steps` steps; each repeat is a
    new run, timed from its first epoch end on, from the rates in its metrics."""
    cache = tempfile.TemporaryDirectory(prefix="jax-dcgan-bench-")  # removed with `measure`
    loop_cfg = cfg.replace(dataset="synthetic", num_synthetic=cfg.batch_size * steps,
                           epochs=epochs, steps=0)

    def measure():
        with tempfile.TemporaryDirectory() as tmp:
            train(loop_cfg.replace(cache_dir=cache.name), f"{tmp}/run", quiet=True)
            records = read_metrics(f"{tmp}/run/metrics.jsonl")
        return cfg.batch_size / steady_images_per_s(records, steps + 1)

    start = time.perf_counter()
    first = measure()
    timed = Timed(f"jax-train-loop (epochs of {steps} steps)", "jax", measure,
                  time.perf_counter() - start)
    timed.times.append(first)
    return timed


def default_variants(platform_name: str) -> tuple[str, ...]:
    """All variants but, on CPUs, jax-fused-xla: XLA's CPU backend runs native convolutions
    inside `lax.scan` about 20x slower (docs/BENCHMARKS.md); name it to run it anyway."""
    return tuple(v for v in BENCH_VARIANTS if not (platform_name == "cpu" and v == "jax-fused-xla"))


def run(cfg: Config, steps: int, repeats: int, variants: tuple[str, ...], devices: int,
        loop_epochs: int = 3, hlo_dir: str | None = None,
        snapshot: Callable[[dict], None] | None = None) -> dict:
    """Build the variants, time them interleaved, and summarise. With `hlo_dir`, also write
    the jit variants' compiled one-step programs there; `snapshot` gets the summary so far
    after each variant is built and after each round of repeats (a run cut short keeps it)."""
    local = jax.local_devices()
    devices_used = local[:devices or len(local)]
    check_batch_split(cfg.batch_size, len(devices_used))
    # The single-device variants.
    check_fits(cfg.model, cfg.batch_size, runtime.device_free_bytes(local[0]))
    if cfg.compilation_cache:
        runtime.enable_compilation_cache(cache_root(cfg))
    builders = {
        "torch": lambda: torch_variant(cfg, steps, compiled=False),
        "torch-compiled": lambda: torch_variant(cfg, steps, compiled=True),
        "jax-jit-matmul": lambda: jit_variant(cfg, steps, "matmul"),
        "jax-jit-xla": lambda: jit_variant(cfg, steps, "xla"),
        "jax-pmap": lambda: pmap_variant(cfg, steps, devices_used),
        "jax-fused-matmul": lambda: fused_variant(cfg, steps, "matmul"),
        "jax-fused-xla": lambda: fused_variant(cfg, steps, "xla"),
        "jax-train-loop": lambda: train_loop_variant(cfg, steps, loop_epochs)}
    environment = rundir.environment(devices_used)
    summary = functools.partial(summarize_runs, cfg, steps, repeats, devices=devices_used,
                                environment=environment)
    timed: list[Timed] = []
    for name in (v for v in BENCH_VARIANTS if v in variants):
        timed.append(builders[name]())
        if hlo_dir and "hlo" in timed[-1].extra:
            write_text(os.path.join(hlo_dir, f"{timed[-1].name}.hlo.txt"), timed[-1].extra["hlo"])
        if snapshot:
            snapshot(summary(timed))
    for _ in range(repeats):  # interleaved
        for t in timed:
            if t.measure and len(t.times) < repeats:
                t.times.append(t.measure())
        if snapshot:
            snapshot(summary(timed))
    return summary(timed)


def summarize_runs(cfg: Config, steps: int, repeats: int, timed: list[Timed], *,
                   devices: list, environment: dict) -> dict:
    # The matmul program's count: its products are the model's multiply-adds, padding and
    # all, as FLOPs are usually counted; XLA counts fewer for its own convolutions.
    flops = next((t.extra["flops_per_step"] for name in ("jax-jit-matmul", "jax-jit-xla")
                  for t in timed if t.name == name and t.extra.get("flops_per_step")), None)
    peak = peak_flops(getattr(devices[0], "device_kind", ""), cfg.dtype)
    reference = next((statistics.median(t.times) for t in timed
                      if t.name == "torch" and t.times), None)
    stats = devices[0].memory_stats() or {}
    rows = []
    for t in timed:
        row = {"name": t.name, "framework": t.framework, "compile_s": t.compile_s,
               "repeats": len(t.times), "error": t.error}
        if t.times:
            median = statistics.median(t.times)
            row.update(step_ms_median=1e3 * median, step_ms_min=1e3 * min(t.times),
                       step_ms_max=1e3 * max(t.times), images_per_s=cfg.batch_size / median,
                       steps_per_s=1 / median,
                       ratio_to_torch=median / reference if reference else None,
                       mfu=flops / median / peak if flops and peak else None)
        row.update({k: v for k, v in t.extra.items() if k != "hlo"})
        rows.append(row)
    return {
        "config": {"batch_size": cfg.batch_size, "gen_features": cfg.gen_features,
                   "dis_features": cfg.dis_features, "latent_dim": cfg.latent_dim,
                   "image_size": cfg.image_size, "dtype": cfg.dtype, "steps": steps,
                   "repeats": repeats},
        "device": describe_device(devices),
        "flops_per_step": flops, "peak_flops": peak,
        # JAX's device memory peak, over all its variants (the torch rows have their own).
        "jax_peak_memory_bytes": stats.get("peak_bytes_in_use"),
        "host_huge_pages": runtime.huge_pages_enabled(),
        "environment": environment,
        "variants": rows,
    }


def describe_device(devices: list) -> str:
    d = devices[0]
    kind = getattr(d, "device_kind", d.platform)
    cpu = platform.processor() or platform.machine()
    if d.platform == "cpu":
        return f"{len(devices)} JAX CPU device(s) on {os.cpu_count()} cores ({cpu}, {kind})"
    return f"{len(devices)} x {kind} ({d.platform})"


def format_table(result: dict) -> str:
    c = result["config"]
    flops = result["flops_per_step"]
    lines = [f"device: {result['device']}"
             + ("; host buffers on huge pages" if result["host_huge_pages"] else ""),
             f"batch {c['batch_size']}, widths {c['gen_features']}/{c['dis_features']}, latent "
             f"{c['latent_dim']}, {c['image_size']}x{c['image_size']}, {c['dtype']}; median of "
             f"{c['repeats']} repeats of {c['steps']} steps"
             + (f"; {flops / 1e9:.3g} GFLOP per step (XLA cost analysis)" if flops else ""),
             f"{'variant':36s} {'step ms (min-max)':>24s} {'img/s':>9s} {'vs torch':>9s} "
             f"{'MFU':>6s} {'compile s':>9s}"]
    for r in result["variants"]:
        if r["error"] or not r["repeats"]:
            lines.append(f"{r['name']:36s} {r['error'] or 'not run'}")
            continue
        ratio = f"{r['ratio_to_torch']:.2f}x" if r["ratio_to_torch"] else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        span = f"{r['step_ms_median']:.2f} ({r['step_ms_min']:.2f}-{r['step_ms_max']:.2f})"
        lines.append(f"{r['name']:36s} {span:>24s} {r['images_per_s']:9.1f} {ratio:>9s} "
                     f"{mfu:>6s} {r['compile_s']:9.1f}")
    lines.append("vs torch: median step time / the eager PyTorch step's (below 1 is faster); "
                 "MFU: model FLOPs per second / the device's peak")
    return "\n".join(lines)


# -- Per-layer timing ---------------------------------------------------------------------------

def conv_layers(cfg: Config) -> list[tuple[str, object, tuple[int, ...]]]:
    """(name, module, input shape) of every convolution, in the order the networks run them."""
    found: list[tuple[str, object, tuple[int, ...]]] = []
    net = ""

    def record(call, args, kwargs, context):
        module = context.module
        if isinstance(module, (Conv, ConvTranspose)) and context.method_name == "__call__":
            found.append((f"{net}.{module.name}", module, args[0].shape))
        return call(*args, **kwargs)

    model, b, key = cfg.model, cfg.batch_size, jax.random.key(0)
    with nn.intercept_methods(record):
        net = "generator"
        jax.eval_shape(functools.partial(Generator(model).init, train=False), key,
                       jnp.zeros((b, model.latent_dim)))
        net = "discriminator"
        jax.eval_shape(functools.partial(Discriminator(model).init, train=False), key,
                       jnp.zeros((b, cfg.image_size, cfg.image_size, cfg.channels)))
    return found


def layer_times(cfg: Config, repeats: int, calls: int = 10) -> list[dict]:
    """Forward + backward time of each convolution layer in both backends, interleaved."""
    rng = np.random.default_rng(0)
    rows, runs = [], []
    for name, module, x_shape in conv_layers(cfg):
        transposed = isinstance(module, ConvTranspose)
        op = conv_transpose2d if transposed else conv2d
        k, c, o = module.kernel_size, x_shape[-1], module.features
        x = jnp.asarray(rng.standard_normal(x_shape), jnp.dtype(cfg.dtype))
        kernel = jnp.asarray(rng.standard_normal((c, k, k, o) if transposed else (k, k, c, o))
                             / np.sqrt(k * k * c), jnp.dtype(cfg.dtype))
        row = {"layer": name, "input": list(x_shape), "kernel": list(kernel.shape)}
        for backend in CONV_BACKENDS:
            loss = functools.partial(_layer_loss, op=op, stride=module.stride,
                                     padding=module.padding, backend=backend)
            fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            jax.block_until_ready(fwd_bwd(x, kernel))
            runs.append((row, backend, fwd_bwd, x, kernel))
            row[f"{backend}_ms"] = []
        rows.append(row)
    for _ in range(repeats):
        for row, backend, fwd_bwd, x, kernel in runs:
            start = time.perf_counter()
            for _ in range(calls):
                out = fwd_bwd(x, kernel)
            jax.block_until_ready(out)
            row[f"{backend}_ms"].append(1e3 * (time.perf_counter() - start) / calls)
    for row in rows:
        for backend in CONV_BACKENDS:
            row[f"{backend}_ms"] = statistics.median(row[f"{backend}_ms"])
        row["xla_over_matmul"] = row["xla_ms"] / row["matmul_ms"]
    return rows


def _layer_loss(x, kernel, *, op, stride, padding, backend):
    return jnp.sum(jnp.square(op(x, kernel, stride, padding, backend).astype(jnp.float32)))


def format_layers(rows: list[dict]) -> str:
    lines = [f"{'layer (forward + backward)':30s} {'input':>20s} {'matmul ms':>10s} "
             f"{'xla ms':>10s} {'xla/matmul':>10s}"]
    for r in rows:
        lines.append(f"{r['layer']:30s} {'x'.join(map(str, r['input'])):>20s} "
                     f"{r['matmul_ms']:10.3f} {r['xla_ms']:10.3f} {r['xla_over_matmul']:10.2f}")
    return "\n".join(lines)


# -- FID's Inception network ---------------------------------------------------------------

def fid_times(images: int, repeats: int, mode: str,
              snapshot: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Features of `images` random 64x64 images per repeat, interleaved: the network as
    shipped (PyTorch on the CPU, with PIL or NVIDIA's resampling) and in JAX on the
    default device (the first call, compilation included, is not timed). `snapshot` gets
    the rows after each round (a run cut short keeps them)."""
    from jax_dcgan.quality import metrics
    batch = np.random.default_rng(0).integers(0, 256, (images, 64, 64, 3), np.uint8)
    rows, runs = [], []
    for name, make in (("torch-cpu", metrics.TorchInception), ("jax", metrics.JaxInception)):
        row = {"name": name, "times": []}
        try:
            network = make(mode)
            row["first_call_s"] = _first_call(lambda: network(batch))
            runs.append((row, functools.partial(network, batch)))
        except Exception as e:  # e.g. no PyTorch: the other row still runs
            row["error"] = summarize(e)
        rows.append(row)
    for _ in range(repeats):
        for row, run_once in runs:
            row["times"].append(_first_call(run_once))
        _fid_rates(rows, images)
        if snapshot:
            snapshot(rows)
    return rows


def _fid_rates(rows: list[dict], images: int) -> None:
    reference = next((statistics.median(r["times"]) for r in rows
                      if r["name"] == "torch-cpu" and r["times"]), None)
    for row in rows:
        if row["times"]:
            median = statistics.median(row["times"])
            row.update(images_per_s=images / median, images_per_s_best=images / min(row["times"]),
                       ratio_to_torch=median / reference if reference else None)


def format_fid(result: dict) -> str:
    lines = [f"device: {result['device']}; FID mode {result['mode']}, {result['images']} "
             f"images per repeat, median of {result['repeats']}",
             f"{'network':12s} {'img/s (best)':>18s} {'vs torch':>9s} {'first call s':>13s}"]
    for r in result["rows"]:
        if not r["times"]:
            lines.append(f"{r['name']:12s} {r.get('error', 'not run')}")
            continue
        ratio = f"{r['ratio_to_torch']:.2f}x" if r["ratio_to_torch"] else "-"
        rate = f"{r['images_per_s']:.1f} ({r['images_per_s_best']:.1f})"
        lines.append(f"{r['name']:12s} {rate:>18s} {ratio:>9s} {r['first_call_s']:13.1f}")
    lines.append("vs torch: median time / the shipped network's on the CPU (below 1 is faster)")
    return "\n".join(lines)


def main(cfg: Config, steps: int, repeats: int, variants: tuple[str, ...] | None,
         as_json: bool, layers: bool = False, hlo_dir: str | None = None,
         loop_epochs: int = 3, json_out: str | None = None, fid_images: int | None = None
         ) -> None:
    """Print the table or JSON; with `json_out`, also keep the JSON there, rewritten as
    results come in."""
    def save(result: dict) -> None:
        if json_out:
            write_text(json_out, json.dumps(result, indent=2))

    if fid_images:
        result = {"device": describe_device(jax.local_devices()[:1]), "mode": cfg.fid_mode,
                  "images": fid_images, "repeats": repeats}
        result["rows"] = fid_times(fid_images, repeats, cfg.fid_mode,
                                   lambda rows: save({**result, "rows": rows}))
        save(result)
        print(json.dumps(result, indent=2) if as_json else format_fid(result))
        return
    if layers:
        result = {"device": describe_device(jax.local_devices()[:1]), "config": cfg.to_dict(),
                  "layers": layer_times(cfg, repeats)}
        save(result)
        print(json.dumps(result, indent=2) if as_json else format_layers(result["layers"]))
        return
    variants = variants or default_variants(jax.default_backend())
    result = run(cfg, steps, repeats, variants, cfg.devices, loop_epochs, hlo_dir,
                 save if json_out else None)
    save(result)
    print(json.dumps(result, indent=2) if as_json else format_table(result))
