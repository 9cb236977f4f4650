"""The training step: one pure per-device function, wrapped once for jit and once for pmap.

It does what the lecture's `train_gan_v1` does per batch (see
`torch_reference/step.py`): one generator pass, a discriminator Adam step on
0.5 * (BCE(D(real), 1) + BCE(D(fake), 0)) with two train-mode passes (each with
its own BatchNorm statistics; their convolutions run once over both batches),
then a generator Adam step through a third pass of the *updated* discriminator
on the same fake batch.

Randomness comes from `fold_in(state.rng, state.step)`, and every random draw is
made for the global batch and sliced per device, so the result depends neither
on how the batch is split over devices nor on where a run was resumed.

Metrics come back as one array per call, (steps, len(METRICS)), so the
loop fetches them in one transfer.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from jax_dcgan.common.errors import UserError
from jax_dcgan.config import ModelConfig, StepConfig
from jax_dcgan.model.networks import Discriminator, Generator, init_variables, training_bytes

__all__ = ["AXIS", "METRICS", "TrainState", "check_fits", "create_train_state",
           "draw_step_randomness", "jit_train_steps", "metrics_dict", "normalize_images",
           "pmap_train_steps", "raw_key", "step_key"]

AXIS = "devices"  # the pmap axis of data parallelism
METRICS = ("g_loss", "d_loss", "acc_real", "acc_fake")


@flax.struct.dataclass
class TrainState:
    """Everything a training step reads and writes: both networks, their Adam states, the key."""
    step: jax.Array            # int32 scalar: steps taken
    rng: jax.Array             # typed key (jax.random.key); per-step keys are folded from it
    generator: dict            # {'params': ..., 'batch_stats': ...}
    discriminator: dict
    g_opt: optax.OptState
    d_opt: optax.OptState
    g_ema: dict                # EMA of the generator's params ({} when ema_decay == 0)


def optimizers(cfg: StepConfig
               ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """torch.optim.Adam's math, for G and D."""
    def adam(lr):
        return optax.adam(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps)
    return adam(cfg.lr_g), adam(cfg.lr_d)


