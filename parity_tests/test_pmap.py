"""Data parallel: N devices with N shards give what one device gives on the whole batch.

Runs on 4 host CPU devices (forced in conftest.py). BatchNorm statistics are
those of the global batch and gradients are averaged, so the only differences
are summation orders: float64 makes them ~1e-15.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dcgan.model.step import create_train_state, jit_train_steps, pmap_train_steps, raw_key
from jax_dcgan.tools.parity import SEED_CFG, SMALL_CFG, float64, images
from jax_dcgan.training.parallel import device_sharding, replicate

DEVICES = 4


# One step per call runs outside lax.scan, several inside it. The lecture's widths once (the
# global batch's BatchNorm statistics and mean gradients do not depend on the backend or the
# widths, and each backend's step is held to PyTorch's at those widths in test_step.py);
# each backend in both forms at the small widths.
@pytest.mark.parametrize("base,impl,steps_per_call", [
    (SEED_CFG, "matmul", 2), (SMALL_CFG, "matmul", 1), (SMALL_CFG, "xla", 1),
    (SMALL_CFG, "xla", 2)], ids=["lecture-matmul-2", "small-matmul-1", "small-xla-1",
                                 "small-xla-2"])
def test_pmap_equals_single_device(base, impl, steps_per_call):
    assert jax.local_device_count() >= DEVICES
    with float64():
        cfg = base.replace(dtype="float64", conv_impl=impl)
        batch = 8
        data = np.stack([images(cfg, batch, seed=s) for s in range(steps_per_call)])  # (K, B, ...)
        to64 = lambda t: jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
        step_cfg = cfg.step_config()
        state = to64(create_train_state(step_cfg, cfg.seed))

        devices = jax.local_devices()[:DEVICES]
        replicated = replicate(state, devices)  # before the jit call donates `state`
        single, m_single = jit_train_steps(step_cfg)(state, jnp.asarray(data))

        shards = data.reshape(steps_per_call, DEVICES, batch // DEVICES, *data.shape[2:])
        shards = jax.device_put(shards.swapaxes(0, 1), device_sharding(devices))
        multi, m_multi = pmap_train_steps(step_cfg, devices)(replicated, shards)

        np.testing.assert_allclose(m_multi[0], m_single, atol=1e-9)
        paths = jax.tree_util.tree_leaves_with_path(raw_key(multi))
        for (path, a), b in zip(paths, jax.tree.leaves(raw_key(single)), strict=True):
            a, name = np.asarray(a), jax.tree_util.keystr(path)
            assert np.all(a == a[:1]), f"replicas diverged at {name}"
            np.testing.assert_allclose(a[0], np.asarray(b), atol=1e-9, err_msg=name)
