"""JAX against the lecture's PyTorch model and step, as rows of a table.

`jax-dcgan parity` prints the rows and exits non-zero if one fails; `parity_tests/`
asserts the same rows (and adds the cases a user's weights cannot change). Each row
names what is compared, the largest difference, the tolerance and why it is that.

Both frameworks run on what they find (JAX's default backend; PyTorch on CUDA when
present, else the CPU) at full float32 precision: JAX's `highest` matmul precision and
PyTorch with TF32 off. On GPUs, INFO rows then show how far the default precisions
(TF32, bfloat16) move the results, as users get them without asking.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jax_dcgan.common import runtime
from jax_dcgan.common.optional import import_torch
from jax_dcgan.config import CONV_BACKENDS, Config
from jax_dcgan.model.convert import from_state_dict, to_state_dict
from jax_dcgan.model.layers import conv2d, conv_transpose2d
from jax_dcgan.model.networks import Discriminator, Generator, leaky_relu, torch_layer_indices
from jax_dcgan.model.step import (create_train_state, draw_step_randomness, jit_train_steps,
                                  metrics_dict, normalize_images, pmap_train_steps, raw_key,
                                  step_key)
from jax_dcgan.training.parallel import device_sharding, replicate

torch = import_torch()
from torch_reference import DCGAN, make_optimizers, train_step  # noqa: E402
from torch_reference.train import to_tensor as to_torch_images  # noqa: E402

__all__ = ["as_json", "checks", "default_setup", "format_table", "full_precision", "passed"]

SEED_CFG = Config()  # the lecture's widths: 64/64, latent 100, 64x64x3
SMALL_CFG = Config(gen_features=8, dis_features=8, latent_dim=16, image_size=32)
# A float32 sum of up to 8,192 products of O(1) values rounds at ~1e-6 in either framework.
F32 = "float32 sums of up to 8,192 products of O(1) values round at ~1e-6"
F64 = "float64 rounding (~1e-16 per operation) over a whole pass or step"
NO_FLOAT64 = "this platform has no float64 convolutions (TPU)"
TRAIN_BN = (f"{F32}; train-mode BatchNorm divides by each channel's batch std, which "
            "magnifies it in channels of small variance (measured ~4e-6)")


@dataclasses.dataclass(frozen=True)
class Row:
    """One comparison of the parity report: what, the largest difference, its tolerance."""
    check: str
    measured: float | None  # None: not compared here (`why` says why)
    tolerance: float | None  # None: information, not a pass/fail comparison
    why: str
    group: str = ""

    @property
    def status(self) -> str:
        if self.measured is None:
            return "SKIP"
        if self.tolerance is None:
            return "INFO"
        return "PASS" if self.measured <= self.tolerance else "FAIL"  # NaN fails


def skipped(check: str, why: str) -> list[Row]:
    return [Row(check, None, None, why)]


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where and from which weights the comparisons run."""
    cfg: Config = SEED_CFG
    state_dict: dict | None = None  # the user's lecture-format weights; None: seed-0 init
    device: str = "cpu"  # PyTorch's

    @property
    def float64(self) -> bool:
        return jax.default_backend() != "tpu"  # TPUs have no float64 convolutions


def default_setup(cfg: Config = SEED_CFG, state_dict: dict | None = None) -> Setup:
    return Setup(cfg, state_dict, "cuda" if torch.cuda.is_available() else "cpu")


# ---- the two models with the same weights ----

def torch_model(cfg: Config, seed: int = 0, dtype=None, state_dict: dict | None = None,
                device: str = "cpu") -> DCGAN:
    torch.manual_seed(seed)
    model = DCGAN(cfg.latent_dim, cfg.gen_features, cfg.dis_features, cfg.channels,
                  cfg.image_size, cfg.gen_activation, cfg.gen_slope, cfg.dis_slope,
                  cfg.weight_init)
    if state_dict is not None:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    return model.to(dtype or torch.float32).to(device)


def state_dict_numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def jax_variables(model, cfg: Config) -> dict:
    return jax.tree.map(jnp.asarray, from_state_dict(state_dict_numpy(model), cfg.model))