def check_fits(model: ModelConfig, batch_size: int, free_bytes: float, devices: int = 1
               ) -> None:
    """A UserError when the networks, their optimizer state and a device's share of a batch
    cannot fit in `free_bytes` of one device: before anything is built, naming the flags."""
    need = training_bytes(model, -(-batch_size // devices))
    if need > free_bytes:
        raise UserError(
            f"This model and batch need at least {need / 2**30:.3g} GiB on a device "
            f"(--image-size {model.image_size}, --latent-dim {model.latent_dim}, --gen-features "
            f"{model.gen_features}, --dis-features {model.dis_features}, --channels "
            f"{model.channels}, --batch-size {batch_size}), and it has "
            f"{free_bytes / 2**30:.3g} GiB free; lower some of them.")


def create_train_state(cfg: StepConfig, seed: int, variables: dict | None = None
                       ) -> TrainState:
    """A step-0 state for the run's `--seed`, from given variables (e.g. converted from
    PyTorch) or fresh ones."""
    key = jax.random.key(seed)
    init_key, rng = jax.random.split(key)
    variables = variables or init_variables(cfg.model, init_key)
    if cfg.model.numerics.dtype == "float64":  # all in float64, as the parity tests compare it
        if not jax.config.jax_enable_x64:
            raise UserError("--dtype float64 needs JAX's 64-bit mode: `jax-dcgan train` turns "
                            "it on; in Python wrap the call in runtime.float64_mode('float64') "
                            "or call jax.config.update('jax_enable_x64', True) first.")
        variables = jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a,
            variables)
    tx_g, tx_d = optimizers(cfg)
    g_params = variables["generator"]["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), rng=rng,
        generator=variables["generator"], discriminator=variables["discriminator"],
        g_opt=tx_g.init(g_params), d_opt=tx_d.init(variables["discriminator"]["params"]),
        g_ema=jax.tree.map(jnp.copy, g_params) if cfg.ema_decay else {})


def raw_key(state: TrainState) -> TrainState:
    """`state` with its typed key as the key's raw uint32 data: what checkpoints hold (orbax
    cannot store typed keys, and 0.2 stored the same data) and what NumPy can compare."""
    return state.replace(rng=jax.random.key_data(state.rng))


def normalize_images(images: jax.Array, dtype: Any) -> jax.Array:
    """uint8 -> [-1, 1], the same float32 arithmetic as ToTensor + Normalize(0.5, 0.5)."""
    x = images.astype(jnp.promote_types(dtype, jnp.float32)) / 255.0
    return ((x - 0.5) / 0.5).astype(dtype)


def _device_rows(x: jax.Array, axis_name: str | None) -> jax.Array:
    """This device's rows of an array drawn for the global batch."""
    if axis_name is None:
        return x
    size = x.shape[0] // lax.axis_size(axis_name)
    return lax.dynamic_slice_in_dim(x, lax.axis_index(axis_name) * size, size)


def _pmean(tree: Any, axis_name: str | None) -> Any:
    return tree if axis_name is None else lax.pmean(tree, axis_name)


def step_key(state: TrainState) -> jax.Array:
    return jax.random.fold_in(state.rng, state.step)


def draw_step_randomness(key: jax.Array, cfg: StepConfig, global_batch: int
                         ) -> dict[str, jax.Array]:
    """Noise and label targets for one step's global batch (also used by the parity tests)."""
    k_noise, k_gen, k_flip = jax.random.split(key, 3)
    real = 1.0 - cfg.label_smoothing
    flip = jax.random.bernoulli(k_flip, cfg.label_flip, (2, global_batch))
    return {
        "noise": jax.random.normal(k_noise, (global_batch, cfg.model.latent_dim), jnp.float32),
        "gen_noise": jax.random.normal(k_gen, (global_batch, cfg.model.latent_dim),
                                       jnp.float32),
        "real_target": jnp.where(flip[0], 0.0, real),
        "fake_target": jnp.where(flip[1], real, 0.0),
    }


def _bce(logits: jax.Array, target: jax.Array | float) -> jax.Array:
    target = jnp.broadcast_to(jnp.asarray(target, logits.dtype), logits.shape)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))


