"""`jax-dcgan train` end to end on tiny configurations."""

import dataclasses
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
import torch

from jax_dcgan.common import runtime
from jax_dcgan.model.step import raw_key
from jax_dcgan.outputs.sample import GRID_IMAGES, draw_noise, grid_pass
from jax_dcgan.training import checkpoint, epoch_end, parallel
from jax_dcgan.training.loop import train
from torch_reference import DCGAN

from .helpers import (ROOT, TINY, assert_identical, cli_here, final_state, records, step_records,
                      tiny_flags)


def tensorboard_events(logdir) -> dict[str, list[int]]:
    """Tag -> steps of every value in the TensorBoard event files under `logdir`."""
    from tensorboardX.proto.event_pb2 import Event

    tags: dict[str, list[int]] = {}
    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            blob = f.read()
        position = 0
        while position < len(blob):  # TFRecord: length, its CRC, the data, the data's CRC
            (length,) = struct.unpack("<Q", blob[position:position + 8])
            event = Event.FromString(blob[position + 12:position + 12 + length])
            position += 16 + length
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


@pytest.mark.parametrize("devices", [1, 4])
def test_train_writes_every_output(tmp_path, devices):
    cfg = TINY.replace(cache_dir=str(tmp_path / "cache"), devices=devices)
    out = tmp_path / "run"
    state = train(cfg, str(out), quiet=True)
    steps_per_epoch = cfg.num_synthetic // cfg.batch_size
    total = cfg.epochs * steps_per_epoch
    assert int(state.step) == total

    steps = step_records(out)
    assert [r["step"] for r in steps] == list(range(1, total + 1))
    assert all(np.isfinite(r[k]) for r in steps for k in ("g_loss", "d_loss"))
    assert {r["epoch"] for r in steps} == {1, 2}
    assert all(0 <= r["acc_real"] <= 100 and r["images_per_s"] > 0 for r in steps)
    assert [r["step"] for r in records(out) if "diversity" in r] == [8, 16]

    assert sorted(os.listdir(out / "samples")) == ["epoch_001.png", "epoch_002.png"]
    assert (out / "losses.png").stat().st_size > 10_000
    assert checkpoint.Checkpoints(str(out / "checkpoints")).latest_step() == total
    model = DCGAN(cfg.latent_dim, cfg.gen_features, cfg.dis_features, image_size=cfg.image_size)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)

    (start,) = json.loads((out / "run.json").read_text())["starts"]
    assert start["step"] == 0 and start["conv_impl"] == "matmul"  # auto, on a CPU
    assert start["steps_per_dispatch"] == 3 and len(start["devices"]) == devices
    assert {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint"} <= set(start["versions"])
    assert start["git_commit"] is None or len(start["git_commit"].rstrip("+")) == 40

    events = tensorboard_events(out / "tensorboard")
    # Per-step values as means over every --log-every (2) steps; the rest as they come.
    assert events["losses/g_loss"] == list(range(2, total + 1, 2))
    assert events["samples/fixed_noise"] == events["quality/diversity"] == [8, 16]
    assert events["samples/real_vs_fake"] == [16]  # with real_vs_fake.png, at the end
    assert (out / "real_vs_fake.png").exists() and (out / "progress.webp").exists()
    # Every tag in its section (losses, accuracy, quality, throughput, system, samples).
    assert {tag.split("/")[0] for tag in events} == {
        "losses", "accuracy", "quality", "throughput", "system", "samples"}, sorted(events)


def test_one_and_four_devices_train_alike(tmp_path):
    """Same global batches and noise through the whole loop (the Batches layout, K-step
    calls): only summation order differs, so in float64 the whole state (G, D, BatchNorm
    statistics, Adam moments, step, key) agrees after 8 steps: measured 1.7e-16, held to
    1e-12."""
    states = [train(TINY.replace(cache_dir=str(tmp_path / "c"), devices=d, epochs=1,
                                 dtype="float64"), str(tmp_path / f"run{d}"), quiet=True)
              for d in (1, 4)]
    one, four = (jax.tree_util.tree_leaves_with_path(raw_key(s)) for s in states)
    assert len(one) == len(four) > 40
    for (path, a), (_, b) in zip(one, four):
        assert np.asarray(a).dtype == np.asarray(b).dtype, jax.tree_util.keystr(path)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-12,
                                   err_msg=jax.tree_util.keystr(path))
    assert np.asarray(states[0].generator["params"]["to_rgb"]["kernel"]).dtype == np.float64


