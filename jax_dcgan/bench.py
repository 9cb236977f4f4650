"""Side-by-side timing of the training step: PyTorch reference vs the JAX variants.

Every variant runs the same configuration on this machine in one process.
Compilation and warm-up are excluded from the timed part (and reported); the
timed repeats are interleaved across variants so that drift in the machine's
speed hits all of them alike; each figure is the median (min, max) over repeats
of a block of `steps` steps.

Variants: `torch` (the lecture's eager step), `jax-jit` (one step per call, one
device), `jax-pmap` (one step per call on every local device), `jax-fused`
(`steps` steps per call with `lax.scan`, batches gathered on the device from a
device-resident dataset: the training loop's fast path) and `jax-train-loop`
(`jax-dcgan train` itself on device-resident synthetic data, its steady rate).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
from typing import Callable

import jax
import numpy as np

from jax_dcgan import hostmem
from jax_dcgan.config import Config
from jax_dcgan.errors import UserError
from jax_dcgan.step import (create_train_state, device_sharding, jit_train_steps,
                            pmap_train_steps, replicate)



@dataclasses.dataclass
class Timed:
    name: str
    framework: str
    run_block: Callable[[], None] | None  # runs `steps` steps and waits for them
    compile_s: float
    times: list[float] = dataclasses.field(default_factory=list)  # seconds per step
    peak_memory_bytes: int | None = None


def _images(cfg: Config, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, 256, (n, cfg.image_size, cfg.image_size, cfg.channels), np.uint8)


def _first_call(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def torch_variant(cfg: Config, steps: int) -> Timed:
    import torch

    from torch_reference import DCGAN, make_optimizers, train_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.seed)
    model = DCGAN(cfg.latent_dim, cfg.gen_features, cfg.dis_features, cfg.channels,
                  cfg.image_size).to(device)
    opt_g, opt_d = make_optimizers(model, cfg.lr_g, cfg.lr_d, (cfg.beta1, cfg.beta2), cfg.eps)
    real = torch.from_numpy(_images(cfg, cfg.batch_size)).to(device).permute(0, 3, 1, 2)
    real = real.float().div(255).sub(0.5).div(0.5).contiguous()
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if cfg.dtype == "bfloat16"
                else torch.autocast(device, enabled=False))

    def block():
        with autocast:
            for _ in range(steps):
                train_step(model, opt_g, opt_d, real)  # .item() in it syncs every step
        if device == "cuda":
            torch.cuda.synchronize()

    timed = Timed("torch", "torch", block, _first_call(block))
    if device == "cuda":
        timed.peak_memory_bytes = torch.cuda.max_memory_allocated()
    return timed


def _stepping(step, state, batch, steps: int):
    """A timed block: `steps` calls of `step` on one batch, carrying the state across blocks."""
    box = [state]

    def block():
        state = box[0]
        for _ in range(steps):
            state, metrics = step(state, batch)
        box[0] = state
        jax.block_until_ready(metrics)

    return block


def jit_variant(cfg: Config, steps: int) -> Timed:
    device = jax.local_devices()[0]
    step = jit_train_steps(cfg)
    batch = jax.device_put(_images(cfg, cfg.batch_size)[None], device)
    block = _stepping(step, jax.device_put(create_train_state(cfg), device), batch, steps)
    return Timed("jax-jit", "jax", block, _first_call(block))


def pmap_variant(cfg: Config, steps: int, devices: list) -> Timed:
    d = len(devices)
    step = pmap_train_steps(cfg, devices)
    batch = jax.device_put(_images(cfg, cfg.batch_size).reshape(d, 1, cfg.batch_size // d,
                                                                *([cfg.image_size] * 2), -1),
                           device_sharding(devices))
    block = _stepping(step, replicate(create_train_state(cfg), devices), batch, steps)
    return Timed(f"jax-pmap ({d} device{'s' if d > 1 else ''})", "jax", block, _first_call(block))


def fused_variant(cfg: Config, steps: int) -> Timed:
    from jax_dcgan.train import Batches

    device = jax.local_devices()[0]
    dataset = _images(cfg, cfg.batch_size * steps * 2)
    batches = Batches(dataset, cfg.replace(steps_per_dispatch=steps), [device], resident=True)
    step = jit_train_steps(cfg)
    box = [jax.device_put(create_train_state(cfg), device), 0]

    def block():
        state, start = box
        state, metrics = step(state, batches.get(start, steps, 2 * steps))
        box[:] = [state, (start + steps) % (2 * steps)]
        jax.block_until_ready(metrics)

    return Timed(f"jax-fused ({steps} steps/call)", "jax", block, _first_call(block))


def train_loop_rate(cfg: Config, steps: int, repeats: int) -> Timed:
    """`jax-dcgan train` itself: its steady-state step time from its own metrics."""
    from jax_dcgan import plots
    from jax_dcgan.train import train

    blocks = repeats + 1
    run_cfg = cfg.replace(dataset="synthetic", num_synthetic=cfg.batch_size * steps * blocks,
                          steps=steps * blocks, epochs=1, log_every=steps,
                          checkpoint_every=steps * blocks, steps_per_dispatch=steps,
                          data_on_device="yes", devices=1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(run_cfg.replace(cache_dir=tmp), f"{tmp}/run", quiet=True)
        total = time.perf_counter() - start
        records = plots.read_metrics(f"{tmp}/run/metrics.jsonl")
    rates = [r["images_per_s"] for r in records[steps::steps]]  # one per block after the first
    timed = Timed("jax-train-loop", "jax", None, total)
    timed.times = [cfg.batch_size / rate for rate in rates]
    return timed


def run(cfg: Config, steps: int, repeats: int, variants: tuple[str, ...], devices: int) -> dict:
    local = jax.local_devices()
    devices_used = local[:devices or len(local)]
    if cfg.batch_size % len(devices_used):
        raise UserError(f"--batch-size {cfg.batch_size} does not split over "
                        f"{len(devices_used)} devices; use a multiple or --devices.")
    builders = {"torch": lambda: torch_variant(cfg, steps),
                "jax-jit": lambda: jit_variant(cfg, steps),
                "jax-pmap": lambda: pmap_variant(cfg, steps, devices_used),
                "jax-fused": lambda: fused_variant(cfg, steps)}
    timed = [builders[v]() for v in variants if v in builders]
    for _ in range(repeats):  # interleaved
        for t in timed:
            start = time.perf_counter()
            t.run_block()
            t.times.append((time.perf_counter() - start) / steps)
    if "jax-train-loop" in variants:
        timed.append(train_loop_rate(cfg, steps, repeats))
    stats = jax.local_devices()[0].memory_stats() or {}
    for t in timed:
        if t.framework == "jax" and "peak_bytes_in_use" in stats:
            t.peak_memory_bytes = stats["peak_bytes_in_use"]  # the process's peak, all variants

    reference = next((statistics.median(t.times) for t in timed if t.framework == "torch"), None)
    rows = []
    for t in timed:
        median = statistics.median(t.times)
        rows.append({
            "name": t.name, "framework": t.framework,
            "step_ms_median": 1e3 * median, "step_ms_min": 1e3 * min(t.times),
            "step_ms_max": 1e3 * max(t.times), "images_per_s": cfg.batch_size / median,
            "steps_per_s": 1 / median,
            "ratio_to_torch": median / reference if reference else None,
            "compile_s": t.compile_s, "peak_memory_bytes": t.peak_memory_bytes,
            "repeats": len(t.times)})
    return {
        "config": {"batch_size": cfg.batch_size, "gen_features": cfg.gen_features,
                   "dis_features": cfg.dis_features, "latent_dim": cfg.latent_dim,
                   "image_size": cfg.image_size, "dtype": cfg.dtype, "steps": steps,
                   "repeats": repeats},
        "device": describe_device(devices_used),
        "host_huge_pages": hostmem.enabled(),
        "versions": _versions(),
        "variants": rows,
    }


def describe_device(devices: list) -> str:
    d = devices[0]
    kind = getattr(d, "device_kind", d.platform)
    cpu = platform.processor() or platform.machine()
    if d.platform == "cpu":
        return f"{len(devices)} JAX CPU device(s) on {os.cpu_count()} cores ({cpu}, {kind})"
    return f"{len(devices)} x {kind} ({d.platform})"


def _versions() -> dict:
    versions = {"jax": jax.__version__, "python": platform.python_version()}
    try:
        import torch
        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return versions


def format_table(result: dict) -> str:
    c = result["config"]
    lines = [f"device: {result['device']}"
             + ("; host buffers on huge pages" if result["host_huge_pages"] else ""),
             f"batch {c['batch_size']}, widths {c['gen_features']}/{c['dis_features']}, latent "
             f"{c['latent_dim']}, {c['image_size']}x{c['image_size']}, {c['dtype']}; median of "
             f"{c['repeats']} repeats of {c['steps']} steps",
             f"{'variant':30s} {'step ms (min-max)':>24s} {'img/s':>9s} {'vs torch':>9s} "
             f"{'compile s':>9s}"]
    for r in result["variants"]:
        ratio = f"{r['ratio_to_torch']:.2f}x" if r["ratio_to_torch"] else "-"
        span = f"{r['step_ms_median']:.1f} ({r['step_ms_min']:.1f}-{r['step_ms_max']:.1f})"
        lines.append(f"{r['name']:30s} {span:>24s} {r['images_per_s']:9.1f} {ratio:>9s} "
                     f"{r['compile_s']:9.1f}")
    lines.append("vs torch: this variant's median step time / PyTorch's (below 1 is faster)")
    return "\n".join(lines)


def main(cfg: Config, steps: int, repeats: int, variants: tuple[str, ...], as_json: bool) -> None:
    result = run(cfg, steps, repeats, variants, cfg.devices)
    print(json.dumps(result, indent=2) if as_json else format_table(result))

