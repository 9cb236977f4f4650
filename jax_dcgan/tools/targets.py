"""The accelerators a training step can be compiled for without one: what each is, its
datasheet peaks, and compile-only JAX devices of it.

XLA's GPU compiler needs no GPU: given a description of the device (a
`stream_executor.GpuTargetConfigProto`, the properties CUDA reports for it), the
CUDA PJRT plugin makes compile-only devices, and `jit(...).lower(...).compile()`
runs the whole GPU pipeline for them (cuDNN rewrites, layouts, fusion,
scheduling, PTX). Autotuning needs the device, so algorithm choices are left to
it. The descriptions here are written from NVIDIA's datasheets and the CUDA device
properties of each GPU (the field names are those of XLA's proto, whose published
specs, openxla/xla `xla/backends/gpu/target_config/specs/`, carry the same values);
fields an older jaxlib cannot parse are optional and left out when it refuses them.
TPUs need `libtpu`, which compiles for named topologies on any machine.

Peaks are dense (no sparsity) per chip: float32 as JAX runs it by default, which is
TF32 on NVIDIA GPUs since Ampere and bfloat16 passes on TPUs; float64 without tensor
cores.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

from jax_dcgan.common.errors import UserError, summarize

__all__ = ["TARGETS", "Target", "compile_only_devices", "of_device_kind", "peak_flops", "target"]

KiB, MiB, GiB = 2 ** 10, 2 ** 20, 2 ** 30

# Dense datasheet TFLOP/s per chip by device kind (jax.Device.device_kind), checked in order,
# the first contained name wins: (bfloat16, float32 as JAX runs it, float64 or None).
PEAK_TFLOPS = (("H100 PCIe", (756, 378, 25.6)), ("H100 NVL", (835, 418, 30)),
               ("H100", (989.4, 494.7, 33.5)), ("H200 NVL", (835, 418, 30)),
               ("H200", (989.4, 494.7, 33.5)), ("A100", (312, 156, 9.7)), ("L4", (121, 60, None)),
               ("TPU v4", (275, 275, None)), ("TPU v5 lite", (197, 197, None)),
               ("TPU v5", (459, 459, None)), ("TPU v6 lite", (918, 918, None)))


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """FLOP/s of a chip for `dtype`, where the table knows it."""
    for name, peaks in PEAK_TFLOPS:
        if name in device_kind:
            tflops = dict(zip(("bfloat16", "float32", "float64"), peaks)).get(dtype)
            return 1e12 * tflops if tflops else None
    return None


@dataclasses.dataclass(frozen=True)
class GpuProperties:
    """What CUDA reports of a GPU (cudaDeviceProp) and XLA's compiler uses."""
    compute_capability: tuple[int, int]
    accelerated_features: bool   # sm_90a: Hopper's wgmma and TMA
    sm_count: int
    fp32_cores_per_sm: int
    clock_ghz: float
    l2_bytes: int
    shared_memory_per_sm: int
    shared_memory_per_block_optin: int
    cudnn: tuple[int, int]       # the cuDNN version the program is written for

    def proto(self, target: "Target", optional: bool = True) -> str:
        """The GpuTargetConfigProto in text form; `optional` False leaves out fields that
        older jaxlibs do not know."""
        major, minor = self.compute_capability
        extension = (" feature_extension: ACCELERATED_FEATURES"
                     if optional and self.accelerated_features else "")
        fields = {
            "threads_per_block_limit": 1024, "threads_per_warp": 32,
            "shared_memory_per_block": 48 * KiB,
            "shared_memory_per_core": self.shared_memory_per_sm,
            "shared_memory_per_block_optin": self.shared_memory_per_block_optin,
            "threads_per_core_limit": 2048, "core_count": self.sm_count,
            "fpus_per_core": self.fp32_cores_per_sm,
            "block_dim_limit_x": 2 ** 31 - 1, "block_dim_limit_y": 65535,
            "block_dim_limit_z": 65535, "thread_dim_limit_x": 1024, "thread_dim_limit_y": 1024,
            "thread_dim_limit_z": 64, "memory_bandwidth": int(target.memory_bandwidth),
            "l2_cache_size": self.l2_bytes, "clock_rate_ghz": self.clock_ghz,
            "device_memory_size": target.memory_bytes, "registers_per_core_limit": 65536,
            "registers_per_block_limit": 65536,
        }
        lines = [f"  {name}: {value}" for name, value in fields.items()]
        lines += [f"  cuda_compute_capability {{ major: {major} minor: {minor}{extension} }}",
                  '  device_vendor: "NVIDIA Corporation"', f'  name: "{target.device_kind}"']
        return "\n".join([
            "gpu_device_info {", *lines, "}", 'platform_name: "CUDA"',
            f"dnn_version_info {{ major: {self.cudnn[0]} minor: {self.cudnn[1]} }}",
            f'device_description_str: "{target.device_kind}"', ""])