def test_cli_float64_computes_in_float64(tmp_path):
    """`--dtype float64` from the command line keeps and computes everything in float64
    (without JAX's x64 mode it would silently be float32)."""
    cli_here("train", "--out", tmp_path / "run", "--quiet",
             *tiny_flags(tmp_path / "c", epochs=1, dtype="float64"))
    exported = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert {t.dtype for k, t in exported.items() if "num_batches" not in k} == {torch.float64}
    cli_here("sample", "--checkpoint", tmp_path / "run", "--out", tmp_path / "grid.png",
             "--num", "4")
    assert (tmp_path / "grid.png").stat().st_size > 0


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_epoch_grid_moves_the_running_statistics_as_configured(tmp_path, ema):
    """The lecture's grid is a train-mode pass of G: one more BatchNorm update per epoch
    (the full comparison with the lecture's loop is parity_tests/test_loop.py); off, grids
    leave G untouched. With an EMA, the grid shows the average's samples but the statistics
    move as a pass of the trained weights would move them. Running statistics play no part
    in training, so both runs train alike and differ only by the grid's pass."""
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"), epochs=1, ema_decay=ema)
    on = train(cfg, str(tmp_path / "on"), quiet=True)
    off = train(cfg.replace(grid_updates_stats=False), str(tmp_path / "off"), quiet=True)
    assert_identical(on.generator["params"], off.generator["params"])
    assert int(off.generator["batch_stats"]["bn_4x4"]["count"]) == 8
    noise = draw_noise(cfg.latent_dim, GRID_IMAGES, cfg.seed)
    _, expected = grid_pass(cfg.model, off.generator, noise)
    for x, y in zip(jax.tree.leaves(on.generator["batch_stats"]), jax.tree.leaves(expected),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert int(on.generator["batch_stats"]["bn_4x4"]["count"]) == 9
    if ema:  # not the pass of the average's weights
        _, of_average = grid_pass(cfg.model, {**off.generator, "params": off.g_ema}, noise)
        assert not np.allclose(of_average["bn_4x4"]["mean"],  # ~2e-4 apart, relatively
                               on.generator["batch_stats"]["bn_4x4"]["mean"], rtol=1e-5, atol=0)


def test_streamed_data_gives_the_same_run_as_device_resident(tmp_path):
    base = TINY.replace(cache_dir=str(tmp_path / "c"), epochs=1)
    train(base, str(tmp_path / "a"), quiet=True)
    train(base.replace(data_on_device="no"), str(tmp_path / "b"), quiet=True)
    assert_identical(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    strip = lambda out: [{k: v for k, v in r.items() if k != "images_per_s"}
                         for r in step_records(out)]
    assert strip(tmp_path / "a") == strip(tmp_path / "b")


def test_fused_steps_give_the_same_run(tmp_path):
    """K steps per dispatch (lax.scan) vs one, in float64, where the two programs' different
    fusion rounds at ~1e-16: every parameter to 1e-12 and every logged loss to 1e-12 after
    16 steps (a dropped or repeated step moves parameters by ~lr = 2e-4)."""
    base = TINY.replace(cache_dir=str(tmp_path / "c"), epochs=2, dtype="float64")
    a = train(base.replace(steps_per_dispatch=1), str(tmp_path / "a"), quiet=True)
    b = train(base.replace(steps_per_dispatch=3), str(tmp_path / "b"), quiet=True)
    for x, y in zip(jax.tree.leaves((a.generator, a.discriminator, a.g_opt, a.d_opt)),
                    jax.tree.leaves((b.generator, b.discriminator, b.g_opt, b.d_opt)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-12)
    for ra, rb in zip(step_records(tmp_path / "a"), step_records(tmp_path / "b"), strict=True):
        assert ra["step"] == rb["step"]
        for name in ("g_loss", "d_loss", "acc_real", "acc_fake"):
            assert ra[name] == pytest.approx(rb[name], rel=0, abs=1e-12)
    assert len(step_records(tmp_path / "a")) == 16


def test_resume_continues_exactly(tmp_path):
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"))
    train(cfg, str(tmp_path / "whole"), quiet=True)
    train(cfg.replace(steps=7), str(tmp_path / "parts"), quiet=True)  # one call of 3 after 4
    train(cfg, str(tmp_path / "parts"), resume=True, quiet=True)
    assert_identical(final_state(tmp_path / "whole"), final_state(tmp_path / "parts"))
    assert step_records(tmp_path / "whole") == [
        {**r, "images_per_s": w["images_per_s"]}
        for r, w in zip(step_records(tmp_path / "parts"), step_records(tmp_path / "whole"))]


def test_checkpoint_with_a_raw_key_as_0_2_wrote_resumes_exactly(tmp_path):
    """0.2 kept the state's key as raw uint32[2] data and wrote it straight through orbax;
    such a checkpoint restores into a typed key over the same data and continues the run
    as if it had never stopped."""
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"))
    train(cfg, str(tmp_path / "whole"), quiet=True)
    train(cfg.replace(steps=7), str(tmp_path / "parts"), quiet=True)
    state, saved, progress = checkpoint.Checkpoints(str(tmp_path / "parts" / "checkpoints")
                                                    ).restore()
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tmp_path / "parts" / "config.json", old / "config.json")
    raw = jax.random.key_data(state.rng)
    with checkpoint.ocp.CheckpointManager(str(old / "checkpoints")) as manager:
        manager.save(7, args=checkpoint.ocp.args.Composite(
            state=checkpoint.ocp.args.StandardSave(state.replace(rng=raw)),
            config=checkpoint.ocp.args.JsonSave(saved.to_dict()),
            progress=checkpoint.ocp.args.JsonSave(dataclasses.asdict(progress))))
    restored, _, _ = checkpoint.Checkpoints(str(old / "checkpoints")).restore()
    assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    assert raw.dtype == np.uint32 and raw.shape == (2,)
    np.testing.assert_array_equal(jax.random.key_data(restored.rng), raw)
    train(cfg, str(old), resume=True, quiet=True)
    assert_identical(final_state(tmp_path / "whole"), final_state(old))


def test_measured_steps_per_dispatch_are_kept_for_the_resume(tmp_path):
    """The default chooses K from the measured step time once and keeps it in the checkpoint,
    so a resume dispatches (and rounds) as before even if the machine's speed changed."""
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"), steps_per_dispatch=0, epochs=3)
    train(cfg.replace(steps=12), str(tmp_path / "parts"), quiet=True)
    train(cfg, str(tmp_path / "parts"), resume=True, quiet=True)
    first, second = json.loads((tmp_path / "parts" / "run.json").read_text())["starts"]
    k = first["steps_per_dispatch"]
    assert first["step_ms"] > 0 and 1 <= k <= 4  # at most one segment (a checkpoint every 4)
    assert second["step"] == 12 and second["steps_per_dispatch"] == k
    assert second["step_ms"] is None  # kept, not measured again
    train(cfg.replace(steps_per_dispatch=k), str(tmp_path / "whole"), quiet=True)
    assert_identical(final_state(tmp_path / "whole"), final_state(tmp_path / "parts"))


def test_a_run_compiles_two_step_programs(tmp_path, monkeypatch):
    """K steps and one step, whatever the epoch and checkpoint lengths (here 5 and 3)."""
    functions = []
    original = parallel.Parallelism.step_function

    def recording(self, cfg):
        functions.append(original(self, cfg))
        return functions[-1]

    monkeypatch.setattr(parallel.Parallelism, "step_function", recording)
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"), num_synthetic=40, checkpoint_every=3,
                       steps_per_dispatch=2, epochs=3, devices=1)
    train(cfg, str(tmp_path / "run"), quiet=True)
    (step_fn,) = functions
    assert step_fn._cache_size() == 2


def test_checkpoints_by_the_clock_keep_the_resume_exact(tmp_path):
    """--checkpoint-minutes saves at the end of whichever call the clock is due at, in the
    middle of a segment too; the plan does not depend on it, so resuming from any of those
    checkpoints ends where the uninterrupted run ended."""
    cfg = TINY.replace(cache_dir=str(tmp_path / "c"), checkpoint_every=0, epochs=3,
                       checkpoint_minutes=1e-9, keep_checkpoints=100)
    train(cfg, str(tmp_path / "clock"), quiet=True)
    saved = checkpoint.Checkpoints(str(tmp_path / "clock" / "checkpoints")).all_steps()
    assert saved == [3, 6, 7, 8, 11, 14, 15, 16, 19, 22, 23, 24]  # calls of 3, 3, 1, 1 a epoch
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "clock" / "checkpoints" / "11", resumed / "checkpoints" / "11")
    shutil.copy(tmp_path / "clock" / "config.json", resumed / "config.json")
    train(cfg, str(resumed), resume=True, quiet=True)
    assert_identical(final_state(tmp_path / "clock"), final_state(resumed))


