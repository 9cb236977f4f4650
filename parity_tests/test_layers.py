"""Each layer kind on its own against its torch.nn counterpart, in both convolution
backends: the `layers` and `matmul vs xla` rows of `jax-dcgan parity`, and BatchNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_dcgan.config import CONV_BACKENDS
from jax_dcgan.model.layers import BatchNorm
from jax_dcgan.tools import parity
from jax_dcgan.tools.parity import nchw

ATOL = 2e-5  # float32 sums of a few hundred O(1) products round at ~1e-6 (measured 1.3e-6)


def assert_pass(rows: list[parity.Row]) -> None:
    """Every row compared and within its tolerance. A SKIP row compared nothing, so it fails
    (a test where a skip is right removes that row first, saying why)."""
    assert rows, "no comparison ran"
    failed = [f"{r.check}: {r.measured:.3e} > {r.tolerance:.1e}" for r in rows
              if r.status == "FAIL"]
    assert not failed, failed
    skipped = [f"{r.check}: {r.why}" for r in rows if r.status == "SKIP"]
    assert not skipped, f"rows that compared nothing: {skipped}"
    assert any(r.status == "PASS" for r in rows), "no row passed a comparison"


@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_each_layer_kind(impl):
    """Both convolutions at the model's shapes and two others (values in float32; input
    and kernel gradients of our custom VJPs in float64), and the activations with their
    gradients on [-4, 4] and at exactly 0."""
    rows = parity.layers(parity.Setup(), impl)
    assert sum("gradients" in r.check for r in rows) == 2 * 4 + 4  # float64 ran, kink rows too
    assert_pass(rows)


def test_the_kink_is_compared_at_exactly_zero():
    """The gradient convention at 0 (PyTorch: the slope; 0 for ReLU) is why leaky_relu is
    our own; jax.nn.leaky_relu's would be 1 there, and this comparison sees it."""
    parity.ACTIVATIONS["jax.nn.leaky_relu"] = (lambda x: jax.nn.leaky_relu(x, 0.2),
                                               lambda: torch.nn.LeakyReLU(0.2))
    try:
        values, grads = parity.activation("jax.nn.leaky_relu")
    finally:
        del parity.ACTIVATIONS["jax.nn.leaky_relu"]
    assert values == 0 and grads == pytest.approx(0.8)


def test_backends_agree_in_float64():
    """matmul and xla compute the same function and gradients: their float64 results differ
    by summation order only."""
    assert_pass(parity.backends(parity.Setup()))


def test_batchnorm_train_eval_and_running_statistics():
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(32)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    ours = BatchNorm()
    variables = ours.init(jax.random.key(0), jnp.zeros((1, 4, 4, 32)), train=False)
    params = {"scale": jnp.asarray(ref.weight.detach().numpy()),
              "bias": jnp.asarray(ref.bias.detach().numpy())}
    stats = variables["batch_stats"]
    nhwc = lambda t: jnp.asarray(t.numpy().transpose(0, 2, 3, 1))
    for update in range(1, 6):
        x = torch.randn(8, 32, 4, 4) * 3 + 1
        expected = ref(x).detach().numpy()
        y, new = ours.apply({"params": params, "batch_stats": stats}, nhwc(x), train=True,
                            mutable=["batch_stats"])
        stats = new["batch_stats"]
        np.testing.assert_allclose(nchw(y), expected, atol=ATOL)
        # torch keeps the unbiased batch variance in running_var; momentum 0.1.
        np.testing.assert_allclose(stats["mean"], ref.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(stats["var"], ref.running_var.numpy(), rtol=1e-6)
        assert int(stats["count"]) == int(ref.num_batches_tracked) == update

    ref.eval()
    x = torch.randn(8, 32, 4, 4)
    y = ours.apply({"params": params, "batch_stats": stats}, nhwc(x), train=False)
    np.testing.assert_allclose(nchw(y), ref(x).detach().numpy(), atol=ATOL)


def test_batchnorm_groups_are_separate_calls_in_order():
    """`groups=2` (the discriminator's real and fake passes in one call) normalises each half
    with its own statistics and moves the running statistics by the first half, then the
    second, as torch's two calls do."""
    torch.manual_seed(1)
    ref = torch.nn.BatchNorm2d(16)
    ours = BatchNorm()
    stats = ours.init(jax.random.key(0), jnp.zeros((1, 4, 4, 16)), train=False)["batch_stats"]
    params = {"scale": jnp.ones(16), "bias": jnp.zeros(16)}
    nhwc = lambda t: jnp.asarray(t.numpy().transpose(0, 2, 3, 1))
    real, fake = torch.randn(8, 16, 4, 4) * 2 + 1, torch.randn(8, 16, 4, 4) - 3
    expected = np.concatenate([ref(real).detach().numpy(), ref(fake).detach().numpy()])
    y, new = ours.apply({"params": params, "batch_stats": stats},
                        nhwc(torch.cat([real, fake])), train=True, groups=2,
                        mutable=["batch_stats"])
    np.testing.assert_allclose(nchw(y), expected, atol=ATOL)
    np.testing.assert_allclose(new["batch_stats"]["mean"], ref.running_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(new["batch_stats"]["var"], ref.running_var.numpy(), rtol=1e-6)
    assert int(new["batch_stats"]["count"]) == int(ref.num_batches_tracked) == 2
