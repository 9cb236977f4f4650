"""`jax-dcgan bench` on a tiny configuration: its output, not its timings."""

import json

import numpy as np
import pytest

from jax_dcgan.common import runtime
from jax_dcgan.config import BENCH_VARIANTS
from jax_dcgan.tools import bench

from .helpers import cli, cli_here

TINY_FLAGS = ["--batch-size", "8", "--gen-features", "8", "--dis-features", "8", "--latent-dim",
              "8", "--image-size", "16", "--steps", "2", "--repeats", "2"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    hlo = tmp_path_factory.mktemp("hlo")
    out = cli("bench", "--json", *TINY_FLAGS, "--hlo-dir", hlo, "--variants", "torch",
              "jax-jit-matmul", "jax-jit-xla", "jax-pmap", "jax-fused-matmul", "jax-fused-xla",
              "jax-train-loop").stdout  # a process of its own, as users start it: huge pages
    return json.loads(out), hlo


def test_bench_json_has_every_variant_with_ratios(result):
    result, _ = result
    assert result["config"]["batch_size"] == 8 and "cpu" in result["device"].lower()
    # The command line re-executed itself with huge pages wherever Linux offers them.
    assert result["host_huge_pages"] == runtime.huge_pages_available()
    names = [v["name"] for v in result["variants"]]
    assert names[:3] == ["torch", "jax-jit-matmul", "jax-jit-xla"]
    assert names[3] == "jax-pmap (4 devices)" and names[4].startswith("jax-fused-matmul (2 steps")
    assert names[5].startswith("jax-fused-xla") and names[6].startswith("jax-train-loop")
    torch_ms = result["variants"][0]["step_ms_median"]
    for v in result["variants"]:
        assert v["framework"] in ("jax", "torch") and v["error"] is None
        assert v["step_ms_min"] <= v["step_ms_median"] <= v["step_ms_max"]
        assert v["images_per_s"] > 0 and v["compile_s"] > 0 and v["repeats"] == 2
        assert v["ratio_to_torch"] == pytest.approx(v["step_ms_median"] / torch_ms, rel=1e-9)
        assert v["mfu"] is None  # no known peak for a CPU
    assert result["environment"]["versions"]["jax"]


def model_flops_per_step(batch, latent, width, image_size, channels=3) -> float:
    """Multiply-adds x 2 of the lecture's step, counted by hand: G forward, D forward three
    times; D's update goes back through its real and fake passes (weights, and inputs down
    to its first layer), G's back through D (inputs), then G (weights; inputs but the noise's)."""
    layers = int(np.log2(image_size)) - 2
    widths = [width * 2 ** i for i in range(layers)]  # D's; G's in reverse
    sizes = [image_size // 2 ** (i + 1) for i in range(layers)]  # D's output sizes
    d = [2 * batch * s * s * c_in * c_out * 16
         for s, c_in, c_out in zip(sizes, [channels] + widths[:-1], widths)]
    d.append(2 * batch * widths[-1] * 16)  # the last layer, a 4x4 window to one logit
    g = [2 * batch * latent * widths[-1] * 16] + d[1:-1][::-1] + [d[0]]  # the transposes
    G, D = sum(g), sum(d)
    return G + 3 * D + (2 * D + 2 * (D - d[0])) + (D + G + G - g[0])


def test_model_flops_formula_matches_the_lecture_figure():
    # docs/BENCHMARKS.md: ~72.8 GFLOP per step at batch 32, 291 at the lecture's batch 128.
    assert model_flops_per_step(32, 100, 64, 64) == pytest.approx(72.79e9, rel=1e-3)
    assert model_flops_per_step(128, 100, 64, 64) == pytest.approx(291.15e9, rel=1e-3)


def test_bench_reports_flops_and_library_calls(result):
    result, hlo = result
    # XLA's cost analysis of the compiled steps against the count by hand: the matmul
    # program's products are the model's multiply-adds, plus the elementwise work (BatchNorm,
    # Adam), 12% more at this tiny size, 1% at the lecture's (73.4 vs 72.8 GFLOP at batch 32);
    # for its own convolutions XLA counts fewer multiply-adds (9% less here, 13% there).
    expected = model_flops_per_step(8, 8, 8, 16)
    jit = {v["name"]: v for v in result["variants"] if v["name"].startswith("jax-jit")}
    assert result["flops_per_step"] == jit["jax-jit-matmul"]["flops_per_step"]
    assert expected < result["flops_per_step"] < 1.2 * expected
    assert 0.8 * expected < jit["jax-jit-xla"]["flops_per_step"] < expected
    assert all(v["library_calls"] == {} for v in jit.values())  # no cuDNN or cuBLAS on a CPU
    texts = {p.name: p.read_text() for p in hlo.iterdir()}
    assert set(texts) == {"jax-jit-matmul.hlo.txt", "jax-jit-xla.hlo.txt"}
    assert "convolution(" in texts["jax-jit-xla.hlo.txt"]
    assert "convolution(" not in texts["jax-jit-matmul.hlo.txt"]


def test_bench_table_and_bfloat16():
    out = cli_here("bench", *TINY_FLAGS, "--dtype", "bfloat16", "--variants", "torch",
                   "jax-jit-matmul").stdout
    assert "bfloat16" in out and "jax-jit-matmul" in out and "vs torch" in out
    assert "GFLOP per step" in out


def test_bench_layers_times_both_backends():
    result = json.loads(cli_here("bench", "--layers", "--json", *TINY_FLAGS).stdout)
    layers = [r["layer"] for r in result["layers"]]
    assert layers == ["generator.project", "generator.deconv_8x8", "generator.to_rgb",
                      "discriminator.from_rgb", "discriminator.conv_4x4", "discriminator.logit"]
    for r in result["layers"]:
        assert r["matmul_ms"] > 0 and r["xla_ms"] > 0
        assert r["xla_over_matmul"] == pytest.approx(r["xla_ms"] / r["matmul_ms"])
    assert result["layers"][1]["input"] == [8, 4, 4, 16] and result["layers"][1]["kernel"] == [
        16, 4, 4, 8]


def test_default_variants_leave_out_fused_xla_on_cpu_only():
    assert "jax-fused-xla" not in bench.default_variants("cpu")
    assert bench.default_variants("gpu") == BENCH_VARIANTS


def test_huge_pages_can_be_turned_off():
    result = json.loads(cli("bench", "--json", *TINY_FLAGS, "--variants", "jax-jit-matmul",
                            env={"JAX_DCGAN_HUGE_PAGES": "0"}).stdout)
    assert result["host_huge_pages"] is False


def test_huge_pages_read_from_glibc_tunables(monkeypatch):
    available = runtime.huge_pages_available()
    for tunables, expected in [("glibc.malloc.hugetlb=1", available),
                               ("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=2", available),
                               ("glibc.malloc.hugetlb=0", False), ("", False)]:
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
        assert runtime.huge_pages_enabled() == expected, tunables
