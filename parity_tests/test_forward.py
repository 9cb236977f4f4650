"""The architecture against the lecture's, and whole forward passes of G and D in train and
eval mode in both convolution backends: the `architecture` and `forward` rows of
`jax-dcgan parity`."""

import pytest
import torch

from jax_dcgan.config import CONV_BACKENDS
from jax_dcgan.model.networks import torch_layer_indices
from jax_dcgan.tools import parity
from jax_dcgan.tools.parity import SEED_CFG
from torch_reference import DCGAN

from .test_layers import assert_pass

# The lecture's layers (SEED.md): (kind, in, out, kernel, stride, padding, bias).
LECTURE_LAYERS = {
    "generator": {0: ("ConvTranspose2d", 100, 512, 4, 1, 0, False),
                  3: ("ConvTranspose2d", 512, 256, 4, 2, 1, False),
                  6: ("ConvTranspose2d", 256, 128, 4, 2, 1, False),
                  9: ("ConvTranspose2d", 128, 64, 4, 2, 1, False),
                  12: ("ConvTranspose2d", 64, 3, 4, 2, 1, False)},
    "discriminator": {0: ("Conv2d", 3, 64, 4, 2, 1, True),
                      2: ("Conv2d", 64, 128, 4, 2, 1, False),
                      5: ("Conv2d", 128, 256, 4, 2, 1, False),
                      8: ("Conv2d", 256, 512, 4, 2, 1, False),
                      11: ("Conv2d", 512, 1, 4, 1, 0, True)},
}
LECTURE_PARAMETERS = {"generator": 3_576_704, "discriminator": 2_765_633}
LECTURE_SHAPES = {  # (C, H, W) after each convolution
    "generator": [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), (3, 64, 64)],
    "discriminator": [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (1, 1, 1)],
}


def test_reference_is_the_lectures_network():
    model = DCGAN()
    for net, layers in LECTURE_LAYERS.items():
        seq = getattr(model, net)
        convs = {i: (type(m).__name__, m.in_channels, m.out_channels, m.kernel_size[0],
                     m.stride[0], m.padding[0], m.bias is not None)
                 for i, m in enumerate(seq) if isinstance(m, torch.nn.modules.conv._ConvNd)}
        assert convs == layers
        assert sum(p.numel() for p in seq.parameters()) == LECTURE_PARAMETERS[net]
        x = torch.zeros(2, 100, 1, 1) if net == "generator" else torch.zeros(2, 3, 64, 64)
        shapes = []
        for i, layer in enumerate(seq):
            x = layer(x)
            if i in layers:
                shapes.append(tuple(x.shape[1:]))
        assert shapes == LECTURE_SHAPES[net]


def test_jax_model_has_the_references_shapes_and_parameter_counts():
    rows = parity.architecture(parity.Setup())
    assert any(f"{LECTURE_PARAMETERS['generator']:,} in PyTorch" in r.check for r in rows)
    assert_pass(rows)


def test_readable_layer_names_map_to_the_lecture_indices():
    assert torch_layer_indices(SEED_CFG.model) == {
        "generator": {"project": 0, "bn_4x4": 1, "deconv_8x8": 3, "bn_8x8": 4,
                      "deconv_16x16": 6, "bn_16x16": 7, "deconv_32x32": 9, "bn_32x32": 10,
                      "to_rgb": 12},
        "discriminator": {"from_rgb": 0, "conv_16x16": 2, "bn_16x16": 3, "conv_8x8": 5,
                          "bn_8x8": 6, "conv_4x4": 8, "bn_4x4": 9, "logit": 11}}


@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_forward_passes_and_running_statistics(impl):
    """G and D in eval mode (running statistics warmed up) and train mode (batch
    statistics, and the running statistics and counts that pass leaves behind)."""
    rows = parity.forward(parity.Setup(), impl)
    assert len(rows) == 6
    assert_pass(rows)
