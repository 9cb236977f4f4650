"""How this process runs XLA: transparent huge pages for its host buffers on Linux, threads
enough for collectives over several CPU devices, and JAX's persistent compilation cache;
what it holds of the host (memory, open files).

Huge pages: XLA's CPU runtime allocates every step's intermediates afresh and glibc maps and
unmaps them with 4 KiB pages: up to 70,000 page faults per step of the lecture's
model at batch 32 on this project's 2-core machine. With glibc's
`glibc.malloc.hugetlb=1` tunable, malloc asks for transparent huge pages and the
faults drop more than tenfold (docs/BENCHMARKS.md).
The tunable is read when a process starts, so the command-line tool re-executes
itself once with it set, as PyTorch's CPU launcher (`torch.backends.xeon.run_cpu`)
relaunches with a tuned allocator. `JAX_DCGAN_HUGE_PAGES=0` turns this off.

The compilation cache keeps compiled programs on disk, so that a resume or a
second run of the same configuration loads them instead of compiling again (a
step program of the lecture's model takes about 20 s to compile on this project's
CPU: the bench's compile column, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from typing import Iterator

from jax_dcgan.common.errors import UserError

__all__ = ["check_images_fit", "device_free_bytes", "enable_compilation_cache", "float64_mode",
           "force_host_devices", "host_usage", "huge_pages_enabled", "no_persistent_cache",
           "quiet_absent_accelerators", "reexec_with_huge_pages", "threads_for_host_collectives"]

TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    """Linux with transparent huge pages not switched off."""
    return sys.platform == "linux" and _thp_available()


def huge_pages_enabled() -> bool:
    """Whether this process started with huge pages requested from malloc."""
    return _tunables().get(TUNABLE, "0") != "0" and huge_pages_available()


def _tunables() -> dict[str, str]:
    pairs = (item.partition("=") for item in os.environ.get("GLIBC_TUNABLES", "").split(":"))
    return {name: value for name, _, value in pairs if name}


def _thp_available() -> bool:
    try:
        with open(_THP_MODE) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command with the tunable set (same PID, so
    signals and exit codes are unchanged); returns only where that does not apply."""
    if (not huge_pages_available() or not sys.executable or TUNABLE in _tunables()
            or os.environ.get("JAX_DCGAN_HUGE_PAGES") == "0"):
        return
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), f"{TUNABLE}=1"]))
    try:
        os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": tunables})
    except OSError:
        pass  # carry on with the default allocator


def _nvidia_gpu_present() -> bool:
    """JAX's own test (jax_plugins' CUDA check): the driver's device files."""
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg"))


def _tpu_present() -> bool:
    """A Google TPU on the PCI bus (vendor 0x1ae0), as JAX's hardware_utils looks for one."""
    try:
        names = os.listdir("/sys/bus/pci/devices")
    except OSError:
        return False
    for name in names:
        try:
            with open(f"/sys/bus/pci/devices/{name}/vendor") as f:
                if f.read().strip().lower() == "0x1ae0":
                    return True
        except OSError:
            continue
    return False


def quiet_absent_accelerators() -> None:
    """Keep the compilers of accelerators this machine lacks from logging at every JAX start.

    `jax-dcgan compile` needs XLA's GPU compiler (the CUDA plugin) or libtpu on any machine;
    installed where no such device is, the plugin's library check prints a traceback and
    libtpu its host queries before JAX falls back to the CPU. Where no NVIDIA GPU (no driver
    device files) or no TPU (none on the PCI bus) is, the check is skipped and libtpu told
    it is on one host; a machine with the device is left as it is. Call before JAX
    initialises its backends."""
    if not _nvidia_gpu_present():
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    if not _tpu_present():
        for name, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                            ("TPU_ACCELERATOR_TYPE", "v5litepod-4")):
            os.environ.setdefault(name, value)


def host_device_count() -> int:
    """The CPU devices this process's environment asks XLA for (XLA_FLAGS'
    --xla_force_host_platform_device_count, or JAX_NUM_CPU_DEVICES); 1 when it asks none."""
    counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)",
                        os.environ.get("XLA_FLAGS", ""))
    counts += re.findall(r"^\d+$", os.environ.get("JAX_NUM_CPU_DEVICES", "").strip())
    return int(counts[-1]) if counts else 1


