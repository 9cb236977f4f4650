"""--dtype bfloat16: bf16 compute, float32 parameters, optimiser state and BatchNorm statistics."""

import jax
import jax.numpy as jnp
import numpy as np

from jax_dcgan.models import Generator
from jax_dcgan.plots import read_metrics
from jax_dcgan.train import train

from .helpers import TINY


def test_bfloat16_keeps_state_in_float32_and_trains(tmp_path):
    cfg = TINY.replace(dtype="bfloat16", cache_dir=str(tmp_path / "c"), num_synthetic=256,
                       epochs=3)
    state = train(cfg, str(tmp_path / "run"), quiet=True)
    floats = [x for x in jax.tree.leaves((state.generator, state.discriminator, state.g_opt,
                                          state.d_opt)) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)

    images = Generator(cfg.model).apply(state.generator, jnp.zeros((2, cfg.latent_dim)),
                                       train=False)
    assert images.dtype == jnp.bfloat16

    records = read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    d_loss = np.array([r["d_loss"] for r in records])
    assert np.all(np.isfinite(d_loss)) and np.all(np.isfinite([r["g_loss"] for r in records]))
    assert d_loss[-10:].mean() < d_loss[:5].mean()  # the discriminator learns to tell them apart
