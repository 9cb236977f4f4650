"""The parity rows run at full float32 precision, as `jax-dcgan parity` runs them (GPUs
otherwise compute float32 matmuls and convolutions in TF32)."""

import pytest

from jax_dcgan.tools import parity


@pytest.fixture(autouse=True)
def full_precision():
    with parity.full_precision():
        yield