def force_host_devices(count: int) -> None:
    """`count` CPU devices for this process and its children, with threads enough for their
    collectives. Call before JAX initialises its backends."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={count}").strip()
    threads_for_host_collectives()


def threads_for_host_collectives() -> None:
    """With several CPU devices (the tests' 4, `jax-dcgan parity`'s), give XLA's CPU client a
    thread per device beyond the cores. Call before JAX initialises its backends.

    A collective over N CPU devices is N computations that wait for each other, each on one
    of the client's threads, and the client has max(cores, N) of them (PJRT_NPROC, else
    NPROC, stands for the cores). With 4 devices on 2 cores, a thread held by anything else
    can leave a participant without one, and it stays so when that holder waits in turn: a
    run froze at an epoch end, its feeding thread's batch launch waiting for room on a device
    that the loop had filled with copies queued behind the starved collective. The extra
    threads are headroom for such waiters, not a proof that none can form."""
    devices = host_device_count()
    if devices < 2:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    wanted = (cores or 1) + devices
    given = next((os.environ[name] for name in ("PJRT_NPROC", "NPROC") if name in os.environ),
                 "")
    if not given.isdigit() or int(given) < wanted:
        os.environ["PJRT_NPROC"] = str(wanted)


def enable_compilation_cache(cache_root: str) -> None:
    """JAX's persistent compilation cache in `<cache_root>/xla`, unless one is configured
    already (JAX_COMPILATION_CACHE_DIR or jax.config), which is then kept. JAX opens the
    cache once per process, so the first directory set stays in use for the whole process."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(cache_root, "xla"))


@contextlib.contextmanager
def no_persistent_cache() -> Iterator[None]:
    """Compile without JAX's persistent cache, for programs of devices this machine lacks:
    JAX would store them, then fail to load them back (a warning, and a compile again).
    JAX decides once per process whether to use the cache, so that decision is reset on
    the way in and on the way out; the setting is the process's, so no other thread
    should be compiling meanwhile."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", previous)
        compilation_cache.reset_cache()


@contextlib.contextmanager
def float64_mode(dtype: str) -> Iterator[None]:
    """JAX's 64-bit mode for a --dtype float64 run, and only for it: without it JAX
    computes in float32 whatever the arrays were asked to be."""
    if dtype != "float64":
        yield
        return
    import jax

    if jax.default_backend() == "tpu":
        raise UserError("--dtype float64 is not available on TPUs (they have no float64 "
                        "convolutions); use float32, or bfloat16 for speed.")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def available_host_bytes() -> float:
    """Host memory available now without swapping: the kernel's MemAvailable (free pages and
    the page cache it can drop) where /proc has it, else the free pages alone, else (macOS)
    unknown, as inf: what needs it is then not refused."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return math.inf


def device_free_bytes(device) -> float:
    """Memory free on `device`: its allocator's limit less what is in use, or the host's for
    devices that report none (CPUs)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return available_host_bytes()


def check_images_fit(num: int, image_size: int, channels: int, asked: str = "") -> None:
    """A UserError when `num` float32 images would not fit in the host's free memory (they
    are gathered there to be written), before any is generated. `asked`: the flags that
    ask for them (default `--num NUM`)."""
    need = num * image_size * image_size * channels * 4
    free = available_host_bytes()
    if need > free:
        raise UserError(f"{asked or f'--num {num}'}: {num} images of "
                        f"{image_size}x{image_size}x{channels} "
                        f"need {need / 2**30:.3g} GiB, and this machine has {free / 2**30:.3g} "
                        f"GiB free; ask for fewer.")


def host_usage() -> dict[str, float]:
    """This process's resident memory (MiB) and open file descriptors (files, sockets,
    pipes), where /proc has them (Linux): recorded at each epoch end, so that a long run
    shows any growth."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
        open_fds = len(os.listdir("/proc/self/fd"))
    except (OSError, ValueError, IndexError):
        return {}
    return {"rss_mib": round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1),
            "open_fds": open_fds}