def images(cfg: Config, n: int, seed: int = 0) -> np.ndarray:
    """A uint8 NHWC batch."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, cfg.image_size, cfg.image_size, cfg.channels), np.uint8)


def torch_noise(noise, dtype=None, device: str = "cpu"):
    """JAX's (N, latent) noise as the reference's (N, latent, 1, 1)."""
    return torch.tensor(np.asarray(noise), dtype=dtype or torch.float32,
                        device=device)[:, :, None, None]


def nchw(x) -> np.ndarray:
    return np.asarray(x).transpose(0, 3, 1, 2)


def numpy(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def flax_tree_as_torch(params: dict, net: str, cfg: Config) -> dict[str, np.ndarray]:
    """A params-shaped tree of one network (gradients, Adam moments) in PyTorch layout."""
    return to_state_dict({"generator": {}, "discriminator": {}, net: {"params": params}},
                         cfg.model)


def float64():
    """JAX's x64 mode inside the block."""
    return runtime.float64_mode("float64")


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """float32 matmuls and convolutions at float32 precision in both frameworks (GPUs
    otherwise round their inputs to TF32 or bfloat16)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.default_matmul_precision("highest"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_both(cfg: Config, steps: int, batch: int, dtype=None, seed: int = 0,
             state_dict: dict | None = None, device: str = "cpu"):
    """The same steps in both: (model, optimizers, torch logs, JAX state, JAX metrics).

    The reference draws nothing itself but the noise it is given; its labels are its
    own ones and zeros unless an option (smoothing, flips) changes them."""
    dtype = dtype or torch.float32
    model = torch_model(cfg, seed, dtype, state_dict, device)
    opt_g, opt_d = make_optimizers(model, cfg.lr_g, cfg.lr_d, (cfg.beta1, cfg.beta2), cfg.eps)
    step_cfg = cfg.step_config()
    state = create_train_state(step_cfg, seed, jax_variables(model, cfg))
    step = jit_train_steps(step_cfg)
    own_labels = cfg.label_smoothing == 0 and cfg.label_flip == 0
    logs, metrics = [], []
    tensor = lambda a: torch.tensor(np.asarray(a), dtype=dtype, device=device)
    for i in range(steps):
        data = images(cfg, batch, seed=100 + i)
        rand = draw_step_randomness(step_key(state), step_cfg, batch)
        logs.append(train_step(
            model, opt_g, opt_d, to_torch_images(data, dtype, device),
            torch_noise(rand["noise"], dtype, device),
            gen_noise=torch_noise(rand["gen_noise"], dtype, device) if cfg.fresh_noise else None,
            dis_targets=None if own_labels else (tensor(rand["real_target"]),
                                                 tensor(rand["fake_target"]))))
        state, m = step(state, jnp.asarray(data)[None])
        metrics.append(metrics_dict(m[0]))
    return model, (opt_g, opt_d), logs, state, metrics


def adam_moments_torch(model, optimizers, net: str, moment: str) -> dict[str, np.ndarray]:
    opt = optimizers[0] if net == "generator" else optimizers[1]
    return {f"{net}.{name}": numpy(opt.state[p][moment])
            for name, p in getattr(model, net).named_parameters()}


def moment_errors(state, model, optimizers, cfg: Config) -> list[np.ndarray]:
    """|ours - PyTorch's| / the scale of PyTorch's, per Adam moment tensor of both nets."""
    errors = []
    for net, opt_state in (("generator", state.g_opt), ("discriminator", state.d_opt)):
        for ours, name in ((opt_state[0].mu, "exp_avg"), (opt_state[0].nu, "exp_avg_sq")):
            theirs = adam_moments_torch(model, optimizers, net, name)
            errors += [np.abs(v - theirs[k]) / np.abs(theirs[k]).max()
                       for k, v in flax_tree_as_torch(ours, net, cfg).items()]
    return errors


def _max(pairs) -> float:
    return max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                              initial=0)) for a, b in pairs), default=0.0)


# ---- the comparisons ----

def architecture(setup: Setup) -> list[Row]:
    """Output shape after every layer and the parameter count of each network."""
    cfg = setup.cfg
    model = torch_model(cfg, state_dict=setup.state_dict)
    variables = jax_variables(model, cfg)
    z, x = torch.zeros(2, cfg.latent_dim, 1, 1), torch.zeros(2, cfg.channels, cfg.image_size,
                                                             cfg.image_size)
    rows = []
    for net, module, inputs in (("generator", Generator(cfg.model), z),
                                ("discriminator", Discriminator(cfg.model), x)):
        theirs, y = {}, inputs
        for i, layer in enumerate(getattr(model, net)):
            y = layer(y)
            theirs[i] = tuple(y.shape)
        ours_in = jnp.asarray(inputs.numpy()[:, :, 0, 0] if net == "generator"
                              else inputs.numpy().transpose(0, 2, 3, 1))
        _, state = module.apply(variables[net], ours_in, train=True, capture_intermediates=True,
                                mutable=["batch_stats", "intermediates"])
        indices = torch_layer_indices(cfg.model)[net]
        mismatched = 0
        for name, value in state["intermediates"].items():
            if name != "__call__":
                n, h, w, c = value["__call__"][0].shape
                mismatched += theirs[indices[name]] != (n, c, h, w)
        rows.append(Row(f"{net}: layers whose output shape differs", mismatched, 0,
                        "shapes are exact"))
        count = lambda tree: sum(int(np.size(a)) for a in jax.tree.leaves(tree))
        torch_count = sum(p.numel() for p in getattr(model, net).parameters())
        rows.append(Row(f"{net}: parameters, JAX - PyTorch ({torch_count:,} in PyTorch)",
                        abs(count(variables[net]["params"]) - torch_count), 0, "counts are exact"))
    return rows


LAYER_CASES = {  # (c_in, c_out, input size, stride, padding): the model's layers and two others
    "transposed": [(100, 512, 1, 1, 0), (512, 256, 4, 2, 1), (64, 3, 32, 2, 1), (5, 7, 3, 3, 2)],
    "conv": [(3, 64, 64, 2, 1), (256, 512, 8, 2, 1), (512, 1, 4, 1, 0), (6, 5, 9, 1, 1)],
}


OPS = {"transposed": "conv_transpose2d", "conv": "conv2d"}


def layer_values(impl: str, transposed: bool, shape: tuple, device: str = "cpu") -> float:
    """One convolution layer against torch.nn's, float32: the largest difference."""
    c_in, c_out, size, stride, padding = shape
    torch.manual_seed(0)
    kind = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    layer = kind(c_in, c_out, 4, stride, padding, bias=False).to(device)
    x = torch.randn(3, c_in, size, size).to(device)
    perm = (0, 2, 3, 1) if transposed else (2, 3, 1, 0)
    op = conv_transpose2d if transposed else conv2d
    ours = op(jnp.asarray(numpy(x).transpose(0, 2, 3, 1)),
              jnp.asarray(numpy(layer.weight).transpose(perm)), stride, padding, impl)
    return float(np.abs(nchw(ours) - numpy(layer(x))).max())