def test_epoch_end_work_runs_while_the_device_trains(tmp_path, monkeypatch):
    """Steps are dispatched while an epoch's files and plots are being written: epoch 1's
    outputs wait until the loop dispatches a step, which it can only do if it does not wait
    for them (no clock involved; a loop that waited would hold the outputs to the timeout)."""
    writing, stepped, waits = threading.Event(), threading.Event(), []
    outputs = epoch_end.EpochEnd._outputs

    def waiting_outputs(self, *args):
        if not writing.is_set():  # epoch 1
            writing.set()
            waits.append(stepped.wait(timeout=60))  # False: no step came while it waited
        outputs(self, *args)

    original = parallel.Parallelism.step_function

    def noting_step(self, cfg):
        step_fn = original(self, cfg)
        return lambda state, batch: (writing.is_set() and stepped.set(), step_fn(state, batch))[1]

    monkeypatch.setattr(epoch_end.EpochEnd, "_outputs", waiting_outputs)
    monkeypatch.setattr(parallel.Parallelism, "step_function", noting_step)
    train(TINY.replace(cache_dir=str(tmp_path / "c"), epochs=3, checkpoint_every=0),
          str(tmp_path / "run"), quiet=True)
    assert waits == [True], "training waited for epoch 1's files"
    assert len(os.listdir(tmp_path / "run" / "samples")) == 3


