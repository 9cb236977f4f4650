"""Each layer kind on its own against its torch.nn counterpart (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen as nn

from jax_dcgan.layers import BatchNorm, conv2d, conv_transpose2d
from jax_dcgan.models import leaky_relu

from .common import float64, nchw

# Sums of a few thousand float32 products of O(1) values: rounding is ~1e-6.
ATOL = 2e-5
TRANSPOSED = [(100, 512, 1, 1, 0), (512, 256, 4, 2, 1), (64, 3, 32, 2, 1), (5, 7, 3, 3, 2)]
CONVS = [(3, 64, 64, 2, 1), (256, 512, 8, 2, 1), (512, 1, 4, 1, 0), (6, 5, 9, 1, 1)]


def _nhwc(t: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


# generator.0 (noise -> 512x4x4), generator.3 (the doubling layers), generator.12 (to RGB),
# and a stride and padding not in the model.
@pytest.mark.parametrize("c_in,c_out,size,stride,padding", TRANSPOSED)
def test_conv_transpose(c_in, c_out, size, stride, padding):
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False)
    x = torch.randn(3, c_in, size, size)
    kernel = jnp.asarray(layer.weight.detach().numpy().transpose(0, 2, 3, 1))
    ours = conv_transpose2d(_nhwc(x), kernel, stride, padding)
    np.testing.assert_allclose(nchw(ours), layer(x).detach().numpy(), atol=ATOL)


# discriminator.0, discriminator.8, discriminator.11 (the window covers the input),
# and stride 1 with padding, not in the model.
@pytest.mark.parametrize("c_in,c_out,size,stride,padding", CONVS)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(c_in, c_out, size, stride, padding, bias):
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(c_in, c_out, 4, stride, padding, bias=bias)
    x = torch.randn(3, c_in, size, size)
    ours = conv2d(_nhwc(x), jnp.asarray(layer.weight.detach().numpy().transpose(2, 3, 1, 0)),
                  stride, padding)
    if bias:
        ours = ours + layer.bias.detach().numpy()
    np.testing.assert_allclose(nchw(ours), layer(x).detach().numpy(), atol=ATOL)


@pytest.mark.parametrize("transposed,shape", [(True, s) for s in TRANSPOSED]
                         + [(False, s) for s in CONVS])
def test_convolution_gradients(transposed, shape):
    """The custom VJPs against torch autograd, for the input and the kernel (float64)."""
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
    dx, dw = torch.autograd.grad(torch.sin(y).sum(), (x, weight))
    with float64():
        grads = jax.grad(lambda a, k: jnp.sum(jnp.sin(ours(a, k, stride, padding))), (0, 1))(
            jnp.asarray(x.detach().numpy().transpose(0, 2, 3, 1)),
            jnp.asarray(weight.detach().numpy().transpose(perm)))
    np.testing.assert_allclose(nchw(grads[0]), dx.numpy(), atol=1e-10)
    np.testing.assert_allclose(np.asarray(grads[1]).transpose(np.argsort(perm)), dw.numpy(),
                               atol=1e-10)


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
    x = torch.linspace(-4, 4, 1001, requires_grad=True)  # includes exactly 0, the kink
    y = ref(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    xj = jnp.asarray(x.detach().numpy())
    np.testing.assert_allclose(np.asarray(ours(xj)), y.detach().numpy(), atol=1e-7)
    np.testing.assert_allclose(np.asarray(jax.grad(lambda v: ours(v).sum())(xj)), grad.numpy(),
                               atol=1e-6)