def layer_gradients(impl: str, transposed: bool, shape: tuple) -> float:
    """d sum(sin(layer(x))) / d(x, kernel), float64: our VJPs against torch autograd."""
    c_in, c_out, size, stride, padding = shape
    torch.manual_seed(0)
    x = torch.randn(2, c_in, size, size, dtype=torch.float64, requires_grad=True)
    w_shape = (c_in, c_out, 4, 4) if transposed else (c_out, c_in, 4, 4)
    weight = torch.randn(*w_shape, dtype=torch.float64, requires_grad=True)
    f = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    theirs = torch.autograd.grad(torch.sin(f(x, weight, stride=stride, padding=padding)).sum(),
                                 (x, weight))
    perm = (0, 2, 3, 1) if transposed else (2, 3, 1, 0)
    op = conv_transpose2d if transposed else conv2d
    with float64():
        grads = jax.grad(lambda a, k: jnp.sum(jnp.sin(op(a, k, stride, padding, impl))), (0, 1))(
            jnp.asarray(numpy(x).transpose(0, 2, 3, 1)), jnp.asarray(numpy(weight).transpose(perm)))
    ours = (nchw(grads[0]), np.asarray(grads[1]).transpose(np.argsort(perm)))
    return _max(zip(ours, (numpy(t) for t in theirs)))


