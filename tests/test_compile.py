"""The GPU program, compiled here without a GPU (`jax-dcgan compile`), and what it must be.

The lecture's step at batch 128 is compiled for an H200 by XLA's GPU compiler (the
CUDA plugin, which `make test` installs): float32 and bfloat16, one device and
eight, each as a 3-step call (`lax.scan`) and a one-step call. Each configuration
compiles once per session.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from jax_dcgan.common import runtime
from jax_dcgan.common.errors import UserError
from jax_dcgan.config import Config
from jax_dcgan.tools import aot, targets
from jax_dcgan.tools.hlo import Program

from .helpers import ROOT, TINY, cli_here


@pytest.fixture(scope="module", autouse=True)
def _no_persistent_cache():
    """As `jax-dcgan compile` does (tested below), for the programs of devices this machine
    lacks that these tests compile themselves."""
    with runtime.no_persistent_cache():
        yield


# The lecture's networks (../shared/SEED.md): parameter counts, and the channels of each
# BatchNorm (generator 512, 256, 128, 64; discriminator 128, 256, 512).
PARAMS = 3_576_704 + 2_765_633
G_BN, D_BN = 512 + 256 + 128 + 64, 128 + 256 + 512


def conv_passes(n: int = 4) -> int:
    """Convolution passes per step for n stride-2 layers per network (4 at 64x64; the
    generator's first and the discriminator's last layer are matrix products): G's n
    transposed convolutions forward; D forward over real+fake (one call per layer) and again
    in the generator step; D's backward for its loss: n weight gradients and n - 1 input
    gradients (the images need none); D's backward in the generator step: n input
    gradients; G's backward: n input and n weight gradients."""
    return n + 2 * n + (n + n - 1) + n + (n + n)


CONV_PASSES = conv_passes()
K = 3


@functools.lru_cache(maxsize=None)
def compiled(dtype: str, devices: int) -> dict:
    return aot.compile_variant(Config(), aot.Variant("h200", devices, dtype, "xla"), K)


CONFIGS = [("float32", 1), ("bfloat16", 1), ("float32", 8), ("bfloat16", 8)]


@pytest.mark.parametrize("dtype,devices", CONFIGS)
@pytest.mark.parametrize("program", ["counts", "single_step_counts"])
def test_every_convolution_is_a_cudnn_call(dtype, devices, program):
    report = compiled(dtype, devices)
    counts = report[program]
    assert aot.convolution_problems(counts) == []
    assert set(counts["convolutions"]) <= {"cudnn_forward", "cudnn_backward_input",
                                           "cudnn_backward_filter", "cudnn_bias_activation"}
    assert sum(counts["convolutions"].values()) == CONV_PASSES
    assert counts["convolutions"]["cudnn_backward_input"] >= 4 + 3 + 4  # transposed, dgrad
    assert report["problems"] == []


def _zero_stuffed_program(conv) -> dict:
    """`conv`'s forward and backward compiled for an H200: the counts of one call."""
    device = targets.compile_only_devices(targets.target("h200"), 1)[0]
    x = jax.ShapeDtypeStruct((8, 16, 16, 128), jnp.float32,
                             sharding=jax.sharding.SingleDeviceSharding(device))
    params = jax.eval_shape(conv.init, jax.random.key(0), x)
    params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=x.sharding),
                          params)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(conv.apply(p, x) ** 2), argnums=(0, 1)))
    return Program.read(grad.lower(params, x).compile().as_text()).per_step(1)


def test_negative_control_flax_transposed_convolution_is_zero_stuffed():
    # Flax's ConvTranspose (transpose_kernel=False, like autodiff of lax.conv_transpose) has
    # no kernel reversal, so XLA cannot map it to cuDNN's backward-data kernel: the check must
    # name it.
    counts = _zero_stuffed_program(nn.ConvTranspose(64, (4, 4), strides=(2, 2)))
    assert counts["zero_stuffed_convolutions"] >= 1
    assert any("zero-stuffed" in p for p in aot.convolution_problems(counts))