def test_killed_run_resumes_bit_identical(tmp_path):
    """SIGKILL right after the first checkpoint (step 8 of 96), then --resume: the same
    parameters and records as an uninterrupted run. The kill lands with 88 tiny steps still
    to run, about 0.5 s here, against the ~0.05 s it takes to see the checkpoint and kill."""
    flags = tiny_flags(tmp_path / "c", epochs=12, checkpoint_every=8)
    cli_here("train", "--out", tmp_path / "whole", "--quiet", *flags)
    process = subprocess.Popen([sys.executable, "-m", "jax_dcgan.cli", "train", "--out",
                                str(tmp_path / "killed"), "--quiet", *flags], cwd=ROOT)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while not (checkpoints.exists() and any(d.isdigit() for d in os.listdir(checkpoints))):
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # killed, not finished
    killed_at = checkpoint.Checkpoints(str(checkpoints)).latest_step()
    assert killed_at is not None and killed_at < 96
    cli_here("train", "--out", tmp_path / "killed", "--quiet", "--resume", *flags)
    assert_identical(final_state(tmp_path / "whole"), final_state(tmp_path / "killed"))
    steps = [r["step"] for r in step_records(tmp_path / "killed")]
    assert steps == list(range(1, 97)) == [r["step"] for r in step_records(tmp_path / "whole")]