def train_step(state: TrainState, images: jax.Array, *, cfg: StepConfig,
               axis_name: str | None = None) -> tuple[TrainState, jax.Array]:
    """One D update then one G update on this device's share of the global batch; metrics
    (len(METRICS),), averaged over devices."""
    gen, dis = Generator(cfg.model, axis_name), Discriminator(cfg.model, axis_name)
    tx_g, tx_d = optimizers(cfg)
    dtype = jnp.dtype(cfg.model.numerics.dtype)
    devices = 1 if axis_name is None else lax.axis_size(axis_name)
    rand = jax.tree.map(lambda x: _device_rows(x, axis_name),
                        draw_step_randomness(step_key(state), cfg, images.shape[0] * devices))
    real = normalize_images(images, dtype)

    def generate(g_params, g_stats, z):
        fake, new = gen.apply({"params": g_params, "batch_stats": g_stats}, z.astype(dtype),
                              train=True, mutable=["batch_stats"])
        return fake, new["batch_stats"]

    def discriminate(d_params, d_stats, x, groups=1):
        logits, new = dis.apply({"params": d_params, "batch_stats": d_stats}, x,
                                train=True, groups=groups, mutable=["batch_stats"])
        return logits, new["batch_stats"]

    g_params, g_stats = state.generator["params"], state.generator["batch_stats"]
    fake, g_vjp, g_stats = jax.vjp(lambda p: generate(p, g_stats, rand["noise"]), g_params,
                                   has_aux=True)

    # Discriminator: the real and the detached fake batch as two passes (each with its own
    # BatchNorm statistics, running statistics moved by the real pass first) whose
    # convolutions run once over both batches; then Adam.
    def d_loss_fn(d_params, d_stats):
        both = jnp.concatenate([real, lax.stop_gradient(fake)])
        logits, d_stats = discriminate(d_params, d_stats, both, groups=2)
        pred_real, pred_fake = jnp.split(logits, 2)
        loss = 0.5 * (_bce(pred_real, rand["real_target"]) + _bce(pred_fake, rand["fake_target"]))
        return loss, (d_stats, pred_real)

    d_params = state.discriminator["params"]
    (d_loss, (d_stats, pred_real)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        d_params, state.discriminator["batch_stats"])
    d_updates, d_opt = tx_d.update(_pmean(d_grads, axis_name), state.d_opt, d_params)
    d_params = optax.apply_updates(d_params, d_updates)

    # Generator: through the updated discriminator, on the same (or a fresh) fake batch.
    if cfg.fresh_noise:
        fake, g_vjp, g_stats = jax.vjp(lambda p: generate(p, g_stats, rand["gen_noise"]),
                                       g_params, has_aux=True)

    def g_loss_fn(fake, d_stats):
        pred_fake, d_stats = discriminate(d_params, d_stats, fake)
        return _bce(pred_fake, 1.0), (d_stats, pred_fake)

    (g_loss, (d_stats, pred_fake)), fake_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(
        fake, d_stats)
    (g_grads,) = g_vjp(fake_grad)
    g_updates, g_opt = tx_g.update(_pmean(g_grads, axis_name), state.g_opt, g_params)
    g_params = optax.apply_updates(g_params, g_updates)

    g_ema = state.g_ema
    if cfg.ema_decay:
        # Warm-up (as tf.train.ExponentialMovingAverage's num_updates): early on the average
        # follows the weights instead of keeping a large share of the random initialisation.
        t = state.step.astype(jnp.float32)
        decay = jnp.minimum(cfg.ema_decay, (1 + t) / (10 + t))
        g_ema = optax.incremental_update(g_params, g_ema, 1.0 - decay)

    metrics = _pmean(jnp.stack([  # in the order of METRICS
        g_loss, d_loss, 100.0 * jnp.mean(pred_real > 0), 100.0 * jnp.mean(pred_fake <= 0),
    ]), axis_name)
    new_state = state.replace(
        step=state.step + 1,
        generator={"params": g_params, "batch_stats": g_stats},
        discriminator={"params": d_params, "batch_stats": d_stats},
        g_opt=g_opt, d_opt=d_opt, g_ema=g_ema)
    return new_state, metrics


def train_steps(state: TrainState, batches: jax.Array, *, cfg: StepConfig,
                axis_name: str | None = None) -> tuple[TrainState, jax.Array]:
    """len(batches) steps in one device call; metrics (steps, len(METRICS)).

    A single step runs without `lax.scan`: XLA's CPU backend compiles native
    convolutions inside a loop body about 20x slower than outside one (docs/BENCHMARKS.md).
    """
    step = functools.partial(train_step, cfg=cfg, axis_name=axis_name)
    if batches.shape[0] == 1:
        state, metrics = step(state, batches[0])
        return state, metrics[None]
    return lax.scan(step, state, batches)


def jit_train_steps(cfg: StepConfig):
    """(state, batches[K, B, H, W, C] uint8) -> (state, metrics[K, 4]) on one device."""
    return jax.jit(functools.partial(train_steps, cfg=cfg), donate_argnums=0)


def pmap_train_steps(cfg: StepConfig, devices=None):
    """The same over devices: state replicated, batches (D, K, B/D, H, W, C).

    With several processes (`devices` None), D is this process's device count and
    the collectives span every process's devices.
    """
    return jax.pmap(functools.partial(train_steps, cfg=cfg, axis_name=AXIS), axis_name=AXIS,
                    devices=devices, donate_argnums=0)


def metrics_dict(row) -> dict[str, float]:
    """One step's metrics by name."""
    return {name: float(value) for name, value in zip(METRICS, row)}
