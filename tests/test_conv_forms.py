"""The convolutions a GPU compiler gets from the training step with --conv-impl xla.

XLA's GPU conv rewriter maps a convolution to cuDNN's backward-data kernel only when
its kernel is reversed, and never maps an input-dilated (lhs-dilated) convolution to
backward-filter; it turns anything else into a forward convolution over a
zero-stuffed input (jax-ml/jax#31662, openxla/xla#34273). The HLO that JAX hands to
XLA is the same on every backend, so this is checked here on the CPU.
"""

import re

import jax
import numpy as np
import pytest

from jax_dcgan.model.step import create_train_state, jit_train_steps

from .helpers import TINY

INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = \S+ ([\w-]+)\(([^)]*)\)(.*)$")


def instructions(hlo: str) -> dict[str, tuple[str, list[str], str]]:
    """name -> (opcode, operand names, attributes) of every instruction in the module."""
    found = {}
    for line in hlo.splitlines():
        match = INSTRUCTION.match(line)
        if match:
            name, opcode, operands, attributes = match.groups()
            found[name] = (opcode, [o.strip().lstrip("%").split()[-1]
                                    for o in operands.split(",") if o.strip()], attributes)
    return found


def dilation(attributes: str, kind: str) -> int:
    match = re.search(rf"{kind}_dilate=(\d+)x(\d+)", attributes)
    return max(map(int, match.groups())) if match else 1


def convolution_forms(hlo: str) -> dict[str, int]:
    """Counts of forward, backward-data and backward-filter convolutions; fails on any other."""
    ops = instructions(hlo)
    forms = {"forward": 0, "backward-data": 0, "backward-filter": 0}
    for name, (opcode, operands, attributes) in ops.items():
        if opcode != "convolution":
            continue
        feeding = [ops.get(o, ("parameter", [], "")) for o in operands]
        for op, _, pad_attributes in feeding:
            interior = re.search(r"padding=([\d_x-]+)", pad_attributes)
            assert not (op == "pad" and interior and any(
                len(p.split("_")) == 3 and p.split("_")[2] != "0"
                for p in interior.group(1).split("x"))), f"{name} reads an interior-padded pad"
        lhs, rhs = dilation(attributes, "lhs"), dilation(attributes, "rhs")
        if lhs > 1:
            assert rhs == 1, f"{name} dilates its input and its window"
            assert feeding[1][0] == "reverse", f"{name} dilates its input but its kernel is " \
                                               f"{feeding[1][0]}, not reversed: {attributes}"
            forms["backward-data"] += 1
        else:
            forms["backward-filter" if rhs > 1 else "forward"] += 1
    return forms


def lowered_step(impl: str, steps: int) -> str:
    cfg = TINY.replace(conv_impl=impl, image_size=32)
    step_cfg = cfg.step_config()
    state = create_train_state(step_cfg, cfg.seed)
    batch = np.zeros((steps, cfg.batch_size, 32, 32, 3), np.uint8)
    return jit_train_steps(step_cfg).lower(state, batch).as_text(dialect="hlo")


@pytest.mark.parametrize("steps", [1, 3])  # outside and inside lax.scan
def test_xla_step_has_only_the_three_cudnn_forms(steps):
    forms = convolution_forms(lowered_step("xla", steps))
    # At 32x32 each network has three stride-2 convolutions (G's first and D's last layer are
    # matmuls), so at least six kernel gradients: each a backward-filter convolution.
    assert forms["forward"] > 0 and forms["backward-data"] > 0 and forms["backward-filter"] >= 6


def test_matmul_step_has_no_convolutions():
    assert convolution_forms(lowered_step("matmul", 1)) == {
        "forward": 0, "backward-data": 0, "backward-filter": 0}


def test_the_checks_catch_the_autodiff_form_of_a_transposed_convolution():
    """lax.conv_transpose under plain autodiff gives an input-dilated kernel gradient: the
    form that XLA's GPU compiler runs as a zero-stuffed forward convolution."""
    x, k = np.ones((2, 8, 8, 16), np.float32), np.ones((4, 4, 16, 8), np.float32)

    def loss(x, k):
        y = jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (y ** 2).sum()

    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, k).as_text(dialect="hlo")
    with pytest.raises(AssertionError, match="not reversed|input and its window"):
        convolution_forms(hlo)