ACTIVATIONS = {  # name: (ours, PyTorch's)
    "LeakyReLU(0.01)": (lambda x: leaky_relu(x, 0.01), lambda: torch.nn.LeakyReLU()),
    "LeakyReLU(0.2)": (lambda x: leaky_relu(x, 0.2), lambda: torch.nn.LeakyReLU(0.2)),
    "ReLU": (jax.nn.relu, lambda: torch.nn.ReLU()),
    "Tanh": (jnp.tanh, lambda: torch.nn.Tanh()),
}


def activation(name: str) -> tuple[float, float]:
    """Largest difference of values and of gradients on [-4, 4] and at exactly 0 (the kink,
    where the gradient is a convention: PyTorch's is the slope, or 0 for ReLU)."""
    ours, theirs = ACTIVATIONS[name]
    x = torch.cat([torch.linspace(-4, 4, 1000), torch.zeros(3), torch.tensor([-1e-30, 1e-30])])
    x.requires_grad_()
    y = theirs()(x)
    (grad,) = torch.autograd.grad(y.sum(), x)
    xj = jnp.asarray(numpy(x))
    return (_max([(ours(xj), numpy(y))]),
            _max([(jax.grad(lambda v: ours(v).sum())(xj), numpy(grad))]))


def layers(setup: Setup, impl: str) -> list[Row]:
    rows = [Row(f"{OPS[kind]} {shape}: values, float32", layer_values(impl, kind == "transposed",
                                                                      shape, setup.device),
                2e-5, F32)
            for kind, shapes in LAYER_CASES.items() for shape in shapes]
    if setup.float64:
        rows += [Row(f"{OPS[kind]} {shape}: input and kernel gradients, float64",
                     layer_gradients(impl, kind == "transposed", shape), 2e-10,
                     f"{F64}; gradients are sums of up to 8,192 products of values up to "
                     "~100 (measured up to 2e-11)")
                 for kind, shapes in LAYER_CASES.items() for shape in shapes]
    for name in ACTIVATIONS:
        values, grads = activation(name)
        rows += [Row(f"{name}: values on [-4, 4] and at exactly 0", values, 4e-6,
                     "one float32 multiply (exact here) or tanh: a few ulp (measured 1.8e-7)"),
                 Row(f"{name}: gradients, at exactly 0 too", grads, 4e-6,
                     "the same slope on each side and PyTorch's choice at the kink; tanh's "
                     "1 - y^2 in float32 (measured 3.7e-7)")]
    return rows


def warmed_up(setup: Setup):
    """The reference with non-trivial running statistics, for eval mode."""
    cfg = setup.cfg
    model = torch_model(cfg, state_dict=setup.state_dict, device=setup.device)
    if setup.state_dict is None:
        with torch.no_grad():
            for seed in range(3):
                model.generator(torch.randn(64, cfg.latent_dim, 1, 1, device=setup.device))
                model.discriminator(to_torch_images(images(cfg, 64, seed), device=setup.device))
    return model


