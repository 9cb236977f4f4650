"""Training options beyond the lecture: EMA, initialisations, presets, label randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dcgan.config import PRESETS, Config, preset
from jax_dcgan.errors import UserError
from jax_dcgan.models import init_variables
from jax_dcgan.step import create_train_state, draw_step_randomness, jit_train_steps

from .helpers import TINY


def test_ema_of_generator_weights():
    cfg = TINY.replace(ema_decay=0.75)
    state = create_train_state(cfg)
    expected = jax.tree.map(np.asarray, state.generator["params"])
    step = jit_train_steps(cfg)
    batch = jnp.zeros((1, cfg.batch_size, 16, 16, 3), jnp.uint8)
    for t in range(30):  # warm-up decay (1 + t) / (10 + t), then 0.75 from t = 26 on
        state, _ = step(state, batch)
        decay = min(0.75, (1 + t) / (10 + t))
        expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), expected,
                                state.generator["params"])
    for a, b in zip(jax.tree.leaves(state.g_ema), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert create_train_state(TINY).g_ema == {}


def test_dcgan_initialisation_is_normal_002():
    cfg = TINY.replace(weight_init="dcgan", gen_features=64, dis_features=64)
    params = init_variables(cfg.model, jax.random.PRNGKey(0))
    kernel = np.asarray(params["discriminator"]["params"]["conv_4x4"]["kernel"])
    scale = np.asarray(params["generator"]["params"]["bn_4x4"]["scale"])
    assert abs(kernel.std() - 0.02) < 1e-3 and abs(kernel.mean()) < 1e-3
    assert abs(scale.mean() - 1) < 0.01 and 0.01 < scale.std() < 0.03
    assert np.all(np.asarray(params["discriminator"]["params"]["from_rgb"]["bias"]) == 0)


def test_presets():
    assert preset("seed").dataset == "celeb_a" and preset("seed").batch_size == 128
    relu = preset("seed-relu")
    assert (relu.gen_activation, relu.dis_slope, relu.gen_slope) == ("relu", 0.2, 0.01)
    assert preset("dcgan-paper").weight_init == "dcgan"
    for name, fields in PRESETS.items():
        assert Config(**fields).validate()
        if name != "seed":
            assert all(k in {"dataset", "gen_activation", "dis_slope", "weight_init",
                             "num_synthetic", "image_size", "gen_features", "dis_features",
                             "batch_size", "epochs", "checkpoint_every"} for k in fields)
    # The lecture's presets leave the training options off.
    for name in ("seed", "seed-relu"):
        cfg = preset(name)
        assert not cfg.fresh_noise and cfg.label_flip == cfg.label_smoothing == cfg.ema_decay == 0
    with pytest.raises(UserError, match="Unknown preset"):
        preset("nope")


def test_label_randomness_has_the_asked_rates():
    cfg = TINY.replace(label_flip=0.3, label_smoothing=0.1)
    rand = draw_step_randomness(jax.random.PRNGKey(0), cfg, 20000)
    real, fake = np.asarray(rand["real_target"]), np.asarray(rand["fake_target"])
    assert set(np.unique(real)) == {0.0, np.float32(0.9)} and set(np.unique(fake)) == {0.0, np.float32(0.9)}
    assert abs(np.mean(real == 0) - 0.3) < 0.02 and abs(np.mean(fake != 0) - 0.3) < 0.02