def test_data_parallel_collectives_are_the_gradient_and_batchnorm_reductions():
    for dtype in ("float32", "bfloat16"):
        one, eight = compiled(dtype, 1)["counts"], compiled(dtype, 8)["counts"]
        assert one["collectives"] == {} and one["collective_bytes"] == 0
        assert set(eight["collectives"]) == {"all-reduce"}
        # float32 all-reduces: the gradients of every parameter (float32 in both dtypes);
        # the batch mean and variance of every BatchNorm call (D's real+fake call has two
        # rows of each) and, backward, the same sizes again; the 4 metrics.
        bn_forward = 2 * G_BN + 2 * (2 * D_BN) + 2 * D_BN
        assert eight["collective_bytes"] == 4 * (PARAMS + 2 * bn_forward + 4)
        # XLA combines independent all-reduces: 42 remain with jax 0.10 (the gradients in a
        # few large ones, each BatchNorm statistic on its own because each waits for the
        # last). At most one per statistic and parameter array; at least one per
        # BatchNorm call and direction.
        bn_calls, param_arrays = 4 + 2 * 3, 13 + 13
        assert 2 * bn_calls <= eight["collectives"]["all-reduce"] <= 2 * 2 * bn_calls + (
            param_arrays + 1)


@pytest.mark.parametrize("dtype,devices", CONFIGS)
def test_state_is_donated_and_nothing_crosses_to_the_host(dtype, devices):
    report = compiled(dtype, devices)
    assert report["steps_per_dispatch"] == K
    assert report["host_transfers_in_loop"] == 0 and report["counts"]["host_transfers"] == 0
    assert report["donated_state_leaves"] == report["state_leaves"] == 103
    memory = report["memory"]
    assert memory["alias_bytes"] > 0.95 * memory["output_bytes"]
    assert memory["fraction_of_device"] < 0.02  # ~0.5 GB of 141 GB: room for the data too


def _model_flops_per_step(batch: int = 128) -> float:
    """2 x the multiply-adds of a step by hand, from the lecture's layer shapes (every window
    tap of a convolution counted, padding included)."""
    def conv(out_size, out_ch, in_ch, k=4):  # forward multiply-adds per image
        return out_size ** 2 * out_ch * k * k * in_ch

    def deconv(in_size, in_ch, out_ch, k=4):  # each input pixel times the whole kernel
        return in_size ** 2 * in_ch * k * k * out_ch

    project = 100 * 4 * 4 * 512
    g = project + deconv(4, 512, 256) + deconv(8, 256, 128) + deconv(16, 128, 64) + deconv(
        32, 64, 3)
    from_rgb = conv(32, 64, 3)
    d = from_rgb + conv(16, 128, 64) + conv(8, 256, 128) + conv(4, 512, 256) + 4 * 4 * 512
    # G: forward, input and weight gradients (none for the noise); D: three forward passes,
    # weight gradients of the real and fake passes, input gradients of those two (none for
    # the images) and of the generator step's pass (all layers: they reach the generator).
    macs = 3 * g - project + 3 * d + 2 * d + 2 * (d - from_rgb) + d
    # XLA turns the logit layer's products (one output feature: matrix-vector) into a
    # multiply and a reduction, which are not counted as products: 8 passes of 4x4x512.
    return 2.0 * batch * (macs - 8 * 4 * 4 * 512)