@dataclasses.dataclass(frozen=True)
class Target:
    """An accelerator to compile for: its datasheet peaks, memory and XLA target description."""
    name: str
    device_kind: str                  # as jax.Device.device_kind names it
    platform: str                     # "cuda" or "tpu"
    memory_bytes: int
    memory_bandwidth: float           # bytes/s
    link_bandwidth: float             # bytes/s each way per chip (NVLink, ICI)
    devices_per_host: int
    source: str
    gpu: GpuProperties | None = None
    tpu_topology: str = ""            # libtpu's name of one host's chips, e.g. "v5e:2x2"

    def peak_flops(self, dtype: str) -> float | None:
        return peak_flops(self.device_kind, dtype)


_HOPPER = dict(compute_capability=(9, 0), accelerated_features=True, sm_count=132,
               fp32_cores_per_sm=128, clock_ghz=1.98, l2_bytes=50 * MiB,
               shared_memory_per_sm=228 * KiB, shared_memory_per_block_optin=227 * KiB,
               cudnn=(9, 10))
_NVIDIA = ("NVIDIA datasheets: {} (dense tensor-core TFLOP/s, HBM bandwidth, NVLink); SM count, "
           "clock, L2 and shared memory from the CUDA device properties")

TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("h100", "NVIDIA H100 80GB HBM3", "cuda", 80 * GiB, 3.35e12, 450e9, 8,
           _NVIDIA.format("H100 SXM5 80GB"), GpuProperties(**_HOPPER)),
    Target("h200", "NVIDIA H200", "cuda", 141 * GiB, 4.8e12, 450e9, 8,
           _NVIDIA.format("H200 SXM 141GB"), GpuProperties(**_HOPPER)),
    Target("a100", "NVIDIA A100-SXM4-80GB", "cuda", 80 * GiB, 2.039e12, 300e9, 8,
           _NVIDIA.format("A100 SXM4 80GB"),
           GpuProperties(compute_capability=(8, 0), accelerated_features=False, sm_count=108,
                         fp32_cores_per_sm=64, clock_ghz=1.41, l2_bytes=40 * MiB,
                         shared_memory_per_sm=164 * KiB,
                         shared_memory_per_block_optin=163 * KiB, cudnn=(9, 10))),
    Target("v5e", "TPU v5 lite", "tpu", 16 * GiB, 819e9,
           200e9, 4, "Google Cloud TPU v5e documentation (bf16 TFLOP/s, HBM, ICI)",
           tpu_topology="v5e:2x2"),
    Target("v6e", "TPU v6 lite", "tpu", 32 * GiB, 1640e9,
           400e9, 4, "Google Cloud TPU v6e (Trillium) documentation (bf16 TFLOP/s, HBM, ICI)",
           tpu_topology="v6e:2x2"),
)}


def target(name: str) -> Target:
    if name not in TARGETS:
        raise UserError(f"Unknown target {name!r}; the targets are {', '.join(TARGETS)}.")
    return TARGETS[name]


def of_device_kind(kind: str) -> Target | None:
    """The target a real device is, by its jax.Device.device_kind, if any: the same name, or
    that name with more detail (not another part of the same family, such as an H100 PCIe or
    an H200 NVL, whose peaks and bandwidths differ)."""
    for t in TARGETS.values():
        detail = kind[len(t.device_kind):] if kind.startswith(t.device_kind) else None
        if detail == "" or (detail and detail.startswith(" ")
                            and not any(other in detail for other in ("PCIe", "NVL"))):
            return t
    return None


def check_compiler(t: Target) -> None:
    """A UserError naming the package to install when `t`'s compiler is missing."""
    if t.platform == "cuda" and not any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}")
                                        for v in (13, 12)):
        raise UserError(
            f"Compiling for {t.name} needs XLA's GPU compiler, which is not installed: pip "
            "install 'jax-dcgan[gpu-compile]' (jax's CUDA 13 plugin at jax's version, without "
            "CUDA's libraries; no GPU is needed).")
    if t.platform == "tpu" and not importlib.util.find_spec("libtpu"):
        raise UserError(
            f"Compiling for {t.name} needs libtpu, which is not installed: pip install "
            "'jax-dcgan[tpu-compile]' (no TPU is needed).")


def compile_only_devices(t: Target, count: int) -> list[Any]:
    """`count` compile-only devices of `t` on one host (no such device needed)."""
    from jax.experimental import topologies

    check_compiler(t)
    if count > t.devices_per_host:
        raise UserError(f"--devices {count}: one {t.name} host has {t.devices_per_host} chips; "
                        f"give 1 to {t.devices_per_host}.")
    if t.platform == "tpu":
        try:
            return list(topologies.get_topology_desc(t.tpu_topology, "tpu").devices)[:count]
        except Exception as e:  # JaxRuntimeError from libtpu
            raise UserError(f"libtpu could not describe {t.name} ({summarize(e)}); libtpu must "
                            "be the version jax asks for: pip install 'jax-dcgan[tpu-compile]'."
                            ) from None
    errors = []
    for optional in (True, False):  # an older jaxlib may not know every field
        try:
            return list(topologies.get_topology_desc(
                t.name, "cuda", target_config=t.gpu.proto(t, optional),
                topology=f"1x1x{count}").devices)
        except Exception as e:  # JaxRuntimeError, or NotImplementedError from old plugins
            errors.append(summarize(e, 200))
    raise UserError(f"XLA's GPU compiler did not accept the {t.name} description "
                    f"({'; without its optional fields: '.join(errors)}); the installed jax and "
                    "its CUDA plugin must have the same version.")