def test_cli_train_then_sample_then_convert(tmp_path):
    cli_here("train", "--out", tmp_path / "run", "--quiet", *tiny_flags(tmp_path / "c", epochs=1))
    result = cli_here("sample", "--checkpoint", tmp_path / "run", "--num", 16, "--out",
                      tmp_path / "grid.png", "--save-array", tmp_path / "x.npy")
    assert "16 samples" in result.stdout
    images = np.load(tmp_path / "x.npy")
    assert images.shape == (16, 16, 16, 3) and np.all(np.abs(images) <= 1)
    cli_here("convert", "--to-torch", tmp_path / "run", "--out", tmp_path / "m.pt")
    model = DCGAN(TINY.latent_dim, TINY.gen_features, TINY.dis_features, image_size=16)
    model.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)


CACHE_HITS = r"""
import sys, jax
from tests.helpers import TINY
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # tiny programs too
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else 0)
cfg = TINY.replace(cache_dir=sys.argv[1], devices=1, compilation_cache=sys.argv[2] == "on")
from jax_dcgan.training.loop import train
for run in range(int(sys.argv[3])):
    train(cfg, f"{sys.argv[1]}/run{run}", quiet=True)
    print(len(hits))
"""


@pytest.mark.parametrize("cache", ["on", "off"])
def test_a_second_run_loads_its_step_programs_from_the_compilation_cache(tmp_path, cache):
    """With the cache off, one run suffices: it loads nothing and writes nothing that a later
    run could load."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    runs = 2 if cache == "on" else 1
    done = subprocess.run([sys.executable, "-c", CACHE_HITS, str(tmp_path), cache, str(runs)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    hits = list(map(int, done.stdout.split()))
    if cache == "on":  # the K-step and the one-step program (and more), compiled, then loaded
        first, both = hits
        assert both - first >= 2 and both - first > first
        assert len(os.listdir(tmp_path / "xla")) >= 2
    else:
        assert hits == [0] and not (tmp_path / "xla").exists()


def test_no_persistent_cache_stores_nothing_then_restores_the_cache():
    """The suite's cache is on in this process (conftest.py): off inside the block, nested
    or not, and in use again after it. Told by JAX's own events, which record each decision
    to use the cache, rather than by the cache's files, which other tests' processes write."""
    cache = "/jax/compilation_cache/compile_requests_use_cache"
    requests = []

    def listen(event, **kw):
        if event == cache:
            requests.append(event)

    scale = float(np.random.default_rng().random())  # programs no earlier run has compiled
    jax.monitoring.register_event_listener(listen)
    try:
        with runtime.no_persistent_cache():
            with runtime.no_persistent_cache():
                jax.jit(lambda x: x * scale + 1)(np.float32(1)).block_until_ready()
            assert not jax.config.jax_enable_compilation_cache
        assert requests == [] and jax.config.jax_enable_compilation_cache
        jax.jit(lambda x: x * scale + 2)(np.float32(1)).block_until_ready()
        assert cache in requests
    finally:
        jax.monitoring.unregister_event_listener(listen)


COLLECTIVE_BESIDE_A_COPY = """
import os
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])  # 2 cores, before XLA counts them
import jax, jax.numpy as jnp
from jax_dcgan.common import runtime
from jax_dcgan.training import parallel
runtime.threads_for_host_collectives()
step = jax.pmap(lambda s, b: s + jax.lax.psum(jnp.tanh(b @ b.T).sum(), "d"), "d")
batch, state = parallel.replicate((jnp.ones((256, 256)), jnp.zeros((100, 8))), jax.devices())
for _ in range(400):  # a training step's collective, then a copy of 100 arrays out of it
    state = step(state, batch)
    copy = parallel.unreplicate([state] * 100)
jax.block_until_ready(copy)
"""


def test_a_collective_over_four_cpu_devices_beside_another_computation_completes():
    """A collective over 4 CPU devices needs 4 of XLA's client threads at once, and on 2 cores
    the client had exactly 4: a copy running beside it took one, and the training loop froze
    (a soak run, at an epoch end). The program pins itself to 2 cores, so that the client
    would get 4 threads on any machine. Without `threads_for_host_collectives` it hung in 3
    of 3 tries, until XLA aborted it after 40 s (SIGABRT; 100 steps instead of 400 hung in 2
    of 5); with it, it ends in ~3 s."""
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC", "PJRT_NPROC")}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    done = subprocess.run([sys.executable, "-c", COLLECTIVE_BESIDE_A_COPY], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