def test_flops_are_the_models_and_the_model_adds_its_terms():
    one, eight = compiled("bfloat16", 1), compiled("bfloat16", 8)
    assert one["counts"]["flops"] == pytest.approx(_model_flops_per_step(), rel=1e-9)
    assert 8 * eight["counts"]["flops"] == pytest.approx(one["counts"]["flops"], rel=1e-6)
    m, h200 = one["model"], targets.target("h200")
    assert m["compute_s"] == pytest.approx(one["counts"]["flops"] / 989.4e12)
    assert m["memory_s"] == pytest.approx(one["counts"]["bytes_accessed"] / h200.memory_bandwidth)
    assert m["launch_s"] == pytest.approx(one["counts"]["launches"] * aot.LAUNCH_S["cuda"])
    assert m["step_s"] == pytest.approx(max(m["compute_s"], m["memory_s"]) + m["launch_s"])
    assert one["celeba_run"]["steps"] == 20 * 1271
    assert one["celeba_run"]["minutes"] == pytest.approx(20 * 1271 * m["step_s"] / 60)
    m8, n8 = eight["model"], eight["counts"]
    assert m8["collective_s"] == pytest.approx(
        n8["collectives"]["all-reduce"] * 10e-6
        + 2 * 7 / 8 * n8["collective_bytes"] / h200.link_bandwidth)


def test_predict_by_hand():
    counts = {"flops": 989.4e9, "bytes_accessed": 4.8e9, "launches": 100,
              "collectives": {"all-reduce": 2}, "collective_bytes_by_kind": {"all-reduce": 450e6}}
    m = aot.predict(counts, targets.target("h200"), "bfloat16", devices=2)
    # 1 ms of compute, 1 ms of memory, 0.2 ms of launches, 2 x 10 us + 2*(1/2)*450 MB/450 GB/s.
    assert m["compute_s"] == pytest.approx(1e-3) and m["memory_s"] == pytest.approx(1e-3)
    assert m["collective_s"] == pytest.approx(20e-6 + 1e-3)
    assert m["step_s"] == pytest.approx(1e-3 + 0.2e-3 + 1.02e-3)
    assert m["bound_by"] == "collectives"
    # No float64 peak for a TPU: the prediction stands on memory alone, and no MFU.
    tpu = aot.predict({**counts, "collectives": {}, "collective_bytes_by_kind": {}},
                      targets.target("v5e"), "float64", devices=1)
    assert tpu["compute_s"] is None and tpu["mfu"] is None
    assert tpu["step_s"] == pytest.approx(4.8e9 / 819e9)


def test_peak_flops_of_known_devices():
    assert targets.peak_flops("NVIDIA H200", "bfloat16") == 989.4e12
    assert targets.peak_flops("NVIDIA H200", "float32") == 494.7e12  # TF32, JAX's default
    assert targets.peak_flops("NVIDIA H100 PCIe", "float32") == 378e12
    assert targets.peak_flops("TPU v5 lite", "float64") is None
    assert targets.peak_flops("cpu", "float32") is None
    assert targets.of_device_kind("NVIDIA H100 80GB HBM3").name == "h100"
    assert targets.of_device_kind("TPU v6 lite").name == "v6e"
    assert targets.of_device_kind("cpu") is None


def test_a_missing_compiler_is_named(monkeypatch):
    monkeypatch.setattr(targets.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"jax-dcgan\[gpu-compile\]"):
        targets.compile_only_devices(targets.target("h100"), 1)
    with pytest.raises(UserError, match=r"jax-dcgan\[tpu-compile\]"):
        targets.compile_only_devices(targets.target("v5e"), 1)


