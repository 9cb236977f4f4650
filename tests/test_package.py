"""The package as a user meets it: the Python API, where `--conv-impl auto` is decided, and
metrics.jsonl's record kinds (those of 0.2 included)."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jax_dcgan
from jax_dcgan.config import Config, Numerics
from jax_dcgan.model.layers import conv2d, conv_transpose2d
from jax_dcgan.outputs.plots import Kind, record_kind
from jax_dcgan.outputs.sample import generate
from jax_dcgan.training.writers import History, JsonlWriter

from .helpers import ROOT


def test_every_public_name_resolves_and_importing_the_package_loads_no_jax():
    for name in jax_dcgan.__all__:
        assert getattr(jax_dcgan, name) is not None, name
    assert jax_dcgan.load_checkpoint.__module__ == "jax_dcgan.training.checkpoint"
    with pytest.raises(AttributeError, match="no attribute 'step'"):
        jax_dcgan.step
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, jax_dcgan; jax_dcgan.Config; "
                               "print(sorted(m for m in ('jax', 'flax') if m in sys.modules))"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_auto_is_decided_once_and_never_reaches_the_layers():
    cfg = Config(conv_impl="auto", dtype="bfloat16")
    assert cfg.numerics("cpu") == Numerics("matmul", "bfloat16")
    assert cfg.numerics("cuda") == cfg.numerics("tpu") == Numerics("xla", "bfloat16")
    assert Config(conv_impl="matmul").numerics("cuda").conv == "matmul"  # as asked
    step = cfg.step_config(cfg.numerics("cuda"))
    assert step.model.numerics.conv == "xla" and step.lr_g == cfg.lr_g
    assert cfg.model.numerics == cfg.numerics()  # JAX's default backend: this CPU
    with pytest.raises(ValueError, match="decides `auto`"):
        Numerics("auto", "float32")
    x, kernel = jnp.zeros((1, 8, 8, 3)), jnp.zeros((4, 4, 3, 5))
    for op, k in ((conv2d, kernel), (conv_transpose2d, kernel.transpose(2, 0, 1, 3))):
        with pytest.raises(ValueError, match="decides `auto`"):
            op(x, k, 2, 1, "auto")
    with pytest.raises(ValueError, match="bn must be one of"):
        generate(Config(image_size=16, gen_features=8, latent_dim=4).model, {}, jnp.zeros((1, 4)),
                 "train")


def test_records_carry_their_kind_and_those_of_0_2_are_read_by_their_keys(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = JsonlWriter(str(path))
    writer.write_scalars(1, Kind.STEP, {"g_loss": 1.0, "d_loss": 2.0})
    writer.write_scalars(1, Kind.EPOCH, {"epoch": 1, "diversity": 0.5})
    writer.close()
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["kind"] for r in written] == ["step", "epoch"]
    old = [{"step": 1, "g_loss": 1.0, "d_loss": 2.0, "epoch": 1, "batch": 0},
           {"step": 1, "epoch": 1, "diversity": 0.5, "collapsed": False},
           {"step": 1, "epoch": 1, "swd": 3.0, "eval_samples": 8},
           {"step": 0, "rollback": 1, "reason": "diverged"}]
    assert [record_kind(r) for r in old] == [Kind.STEP, Kind.EPOCH, Kind.EVALUATION,
                                             Kind.ROLLBACK]
    history = History(old + written)
    steps, d_loss, g_loss = history.loss_arrays()
    np.testing.assert_array_equal(steps, [1, 1])
    assert list(d_loss) == [2.0, 2.0] and list(g_loss) == [1.0, 1.0]
    assert [r["swd"] for r in history.evaluations()] == [3.0]
