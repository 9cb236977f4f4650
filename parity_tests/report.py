"""Print the largest JAX-vs-PyTorch differences the parity suite checks, for both
convolution backends.

    python -m parity_tests.report

The tests assert tolerances; this prints the measured figures behind them.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jax_dcgan.convert import from_state_dict, to_state_dict  # noqa: E402
from jax_dcgan.models import Discriminator, Generator  # noqa: E402
from jax_dcgan.parallel import device_sharding, replicate  # noqa: E402
from jax_dcgan.step import create_train_state, jit_train_steps, pmap_train_steps  # noqa: E402

from .common import (CONV_IMPLS, SEED_CFG, SMALL_CFG, float64, images,  # noqa: E402
                     jax_variables, nchw, state_dict_numpy, to_torch_images, torch_model)
from .test_layers import BACKEND_CASES, backend_results  # noqa: E402
from .test_step import adam_moments_torch, flax_tree_as_torch, run_both  # noqa: E402


def _max_diff(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - b[k]), initial=0)) for k in b)


def warmed_up_model():
    """The reference with non-trivial running statistics, for eval mode."""
    model = torch_model(SEED_CFG)
    for seed in range(3):
        model.generator(torch.randn(64, 100, 1, 1))
        model.discriminator(to_torch_images(images(SEED_CFG, 64, seed)))
    return model


def forward(impl: str) -> list[tuple[str, float]]:
    cfg = SEED_CFG.replace(conv_impl=impl)
    model = warmed_up_model()
    variables = jax_variables(model, SEED_CFG)
    z = torch.randn(64, 100, 1, 1)
    x = to_torch_images(images(SEED_CFG, 64, seed=9))
    rows = []
    for train in (False, True):  # eval first: a train-mode pass updates torch's statistics
        model.train(train)
        with torch.no_grad():
            g, d = model.generator(z).numpy(), model.discriminator(x).numpy()[:, 0]
        kw = dict(train=True, mutable=["batch_stats"]) if train else dict(train=False)
        gj = Generator(cfg.model).apply(variables["generator"], jnp.asarray(z.numpy()[:, :, 0, 0]), **kw)
        dj = Discriminator(cfg.model).apply(variables["discriminator"], jnp.asarray(
            x.numpy().transpose(0, 2, 3, 1)), **kw)
        gj, dj = (gj[0], dj[0]) if train else (gj, dj)
        mode = "train" if train else "eval"
        rows += [(f"G forward, {mode} mode (64 images, float32)", float(np.abs(nchw(gj) - g).max())),
                 (f"D forward, {mode} mode (64 images, float32)", float(np.abs(np.asarray(dj) - d).max()))]
    return rows


def one_step_float32(impl: str) -> list[tuple[str, float]]:
    cfg = SEED_CFG.replace(conv_impl=impl)
    model, optimizers, logs, state, metrics = run_both(cfg, 1, 16)
    ours = to_state_dict({"generator": state.generator, "discriminator": state.discriminator},
                         cfg.model)
    theirs = state_dict_numpy(model)
    diffs = np.concatenate([np.abs(np.asarray(ours[k], np.float64) - v).ravel()
                            for k, v in theirs.items()])
    rel, moments = [], []  # max relative difference of mu per net; all moments' differences
    for net, opt_state in (("generator", state.g_opt), ("discriminator", state.d_opt)):
        for ours_moment, name in ((opt_state[0].mu, "exp_avg"), (opt_state[0].nu, "exp_avg_sq")):
            theirs_moment = adam_moments_torch(model, optimizers, net, name)
            ours_moment = flax_tree_as_torch(ours_moment, net, cfg)
            moments += [np.abs(ours_moment[k] - v).ravel() / np.abs(v).max()
                        for k, v in theirs_moment.items()]
            if name == "exp_avg":
                rel.append(max(float(np.abs(ours_moment[k] - v).max() / np.abs(v).max())
                               for k, v in theirs_moment.items()))
    return [
        ("one step, float32: |d_loss - torch|", abs(metrics[0]["d_loss"] - logs[0]["d_loss"])),
        ("one step, float32: |g_loss - torch|", abs(metrics[0]["g_loss"] - logs[0]["g_loss"])),
        ("one step, float32: params+stats, 99.9th percentile", float(np.quantile(diffs, 0.999))),
        ("one step, float32: params+stats, max (Adam sign flips)", float(diffs.max())),
        ("one step, float32: params+stats, share beyond 1e-5", float(np.mean(diffs > 1e-5))),
        ("one step, float32: D Adam moment, max / scale", rel[1]),
        ("one step, float32: Adam moments, share beyond 1% of scale",
         float(np.mean(np.concatenate(moments) > 1e-2))),
        ("one step, float32: G Adam moment, max / scale (kink flips)", rel[0]),
    ]


def many_steps_float64(impl: str) -> list[tuple[str, float]]:
    with float64():
        cfg = SMALL_CFG.replace(dtype="float64", conv_impl=impl)
        model, _, logs, state, metrics = run_both(cfg, 12, 8, torch.float64)
        ours = to_state_dict({"generator": state.generator, "discriminator": state.discriminator},
                             cfg.model)
        loss = max(abs(m[k] - t[k]) for m, t in zip(metrics, logs) for k in ("g_loss", "d_loss"))
        return [("12 steps, float64: losses, max", loss),
                ("12 steps, float64: params+stats, max", _max_diff(ours, state_dict_numpy(model)))]


def pmap_float64(impl: str) -> list[tuple[str, float]]:
    with float64():
        cfg = SEED_CFG.replace(dtype="float64", conv_impl=impl)
        data = images(cfg, 8)[None]
        state = jax.tree.map(lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating)
                             else a, create_train_state(cfg))
        devices = jax.local_devices()[:4]
        replicated = replicate(state, devices)
        single, _ = jit_train_steps(cfg)(state, jnp.asarray(data))
        shards = jax.device_put(data.reshape(1, 4, 2, *data.shape[2:]).swapaxes(0, 1),
                                device_sharding(devices))
        multi, _ = pmap_train_steps(cfg, devices)(replicated, shards)
        diff = max(float(np.abs(np.asarray(a)[0] - np.asarray(b)).max())
                   for a, b in zip(jax.tree.leaves(multi), jax.tree.leaves(single)))
        return [("pmap on 4 devices vs 1 device, float64: whole state, max", diff)]


def bfloat16() -> list[tuple[str, float]]:
    """How far --dtype bfloat16 moves the outputs, on the same float32 weights."""
    model = warmed_up_model()
    variables = jax_variables(model, SEED_CFG)
    z = jnp.asarray(np.random.default_rng(0).standard_normal((64, 100)), jnp.float32)
    x = jnp.asarray(to_torch_images(images(SEED_CFG, 64)).numpy().transpose(0, 2, 3, 1))
    rows = []
    for train in (False, True):
        outs = []
        for dtype in ("float32", "bfloat16"):
            cfg = SEED_CFG.replace(dtype=dtype)
            kw = dict(train=True, mutable=["batch_stats"]) if train else dict(train=False)
            g = Generator(cfg.model).apply(variables["generator"], z, **kw)
            d = Discriminator(cfg.model).apply(variables["discriminator"], x, **kw)
            outs.append([np.asarray((g[0] if train else g), np.float32),
                         np.asarray((d[0] if train else d), np.float32)])
        mode = "train" if train else "eval"
        rows += [(f"bfloat16 vs float32: G images, {mode} mode, max", float(np.abs(outs[0][0] - outs[1][0]).max())),
                 (f"bfloat16 vs float32: G images, {mode} mode, mean", float(np.abs(outs[0][0] - outs[1][0]).mean())),
                 (f"bfloat16 vs float32: D logits, {mode} mode, max", float(np.abs(outs[0][1] - outs[1][1]).max()))]
    return rows


def conversion() -> list[tuple[str, float]]:
    theirs = state_dict_numpy(torch_model(SEED_CFG))
    back = to_state_dict(from_state_dict(theirs, SEED_CFG.model), SEED_CFG.model)
    return [("torch -> flax -> torch round trip, max", _max_diff(back, theirs))]


def backends_float64() -> list[tuple[str, float]]:
    """matmul against xla: 12 steps in float64 from the same start."""
    with float64():
        states = []
        for impl in CONV_IMPLS:
            cfg = SMALL_CFG.replace(dtype="float64", conv_impl=impl)
            states.append(run_both(cfg, 12, 8, torch.float64)[3])
        diff = max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b)).max())
                   for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])))
    layers = max(float(np.abs(a - b).max()) for case in BACKEND_CASES
                 for a, b in zip(*map(jax.tree.leaves, backend_results(*case))))
    return [("each layer kind, float64: matmul vs xla, values and gradients, max", layers),
            ("12 steps, float64 (widths 8): matmul vs xla, whole state, max", diff)]


def main() -> None:
    rows = []
    for impl in CONV_IMPLS:
        rows += [(f"[{impl}] {name}", value) for name, value in
                 forward(impl) + one_step_float32(impl) + many_steps_float64(impl)
                 + pmap_float64(impl)]
    rows += backends_float64() + conversion() + bfloat16()
    width = max(len(name) for name, _ in rows)
    print(f"{'comparison (lecture widths unless noted)':{width}}  largest difference")
    for name, value in rows:
        print(f"{name:{width}}  {value:.2e}")


if __name__ == "__main__":
    main()