def test_cli_json_and_no_traceback_from_the_installed_plugin(tmp_path):
    # The CUDA plugin is installed here and no GPU is: without the tool's own setting, every
    # JAX start would log a cuDNN traceback. The command's child process gets none of this
    # session's settings for it (on a GPU host it keeps the CPU platform the suite runs on).
    unset = ("JAX_SKIP_CUDA_CONSTRAINTS_CHECK",) + (
        () if runtime._nvidia_gpu_present() else ("JAX_PLATFORMS",))
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "xla")  # which the command leaves unused
    flags = ["--batch-size", "8", "--gen-features", "8", "--dis-features", "8",
             "--latent-dim", "8", "--image-size", "16"]
    done = subprocess.run(
        [sys.executable, "-m", "jax_dcgan.cli", "compile", "--target", "h100", "--json",
         "--steps-per-dispatch", "2", "--hlo-dir", str(tmp_path / "hlo"), "--measure", "1",
         "--conv-impl", "matmul", *flags], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    result = json.loads(done.stdout)
    (variant,) = result["variants"]
    assert variant["label"] == "h100-1dev-float32-matmul" and variant["steps_per_dispatch"] == 2
    assert variant["counts"]["gemms"]["triton_gemm"] > 0 and not variant["counts"]["convolutions"]
    assert variant["measured"]["device_kind"] == "cpu"  # the CPU still runs JAX's programs
    assert sorted(os.listdir(tmp_path / "hlo")) == [
        "h100-1dev-float32-matmul-1step.hlo.txt", "h100-1dev-float32-matmul-2step.hlo.txt"]
    assert result["model_assumptions"]["targets"]["h100"]["peak_tflops"]["bfloat16"] == 989.4
    assert not (tmp_path / "xla").exists() or not os.listdir(tmp_path / "xla")


def test_quiet_only_where_the_device_is_absent(monkeypatch):
    names = ("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "TPU_SKIP_MDS_QUERY", "TPU_WORKER_HOSTNAMES")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "_nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(runtime, "_tpu_present", lambda: True)
    runtime.quiet_absent_accelerators()
    assert not any(name in os.environ for name in names)
    monkeypatch.setattr(runtime, "_nvidia_gpu_present", lambda: False)
    monkeypatch.setattr(runtime, "_tpu_present", lambda: False)
    runtime.quiet_absent_accelerators()
    assert os.environ["JAX_SKIP_CUDA_CONSTRAINTS_CHECK"] == "1"
    assert os.environ["TPU_SKIP_MDS_QUERY"] == "1"
    assert os.environ["TPU_WORKER_HOSTNAMES"] == "localhost"


def test_bad_flags_are_one_paragraph(tmp_path):
    (tmp_path / "f").write_text("")
    for flags, message in ((["--devices", "0"], "--devices must be at least 1"),
                           (["--devices", "16"], "one h200 host has 8 chips"),
                           (["--batch-size", "12", "--devices", "8"], "does not split evenly"),
                           (["--target", "v5e", "--dtype", "float64"], "float64"),
                           (["--hlo-dir", str(tmp_path / "f")], "is a file"),
                           (["--json-out", str(tmp_path)], "is a directory"),
                           (["--measure", "0"], "--measure must be at least 1"),
                           (["--measure", "1", "--dtype", "float64"], "leave out float64"),
                           (["--measure", "1", "--devices", "8"], "lower --devices"),
                           (["--target", "local"], "none of the targets"),
                           (["--batch-size", "200000"], "more than CelebA's"),
                           (["--batch-size", "8", "--gen-features", "1000000000000"],
                            "lower some of them")):
        done = cli_here("compile", *flags, check=False)
        assert done.returncode == 2 and message in done.stderr, (flags, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(
            "jax-dcgan compile: error: "), done.stderr  # one paragraph, no traceback
    assert (tmp_path / "f").read_text() == ""  # what was there is left as it was
    # In a process of its own, as users start it: nothing from JAX's start (a plugin's
    # traceback, a warning) comes before or after the paragraph.
    done = subprocess.run([sys.executable, "-m", "jax_dcgan.cli", "compile", "--devices", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith(
        "jax-dcgan compile: error: --devices must be at least 1"), done.stderr


def test_tiny_config_compiles_for_every_gpu_target():
    for name in ("h100", "h200", "a100"):
        report = aot.compile_variant(TINY, aot.Variant(name, 1, "float32", "auto"), 1)
        counts = report["counts"]
        assert report["conv_impl"] == "xla" and report["problems"] == []
        assert report["device_kind"] == targets.target(name).device_kind
        assert sum(counts["convolutions"].values()) == conv_passes(TINY.model.num_upsamplings)
        assert counts["collectives"] == {} and counts["flops"] > 0 and counts["launches"] > 50
