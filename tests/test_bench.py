"""`jax-dcgan bench` on a tiny configuration: its output, not its timings."""

import json

from jax_dcgan import hostmem

from .helpers import cli

TINY_FLAGS = ["--batch-size", "8", "--gen-features", "8", "--dis-features", "8", "--latent-dim",
              "8", "--image-size", "16", "--steps", "2", "--repeats", "2"]


def test_bench_json_has_every_variant_with_ratios():
    result = json.loads(cli("bench", "--json", *TINY_FLAGS).stdout)
    assert result["config"]["batch_size"] == 8 and "cpu" in result["device"].lower()
    # The command line re-executed itself with huge pages wherever Linux offers them.
    assert result["host_huge_pages"] == hostmem.available()
    names = [v["name"] for v in result["variants"]]
    assert names[0] == "torch" and any(n.startswith("jax-pmap (4 devices)") for n in names)
    assert {"jax-jit", "jax-train-loop"} <= set(names) and any("fused" in n for n in names)
    for v in result["variants"]:
        assert v["framework"] in ("jax", "torch")
        assert v["step_ms_min"] <= v["step_ms_median"] <= v["step_ms_max"]
        assert v["images_per_s"] > 0 and v["compile_s"] > 0 and v["repeats"] == 2
        assert abs(v["ratio_to_torch"] - v["step_ms_median"] / result["variants"][0]["step_ms_median"]) < 1e-9


def test_bench_table_and_bfloat16():
    out = cli("bench", *TINY_FLAGS, "--dtype", "bfloat16", "--variants", "torch", "jax-jit").stdout
    assert "bfloat16" in out and "jax-jit" in out and "vs torch" in out


def test_huge_pages_can_be_turned_off():
    result = json.loads(cli("bench", "--json", *TINY_FLAGS, "--variants", "jax-jit",
                            env={"JAX_DCGAN_HUGE_PAGES": "0"}).stdout)
    assert result["host_huge_pages"] is False


def test_huge_pages_read_from_glibc_tunables(monkeypatch):
    available = hostmem.available()
    for tunables, expected in [("glibc.malloc.hugetlb=1", available),
                               ("glibc.malloc.arena_max=1:glibc.malloc.hugetlb=2", available),
                               ("glibc.malloc.hugetlb=0", False), ("", False)]:
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
        assert hostmem.enabled() == expected, tunables