def forward(setup: Setup, impl: str, batch: int = 64) -> list[Row]:
    cfg = setup.cfg.replace(conv_impl=impl)
    model = warmed_up(setup)
    variables = jax_variables(model, cfg)
    torch.manual_seed(1)
    z = torch.randn(batch, cfg.latent_dim, 1, 1).to(setup.device)
    x = to_torch_images(images(cfg, batch, seed=9), device=setup.device)
    rows = []
    for train in (False, True):  # eval first: a train-mode pass updates PyTorch's statistics
        model.train(train)
        with torch.no_grad():
            g, d = numpy(model.generator(z)), numpy(model.discriminator(x))[:, 0]
        kw = dict(train=True, mutable=["batch_stats"]) if train else dict(train=False)
        gj = Generator(cfg.model).apply(variables["generator"], jnp.asarray(numpy(z)[:, :, 0, 0]),
                                        **kw)
        dj = Discriminator(cfg.model).apply(variables["discriminator"],
                                            jnp.asarray(numpy(x).transpose(0, 2, 3, 1)), **kw)
        mode = "train" if train else "eval"
        if train:
            (gj, g_new), (dj, d_new) = gj, dj
            ours = to_state_dict({"generator": {**variables["generator"], **g_new},
                                  "discriminator": {**variables["discriminator"], **d_new}},
                                 cfg.model)
            theirs = state_dict_numpy(model)
            stats = [(ours[k], v) for k, v in theirs.items() if "running" in k]
            counts = [(ours[k], v) for k, v in theirs.items() if "num_batches" in k]
            rows += [Row("BatchNorm running mean and var after a train pass, float32",
                          _max(stats), 1e-5, f"{F32}; momentum 0.1 of them"),
                     Row("BatchNorm num_batches_tracked after a train pass", _max(counts), 0,
                         "integers")]
        tolerance, why = (5e-5, TRAIN_BN) if train else (1e-6, F32)
        rows += [Row(f"G forward, {mode} mode ({batch} images), float32", _max([(nchw(gj), g)]),
                     tolerance, why),
                 Row(f"D forward, {mode} mode ({batch} images), float32", _max([(dj, d)]),
                     tolerance, why)]
    return rows


