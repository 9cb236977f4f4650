"""Each layer kind on its own against its torch.nn counterpart, in both convolution backends."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from jax_dcgan.layers import BatchNorm, conv2d, conv_transpose2d
from jax_dcgan.models import leaky_relu

from .common import CONV_IMPLS, float64, nchw

# Sums of a few thousand float32 products of O(1) values: rounding is ~1e-6.
ATOL = 2e-5
TRANSPOSED = [(100, 512, 1, 1, 0), (512, 256, 4, 2, 1), (64, 3, 32, 2, 1), (5, 7, 3, 3, 2)]
CONVS = [(3, 64, 64, 2, 1), (256, 512, 8, 2, 1), (512, 1, 4, 1, 0), (6, 5, 9, 1, 1)]


def _nhwc(t: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


# generator.0 (noise -> 512x4x4), generator.3 (the doubling layers), generator.12 (to RGB),
# and a stride and padding not in the model.
@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("c_in,c_out,size,stride,padding", TRANSPOSED)
def test_conv_transpose(c_in, c_out, size, stride, padding, impl):
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False)
    x = torch.randn(3, c_in, size, size)
    kernel = jnp.asarray(layer.weight.detach().numpy().transpose(0, 2, 3, 1))
    ours = conv_transpose2d(_nhwc(x), kernel, stride, padding, impl)
    np.testing.assert_allclose(nchw(ours), layer(x).detach().numpy(), atol=ATOL)


# discriminator.0, discriminator.8, discriminator.11 (the window covers the input),
# and stride 1 with padding, not in the model.
@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("c_in,c_out,size,stride,padding", CONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(c_in, c_out, size, stride, padding, bias, impl):
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(c_in, c_out, 4, stride, padding, bias=bias)
    x = torch.randn(3, c_in, size, size)
    ours = conv2d(_nhwc(x), jnp.asarray(layer.weight.detach().numpy().transpose(2, 3, 1, 0)),
                  stride, padding, impl)
    if bias:
        ours = ours + layer.bias.detach().numpy()
    np.testing.assert_allclose(nchw(ours), layer(x).detach().numpy(), atol=ATOL)


def _gradients(transposed, shape, impl):
    """d sum(sin(layer(x))) / d(x, kernel) from torch autograd and from our VJPs (float64)."""
    c_in, c_out, size, stride, padding = shape
    torch.manual_seed(0)
    x = torch.randn(2, c_in, size, size, dtype=torch.float64, requires_grad=True)
    if transposed:
        weight = torch.randn(c_in, c_out, 4, 4, dtype=torch.float64, requires_grad=True)
        y = torch.nn.functional.conv_transpose2d(x, weight, stride=stride, padding=padding)
        perm, ours = (0, 2, 3, 1), conv_transpose2d
    else:
        weight = torch.randn(c_out, c_in, 4, 4, dtype=torch.float64, requires_grad=True)
        y = torch.nn.functional.conv2d(x, weight, stride=stride, padding=padding)
        perm, ours = (2, 3, 1, 0), conv2d
    theirs = torch.autograd.grad(torch.sin(y).sum(), (x, weight))
    with float64():
        grads = jax.grad(lambda a, k: jnp.sum(jnp.sin(ours(a, k, stride, padding, impl))), (0, 1))(
            jnp.asarray(x.detach().numpy().transpose(0, 2, 3, 1)),
            jnp.asarray(weight.detach().numpy().transpose(perm)))
    return (nchw(grads[0]), np.asarray(grads[1]).transpose(np.argsort(perm))), \
        tuple(t.numpy() for t in theirs)


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("transposed,shape", [(True, s) for s in TRANSPOSED]
                         + [(False, s) for s in CONVS])
def test_convolution_gradients(transposed, shape, impl):
    """The custom VJPs against torch autograd, for the input and the kernel (float64: the
    values are sums of up to 8,192 products of O(1) numbers, rounding ~1e-13)."""
    ours, theirs = _gradients(transposed, shape, impl)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, atol=1e-10)


BACKEND_CASES = ([(True, s) for s in TRANSPOSED] + [(False, s) for s in CONVS]
                 + [(False, (3, 4, 11, 2, 1)), (True, (4, 3, 5, 3, 0))])


def backend_results(transposed: bool, shape: tuple) -> list:
    """Value and gradients of sum(sin(layer(x))) in float64, per backend (matmul, xla)."""
    with float64():
        c_in, c_out, size, stride, padding = shape
        rng = np.random.default_rng(1)
        x = jnp.asarray(rng.standard_normal((2, size, size, c_in)))
        k = jnp.asarray(rng.standard_normal((c_in, 4, 4, c_out) if transposed
                                            else (4, 4, c_in, c_out)))
        op = conv_transpose2d if transposed else conv2d
        return [jax.tree.map(np.asarray, jax.value_and_grad(lambda a, b, impl=impl: jnp.sum(
            jnp.sin(op(a, b, stride, padding, impl))), (0, 1))(x, k)) for impl in CONV_IMPLS]


@pytest.mark.parametrize("transposed,shape", BACKEND_CASES)
def test_backends_agree_in_float64(transposed, shape):
    """matmul and xla compute the same function and gradients: their float64 results differ
    by summation order only: measured up to 5.7e-12 on values up to O(100)
    (`python -m parity_tests.report`), held to 1e-10."""
    matmul, xla = backend_results(transposed, shape)
    for a, b in zip(jax.tree.leaves(matmul), jax.tree.leaves(xla)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-10)


def test_batchnorm_train_eval_and_running_statistics():
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(32)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    ours = BatchNorm()
    variables = ours.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 32)), train=False)
    params = {"scale": jnp.asarray(ref.weight.detach().numpy()),
              "bias": jnp.asarray(ref.bias.detach().numpy())}
    stats = variables["batch_stats"]
    for update in range(1, 6):
        x = torch.randn(8, 32, 4, 4) * 3 + 1
        expected = ref(x).detach().numpy()
        y, new = ours.apply({"params": params, "batch_stats": stats}, _nhwc(x), train=True,
                            mutable=["batch_stats"])
        stats = new["batch_stats"]
        np.testing.assert_allclose(nchw(y), expected, atol=ATOL)
        # torch keeps the unbiased batch variance in running_var; momentum 0.1.
        np.testing.assert_allclose(stats["mean"], ref.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(stats["var"], ref.running_var.numpy(), rtol=1e-6)
        assert int(stats["count"]) == int(ref.num_batches_tracked) == update

    ref.eval()
    x = torch.randn(8, 32, 4, 4)
    y = ours.apply({"params": params, "batch_stats": stats}, _nhwc(x), train=False)
    np.testing.assert_allclose(nchw(y), ref(x).detach().numpy(), atol=ATOL)


@pytest.mark.parametrize("ours,ref", [
    (lambda x: leaky_relu(x, 0.01), torch.nn.LeakyReLU()),  # the lecture's default slope
    (lambda x: leaky_relu(x, 0.2), torch.nn.LeakyReLU(0.2)),
    (nn.relu, torch.nn.ReLU()),
    (jnp.tanh, torch.nn.Tanh()),
])
def test_activations_and_their_gradients(ours, ref):
    x = torch.cat([torch.linspace(-4, 4, 1000), torch.zeros(1)]).requires_grad_()  # 0: the kink
    y = ref(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    xj = jnp.asarray(x.detach().numpy())
    np.testing.assert_allclose(np.asarray(ours(xj)), y.detach().numpy(), atol=1e-7)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda v: ours(v).sum())(xj)), grad.numpy(),
                               atol=1e-6)
