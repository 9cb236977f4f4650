"""Training options beyond the lecture: EMA, initialisations, presets, label randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dcgan.common.errors import UserError
from jax_dcgan.config import PRESETS, Config, preset
from jax_dcgan.model.networks import init_variables
from jax_dcgan.model.step import create_train_state, draw_step_randomness, jit_train_steps

from .helpers import TINY


def test_ema_of_generator_weights():
    cfg = TINY.replace(ema_decay=0.75)
    step_cfg = cfg.step_config()
    state = create_train_state(step_cfg, cfg.seed)
    expected = jax.tree.map(np.asarray, state.generator["params"])
    step = jit_train_steps(step_cfg)
    batch = jnp.zeros((1, cfg.batch_size, 16, 16, 3), jnp.uint8)
    for t in range(30):  # warm-up decay (1 + t) / (10 + t), then 0.75 from t = 26 on
        state, _ = step(state, batch)
        decay = min(0.75, (1 + t) / (10 + t))
        expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * np.asarray(p), expected,
                                state.generator["params"])
    for a, b in zip(jax.tree.leaves(state.g_ema), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert create_train_state(TINY.step_config(), TINY.seed).g_ema == {}


def test_dcgan_initialisation_is_normal_002():
    cfg = TINY.replace(weight_init="dcgan", gen_features=64, dis_features=64)
    params = init_variables(cfg.model, jax.random.key(0))
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
    rand = draw_step_randomness(jax.random.key(0), cfg.step_config(), 20000)
    real, fake = np.asarray(rand["real_target"]), np.asarray(rand["fake_target"])
    assert set(np.unique(real)) == {0.0, np.float32(0.9)} and set(np.unique(fake)) == {0.0, np.float32(0.9)}
    assert abs(np.mean(real == 0) - 0.3) < 0.02 and abs(np.mean(fake != 0) - 0.3) < 0.02


@pytest.mark.parametrize("size, dtype", [(16, "float32"), (64, "bfloat16")])
def test_training_bytes_counts_the_weights_and_feature_maps(size, dtype):
    """The memory check's estimate, counted from the widths alone: its weight term is the
    bytes of the convolution kernels the state holds (float32 for a bfloat16 run; times 4:
    weights, gradients, two moments), its batch term the output of every layer of both
    networks in the compute dtype."""
    from jax_dcgan.model.networks import Discriminator, Generator, training_bytes

    full = TINY.replace(image_size=size, dtype=dtype)
    cfg = full.model
    state = jax.eval_shape(lambda: create_train_state(full.step_config(), full.seed))
    kernel_bytes = sum(leaf.size * leaf.dtype.itemsize for path, leaf in
                       jax.tree_util.tree_leaves_with_path((state.generator, state.discriminator))
                       if path[-1].key == "kernel")
    assert training_bytes(cfg, 0) == 4 * kernel_bytes

    def conv_outputs(module, x):  # elements per image of each convolution's output
        variables = module.init(jax.random.key(0), x, train=False)
        _, found = module.apply(variables, x, train=False, capture_intermediates=True,
                                mutable=["intermediates"])
        layers = found["intermediates"]
        return sum(layers[name]["__call__"][0][0].size for name in layers
                   if name != "__call__" and not name.startswith("bn_"))

    per_image = (training_bytes(cfg, 1) - training_bytes(cfg, 0)) // jnp.dtype(dtype).itemsize
    gen = conv_outputs(Generator(cfg), jnp.zeros((1, cfg.latent_dim)))
    dis = conv_outputs(Discriminator(cfg), jnp.zeros((1, size, size, cfg.channels)))
    # The discriminator's input is kept and its logit (one number) is not, twice over.
    assert per_image == gen + 2 * (size * size * cfg.channels + dis - 1)


def test_seeds_beyond_what_a_jax_key_holds_are_refused():
    """Without its 64-bit mode JAX keeps 32 bits of a seed, so 2^32 would be seed 0's run
    again (with another data order, which NumPy draws from the whole seed)."""
    same = [jax.random.key_data(jax.random.key(s)) for s in (0, 2 ** 32)]
    np.testing.assert_array_equal(*same)
    Config(seed=2 ** 32 - 1).validate()
    for seed in (2 ** 32, -1):
        with pytest.raises(UserError, match=r"--seed must lie in \[0, 4294967296\)"):
            Config(seed=seed).validate()