def gradients(setup: Setup, impl: str, batch: int = 16) -> list[Row]:
    """dL_D/dθ_D through two train-mode passes, dL_G/dθ_G through D in train mode; float64
    where the platform has it (in float32 an activation within rounding of a LeakyReLU
    kink takes the other slope and moves every gradient upstream by up to a few percent)."""
    if not setup.float64:
        return skipped("gradients of both losses", NO_FLOAT64)
    import optax

    with float64():
        cfg = setup.cfg.replace(dtype="float64", conv_impl=impl)
        model = torch_model(cfg, dtype=torch.float64, state_dict=setup.state_dict,
                            device=setup.device)
        variables = jax_variables(model, cfg)
        data = images(cfg, batch)
        z = np.random.default_rng(0).standard_normal((batch, cfg.latent_dim))
        bce_torch = torch.nn.functional.binary_cross_entropy_with_logits
        ones = torch.ones(batch, dtype=torch.float64, device=setup.device)
        fake = model.generator(torch.from_numpy(z).to(setup.device)[:, :, None, None])
        d_loss = 0.5 * (bce_torch(model.discriminator(to_torch_images(
            data, torch.float64, setup.device)).view(-1), ones)
            + bce_torch(model.discriminator(fake.detach()).view(-1), torch.zeros_like(ones)))
        d_grads = torch.autograd.grad(d_loss, list(model.discriminator.parameters()))
        g_loss = bce_torch(model.discriminator(fake).view(-1), ones)
        g_grads = torch.autograd.grad(g_loss, list(model.generator.parameters()))

        gen, dis = Generator(cfg.model), Discriminator(cfg.model)
        g_vars, d_vars = variables["generator"], variables["discriminator"]

        def bce(logits, target):
            return jnp.mean(optax.sigmoid_binary_cross_entropy(logits,
                                                               jnp.full_like(logits, target)))

        def D(p, x):
            return dis.apply({"params": p, "batch_stats": d_vars["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])[0]

        def G(p):
            return gen.apply({"params": p, "batch_stats": g_vars["batch_stats"]},
                             jnp.asarray(z), train=True, mutable=["batch_stats"])[0]

        real = normalize_images(jnp.asarray(data), jnp.float64)
        ours_d = jax.grad(lambda p: 0.5 * (bce(D(p, real), 1.0)
                                           + bce(D(p, G(g_vars["params"])), 0.0)))(d_vars["params"])
        ours_g = jax.grad(lambda p: bce(D(d_vars["params"], G(p)), 1.0))(g_vars["params"])
    rows = []
    for net, ours, theirs in (("discriminator", ours_d, d_grads), ("generator", ours_g, g_grads)):
        names = [f"{net}.{n}" for n, _ in getattr(model, net).named_parameters()]
        ours = flax_tree_as_torch(ours, net, cfg)
        relative = max(float(np.abs(ours[n] - numpy(g)).max() / np.abs(numpy(g)).max())
                       for n, g in zip(names, theirs))
        missing = len(set(names) ^ set(ours))
        rows += [Row(f"{net}: gradient of its loss, float64, max / scale per tensor", relative,
                     1e-10, F64),
                 Row(f"{net}: gradient tensors without a counterpart", missing, 0, "exact")]
    return rows


def one_step(setup: Setup, impl: str, batch: int = 16) -> list[Row]:
    """One float32 step at the lecture's settings: losses, accuracies, every parameter,
    statistic and Adam moment.

    Two discontinuities turn float32 rounding into visible differences, in PyTorch
    against itself too: Adam's first update is lr * g / (|g| + eps), so a gradient that
    rounds to the other side of zero moves its parameter by -lr instead of +lr; and an
    activation within rounding of LeakyReLU's kink takes the other slope in the backward
    pass. Hence bounds on the share of values beyond 1e-5, and on the largest (2 lr: one
    sign flip)."""
    cfg = setup.cfg.replace(conv_impl=impl)
    model, optimizers, logs, state, metrics = run_both(cfg, 1, batch,
                                                       state_dict=setup.state_dict,
                                                       device=setup.device)
    ours = to_state_dict({"generator": state.generator, "discriminator": state.discriminator},
                         cfg.model)
    diffs = np.concatenate([np.abs(np.asarray(ours[k], np.float64) - v).ravel()
                            for k, v in state_dict_numpy(model).items()])
    moments = np.concatenate([e.ravel() for e in moment_errors(state, model, optimizers, cfg)])
    moment_max = float(moments.max())
    lr = max(cfg.lr_g, cfg.lr_d)
    loss = lambda k: abs(metrics[0][k] - logs[0][k]) / abs(logs[0][k])
    return [
        Row("float32: D loss, relative", loss("d_loss"), 1e-5, F32),
        Row("float32: G loss (after D's step), relative", loss("g_loss"), 2e-4,
            "measured after D's Adam step, in which sign flips moved ~0.1% of D's values by "
            "2 lr (measured ~1e-5)"),
        Row("float32: D accuracies (percent), real and fake",
            max(abs(metrics[0][k] - logs[0][k]) for k in ("acc_real", "acc_fake")), 0,
            "counts of logits > 0; equal unless a logit is within rounding of 0"),
        Row("float32: params + stats, share beyond 1e-5", float(np.mean(diffs > 1e-5)),
            2.5e-2, "a gradient within rounding of 0 flips the sign of Adam's first update "
            "(measured 0.1-0.2% of values); a wrong update would move nearly all"),
        Row("float32: params + stats, max", float(diffs.max()), 2 * lr + 1e-5,
            "a bound, not a tolerance: Adam's first update is at most lr, so a sign flip "
            "moves a value by at most 2 lr"),
        Row("float32: Adam moments, share beyond 1% of scale",
            float(np.mean(moments > 1e-2)), None,
            "information: one kink flip in D's first layer shifts every G gradient, so this "
            "ranges from 0.01% to a few % with the weights (0.01-0.02% at seed 0, 4% at seed 3)"),
        Row("float32: Adam moments, max / scale", moment_max, 0.3,
            "a kink flip changes gradients by a few percent (measured ~2.6%)"),
        Row("Adam step counts, JAX - PyTorch",
            abs(int(state.g_opt[0].count) - optimizers[0].state[
                next(model.generator.parameters())]["step"].item()), 0, "exact"),
    ]


def many_steps(setup: Setup, impl: str, steps: int = 12, batch: int = 8) -> list[Row]:
    """Consecutive steps in float64 (small widths): float64 keeps Adam's division by tiny
    moments from amplifying rounding, so the whole state must agree closely."""
    if not setup.float64:
        return skipped(f"{steps} steps, float64", NO_FLOAT64)
    with float64():
        cfg = SMALL_CFG.replace(dtype="float64", conv_impl=impl)
        model, optimizers, logs, state, metrics = run_both(cfg, steps, batch, torch.float64,
                                                           device=setup.device)
        ours = to_state_dict({"generator": state.generator, "discriminator": state.discriminator},
                             cfg.model)
        moments = max(float(e.max()) for e in moment_errors(state, model, optimizers, cfg))
        losses = max(abs(m[k] - t[k]) for m, t in zip(metrics, logs) for k in m)
        what = f"{steps} steps, float64 (widths 8, seed-0 init)"
        return [Row(f"{what}: losses and accuracies, max", losses, 1e-9, F64),
                Row(f"{what}: params + stats, max",
                    _max((ours[k], v) for k, v in state_dict_numpy(model).items()), 1e-9, F64),
                Row(f"{what}: Adam moments, max / scale", moments, 1e-9, F64)]


def multi_device(setup: Setup, batch: int = 8) -> list[Row]:
    """N devices with N shards against one device on the whole batch (float64 where the
    platform has it): BatchNorm statistics of the global batch, averaged gradients."""
    count = 1 << (min(jax.local_device_count(), batch).bit_length() - 1)
    if count < 2:
        return skipped("several devices against one", "this machine has one device")
    dtype = "float64" if setup.float64 else "float32"
    with runtime.float64_mode(dtype):
        cfg = setup.cfg.replace(dtype=dtype)
        data = images(cfg, batch)[None]
        variables = jax_variables(torch_model(cfg, state_dict=setup.state_dict), cfg)
        step_cfg = cfg.step_config()
        state = create_train_state(step_cfg, cfg.seed, variables)  # float64 in float64 mode
        devices = jax.local_devices()[:count]
        replicated = replicate(state, devices)
        single, m_single = jit_train_steps(step_cfg)(state, jnp.asarray(data))
        shards = jax.device_put(data.reshape(1, count, batch // count, *data.shape[2:])
                                .swapaxes(0, 1), device_sharding(devices))
        multi, m_multi = pmap_train_steps(step_cfg, devices)(replicated, shards)
        leaves = list(zip(jax.tree.leaves(raw_key(multi)), jax.tree.leaves(raw_key(single))))
        spread = max(float(np.abs(np.asarray(a) - np.asarray(a)[:1]).max()) for a, _ in leaves)
        diff = _max((np.asarray(a)[0], b) for a, b in leaves)
    tolerance, why = (1e-9, F64) if setup.float64 else (
        2 * max(cfg.lr_g, cfg.lr_d) + 1e-5, "float32: a bound, as in the one-step rows: a "
        "gradient within rounding of 0 flips Adam's first update by at most 2 lr")
    return [Row(f"{count} devices vs 1, {dtype}: whole state after a step, max", diff,
                tolerance, why),
            Row(f"{count} devices vs 1, {dtype}: losses, max", _max([(m_multi[0], m_single)]),
                tolerance, why),
            Row(f"{count} devices: replicas differ from each other, max", spread, 0,
                "every replica applies the same all-reduced update")]


def default_precision(setup: Setup) -> list[Row]:
    """What a GPU's defaults (TF32 in PyTorch, JAX's default precision, bfloat16) do to the
    forward passes, against full float32 precision: information, not a test."""
    if setup.device != "cuda" and jax.default_backend() != "gpu":
        return skipped("default GPU precisions", "no GPU here")
    cfg = setup.cfg
    model = warmed_up(setup).eval()
    variables = jax_variables(model, cfg)
    z = torch.randn(64, cfg.latent_dim, 1, 1, generator=torch.Generator().manual_seed(2))
    zj = jnp.asarray(z.numpy()[:, :, 0, 0])
    rows = []
    with full_precision(), torch.no_grad():
        exact = numpy(model.generator(z.to(setup.device)))
        exact_jax = nchw(Generator(cfg.model).apply(variables["generator"], zj, train=False))
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with torch.no_grad():
            tf32 = numpy(model.generator(z.to(setup.device)))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    with jax.default_matmul_precision("default"):
        jax_default = nchw(Generator(cfg.model).apply(variables["generator"], zj, train=False))
        bf16 = nchw(Generator(cfg.replace(dtype="bfloat16").model).apply(
            variables["generator"], zj, train=False)).astype(np.float32)
    for name, value, reference in (("PyTorch with TF32", tf32, exact),
                                   ("JAX at its default precision", jax_default, exact_jax),
                                   ("JAX with --dtype bfloat16", bf16, exact_jax)):
        rows.append(Row(f"G eval images: {name} vs full float32, max", _max([(value, reference)]),
                        None, "what the default settings cost in exactness"))
    return rows


BACKEND_CASES = ([(True, s) for s in LAYER_CASES["transposed"]]
                 + [(False, s) for s in LAYER_CASES["conv"]]
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
            jnp.sin(op(a, b, stride, padding, impl))), (0, 1))(x, k)) for impl in CONV_BACKENDS]


def backends(setup: Setup) -> list[Row]:
    """matmul against xla in float64: each layer kind's values and gradients, and 12 steps
    from the same start; they differ by summation order only."""
    if not setup.float64:
        return skipped("matmul against xla in float64", NO_FLOAT64)
    layers_diff = 0.0
    for transposed, shape in BACKEND_CASES:
        matmul, xla = backend_results(transposed, shape)
        layers_diff = max(layers_diff, _max(zip(jax.tree.leaves(matmul), jax.tree.leaves(xla))))
    with float64():
        states = [run_both(SMALL_CFG.replace(dtype="float64", conv_impl=impl), 12, 8,
                           torch.float64, device=setup.device)[3] for impl in CONV_BACKENDS]
        steps_diff = _max(zip(*(jax.tree.leaves(raw_key(s)) for s in states)))
    return [Row("each layer kind, float64: values (up to ~100) and gradients, max", layers_diff,
                1e-10, F64),
            Row("12 steps, float64 (widths 8, seed-0 init): whole state, max", steps_diff,
                1e-12, F64)]


def checks(setup: Setup) -> list[tuple[str, Callable[[], list[Row]]]]:
    """Every comparison, named, in the order the table prints them; run them inside
    `full_precision()`."""
    found = [("architecture", lambda: architecture(setup))]
    for impl in CONV_BACKENDS:
        found += [(f"{impl}-layers", lambda impl=impl: layers(setup, impl)),
                  (f"{impl}-forward", lambda impl=impl: forward(setup, impl)),
                  (f"{impl}-gradients", lambda impl=impl: gradients(setup, impl)),
                  (f"{impl}-one-step", lambda impl=impl: one_step(setup, impl)),
                  (f"{impl}-many-steps", lambda impl=impl: many_steps(setup, impl))]
    return found + [("matmul-vs-xla", lambda: backends(setup)),
                    ("multi-device", lambda: multi_device(setup)),
                    ("default-precision", lambda: default_precision(setup))]


CHECK_NAMES = [name for name, _ in checks(Setup())]


def format_table(rows: list[Row], setup: Setup, weights: str | None) -> str:
    head = (f"JAX on {jax.default_backend()} ({jax.local_device_count()} devices) against "
            f"PyTorch {torch.__version__} on {setup.device}; weights: "
            f"{weights or 'PyTorch init, seed 0'}; float32 at full precision")
    width = max((len(f"{r.group}: {r.check}") for r in rows), default=10)
    lines = [head, f"{'comparison':{width}}  {'largest':>9}  {'tolerance':>9}  status"]
    for r in rows:
        measured = "-" if r.measured is None else f"{r.measured:9.2e}"
        tolerance = "" if r.tolerance is None else f"{r.tolerance:9.1e}"
        lines.append(f"{r.group + ': ' + r.check:{width}}  {measured:>9}  {tolerance:>9}  "
                     f"{r.status}" + (f" ({r.why})" if r.status == "SKIP" else ""))
    counts = {s: sum(r.status == s for r in rows) for s in ("PASS", "FAIL", "INFO", "SKIP")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing compared")
    lines += [f"FAIL {r.group}: {r.check}: {r.measured:.3e} > {r.tolerance:.1e} ({r.why})"
              for r in rows if r.status == "FAIL"]
    return "\n".join(lines)


def passed(rows: list[Row]) -> bool:
    """No row failed, and at least one was compared."""
    return any(r.status == "PASS" for r in rows) and not any(r.status == "FAIL" for r in rows)


def as_json(row: Row) -> dict:
    finite = row.measured is None or np.isfinite(row.measured)
    return {**dataclasses.asdict(row), "status": row.status,
            "measured": row.measured if finite else str(row.measured)}
