"""scripts/gpu_check.py --cpu-smoke: the device check's code paths, before a GPU run uses them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from .helpers import ROOT


def test_cpu_smoke_runs_every_phase_without_tfds_or_tensorboardx(tmp_path):
    # The GPU image has neither tensorflow-datasets nor tensorboardX: importing them fails here too.
    for package in ("tensorflow_datasets", "tensorboardX"):
        (tmp_path / "missing" / package).mkdir(parents=True)
        (tmp_path / "missing" / package / "__init__.py").write_text(
            f"raise ImportError('{package} is not installed on the GPU image')\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "missing"),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--cpu-smoke", "--out", out],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    compiled = json.loads((out / "compile.json").read_text())
    assert [v["label"] for v in compiled["variants"]] == ["h200-1dev-float32-matmul"]
    for v in compiled["variants"]:
        m = v["measured"]
        assert m["repeats"] == 2 and m["step_ms_median"] > 0 and not m["comparable"]
        assert m["predicted_ms"] == pytest.approx(1e3 * v["model"]["step_s"])
    for dtype, count in (("float32", 3), ("bfloat16", 2)):  # the smoke run's variants
        bench = json.loads((out / f"bench_{dtype}.json").read_text())
        assert len(bench["variants"]) == count and bench["config"]["dtype"] == dtype
        assert all(v["error"] is None and v["repeats"] == 2 for v in bench["variants"])
        assert bench["flops_per_step"] > 0
    assert len(json.loads((out / "layers.json").read_text())["layers"]) == 6
    train = json.loads((out / "train.json").read_text())
    assert train["steady_images_per_s"] > 0 and train["conv_impl"] == "matmul"
    assert (out / "train" / "model.pt").exists() and not (out / "train" / "tensorboard").exists()
    fid = json.loads((out / "fid.json").read_text())
    assert [r["name"] for r in fid["rows"]] == ["torch-cpu", "jax"] and fid["images"] == 4
    for row in fid["rows"]:
        assert len(row["times"]) == 2
        assert row["images_per_s"] == pytest.approx(4 / np.median(row["times"]))
    assert fid["rows"][1]["ratio_to_torch"] == pytest.approx(
        np.median(fid["rows"][1]["times"]) / np.median(fid["rows"][0]["times"]))
    summary = (out / "summary.md").read_text()
    assert "| torch-compiled |" in summary and "| generator.deconv_8x8 |" in summary
    assert "| h200-1dev-float32-matmul |" in summary
    assert "FID mode clean, 4 images per repeat" in summary
    assert "not measured" not in summary
