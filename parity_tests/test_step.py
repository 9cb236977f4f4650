"""The training step: gradients, one step in float32, many in float64, the training
options; each in both convolution backends (the `gradients`, `one step` and `many steps`
rows of `jax-dcgan parity`)."""

import numpy as np
import pytest
import torch

from jax_dcgan.config import CONV_BACKENDS
from jax_dcgan.model.convert import to_state_dict
from jax_dcgan.tools import parity
from jax_dcgan.tools.parity import (SMALL_CFG, adam_moments_torch, flax_tree_as_torch, float64,
                                    run_both, state_dict_numpy)

from .test_layers import assert_pass


def assert_same_training_state(cfg, model, optimizers, state, atol: float,
                               rtol_moments: float, outliers: float = 0.0):
    """Parameters, BatchNorm statistics and Adam moments (relative to their scale) of both nets.

    `outliers` is the fraction of parameters and statistics allowed beyond `atol`,
    and a fifth of it the fraction of moments allowed beyond `rtol_moments` (see
    `test_one_step_float32_everything`); parameters must still stay within Adam's
    largest possible disagreement, 2 lr, and moments within 10% of their scale.
    """
    lr = max(group["lr"] for opt in optimizers for group in opt.param_groups)
    ours = to_state_dict({"generator": state.generator, "discriminator": state.discriminator},
                         cfg.model)
    beyond, total = 0, 0
    for name, theirs in state_dict_numpy(model).items():
        diff = np.abs(np.asarray(ours[name], np.float64) - theirs)
        beyond, total = beyond + int(np.sum(diff > atol)), total + diff.size
        assert np.max(diff, initial=0) <= (2 * lr + atol if outliers else atol), name
    assert beyond <= outliers * total, f"{beyond} of {total} values beyond {atol}"
    beyond, total = 0, 0
    for net, opt_state in (("generator", state.g_opt), ("discriminator", state.d_opt)):
        adam = opt_state[0]
        assert int(adam.count) == optimizers[0].state[next(model.generator.parameters())]["step"]
        for ours_moment, moment in ((adam.mu, "exp_avg"), (adam.nu, "exp_avg_sq")):
            theirs = adam_moments_torch(model, optimizers, net, moment)
            for name, v in flax_tree_as_torch(ours_moment, net, cfg).items():
                relative = np.abs(v - theirs[name]) / np.max(np.abs(theirs[name]))
                beyond, total = beyond + int(np.sum(relative > rtol_moments)), total + v.size
                assert relative.max() <= (0.1 if outliers else rtol_moments), f"{moment} {name}"
    assert beyond <= outliers / 5 * total, f"{beyond} of {total} moments beyond {rtol_moments}"


@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_one_step_float32_everything(impl):
    """Float32, the lecture's settings: losses, accuracies, every parameter, statistic and
    Adam moment (see parity.one_step for the two discontinuities that set the bounds)."""
    assert_pass(parity.one_step(parity.Setup(), impl))


@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_gradients_of_both_losses(impl):
    assert_pass(parity.gradients(parity.Setup(), impl))


@pytest.mark.parametrize("impl", CONV_BACKENDS)
def test_many_steps_float64(impl):
    assert_pass(parity.many_steps(parity.Setup(), impl))


def test_default_configuration_uses_the_references_own_labels(monkeypatch):
    """The reference draws its labels itself (ones, zeros) unless an option changes them,
    so a regression in the JAX side's default labels shows as a difference."""
    given = []
    real_step = parity.train_step
    monkeypatch.setattr(parity, "train_step", lambda *a, **kw: given.append(
        kw["dis_targets"]) or real_step(*a, **kw))
    with float64():
        run_both(SMALL_CFG.replace(dtype="float64"), 1, 8, torch.float64)
        run_both(SMALL_CFG.replace(dtype="float64", label_smoothing=0.1), 1, 8, torch.float64)
    assert given[0] is None and given[1] is not None


@pytest.mark.parametrize("variant", [
    dict(fresh_noise=True),                       # new noise for the generator step
    dict(label_smoothing=0.1),                    # one-sided: real targets 0.9
    dict(label_flip=0.25, label_smoothing=0.1),   # flipped D labels (drawn per example)
    dict(gen_activation="relu", dis_slope=0.2),   # the lecture's failing run
])
def test_training_variants_match_the_reference(variant):
    """The reference expresses each option (gen_noise, dis_targets, activations): 4 steps, float64."""
    with float64():
        cfg = SMALL_CFG.replace(dtype="float64", **variant)
        model, optimizers, logs, state, metrics = run_both(cfg, steps=4, batch=8,
                                                           dtype=torch.float64)
        for ours, theirs in zip(metrics, logs):
            assert ours == pytest.approx(theirs, abs=1e-9)
        assert_same_training_state(cfg, model, optimizers, state, atol=1e-9, rtol_moments=1e-9)
