"""FID, SWD, the diversity monitor, `jax-dcgan eval` and `train --eval-every`."""

import json

import jax
import numpy as np
import pytest

from jax_dcgan import data, metrics
from jax_dcgan.config import Config
from jax_dcgan.dispatch import Plan
from jax_dcgan.epoch_end import EpochEnd
from jax_dcgan.rundir import RunDir
from jax_dcgan.sample import GRID_IMAGES, draw_noise, grid_pass, sampling_generator
from jax_dcgan.step import create_train_state
from jax_dcgan.writers import ConsoleWriter, History, JsonlWriter, Writers

from .helpers import TINY, cli, records, tiny_flags


def test_frechet_distance_against_the_direct_float64_formula():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 6)), rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    m1, m2 = a.mean(0), b.mean(0)
    # tr sqrt(S1 S2) = sum of square roots of the eigenvalues of sqrt(S1) S2 sqrt(S1).
    w, v = np.linalg.eigh(s1)
    root = v @ np.diag(np.sqrt(w)) @ v.T
    direct = (np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.sum(np.sqrt(np.linalg.eigvalsh(root @ s2 @ root))))
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(direct, rel=1e-9)
    assert metrics.frechet_distance(m1, s1, m1, s1) == pytest.approx(0, abs=1e-6)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    cfg = Config(num_synthetic=400, image_size=32, cache_dir=str(tmp_path_factory.mktemp("c")))
    return np.asarray(data.load_dataset(cfg, quiet=True))


def test_fid_small_for_real_halves_and_large_for_noise(faces):
    inception = metrics.InceptionFeatures()
    noise = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), np.uint8)
    half = metrics.feature_statistics(inception(faces[:200]))
    same = metrics.frechet_distance(*half, *metrics.feature_statistics(inception(faces[200:])))
    far = metrics.frechet_distance(*half, *metrics.feature_statistics(inception(noise)))
    assert same < 0.2 * far and far > 100


def test_swd_small_for_real_halves_and_large_for_noise(faces):
    noise = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), np.uint8)
    same = metrics.sliced_wasserstein(faces[:200], faces[200:])
    far = metrics.sliced_wasserstein(faces[:200], noise)
    assert set(same) == {"32", "16", "mean"} and same["mean"] < 0.2 * far["mean"]


def test_diversity_monitor_fires_on_a_collapsed_generator(tmp_path, faces):
    """Diverse samples, then all alike: the third epoch is flagged, in the log and as a warning;
    the best diversity so far is what the checkpoints keep."""
    cfg = TINY.replace(image_size=32)
    state = create_train_state(cfg)
    params = state.generator["params"]
    diverse = jax.tree.map(lambda x: 10 * x, params)  # saturated, varied patterns
    alike = {**params, "to_rgb": {"kernel": params["to_rgb"]["kernel"] * 0}}  # every sample is 0
    plan = Plan(steps_per_epoch=10, total_steps=30, checkpoint_every=0, steps_per_dispatch=1)
    history = History()
    writers = Writers(JsonlWriter(str(tmp_path / "metrics.jsonl")), history)
    monitor = EpochEnd(RunDir(str(tmp_path)), cfg, cfg.model, plan, faces, writers,
                       ConsoleWriter(plan, 1, 0, disable=True), history, best_diversity=0.0)
    noise = draw_noise(cfg.latent_dim, GRID_IMAGES, cfg.seed)

    def start(params, step):
        with_params = state.replace(generator={**state.generator, "params": params})
        grid = grid_pass(cfg.model, sampling_generator(with_params), noise)[0]
        monitor.start(with_params, step, grid)

    with monitor:
        for step, generator in ((10, alike), (20, diverse)):  # not diverse yet: no alarm
            start(generator, step)
            monitor.collect(wait=True)
        best = monitor.best_diversity
        with pytest.warns(UserWarning, match="may have collapsed"):
            start(alike, 30)
            monitor.collect(wait=True)
    found = records(tmp_path)
    assert [r["collapsed"] for r in found] == [False, False, True]
    assert [r["epoch"] for r in found] == [1, 2, 3] and found[2]["diversity"] == 0
    assert best == found[1]["diversity"] > metrics.COLLAPSE_RATIO * found[1]["diversity_data"]
    assert monitor.best_diversity == best
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "epoch_001.png", "epoch_002.png", "epoch_003.png"]


def test_eval_command_prints_fid_and_swd(tmp_path):
    cli("train", "--out", tmp_path / "run", "--quiet", *tiny_flags(tmp_path / "c", epochs=1))
    out = cli("eval", "--checkpoint", tmp_path / "run", "--num", 48, "--json",
              "--cache-dir", tmp_path / "c").stdout
    result = json.loads(out)
    assert result["num"] == 48 and result["fid"] > 0 and result["swd"] > 0
    assert set(result["swd_levels"]) == {"16"}
    text = cli("eval", "--checkpoint", tmp_path / "run", "--num", 48, "--no-fid",
               "--cache-dir", tmp_path / "c").stdout
    assert "SWD" in text and "FID" not in text


def test_train_eval_every_records_quality(tmp_path):
    cli("train", "--out", tmp_path / "run", "--quiet",
        *tiny_flags(tmp_path / "c", epochs=2), "--eval-every", "1", "--eval-samples", "32")
    found = records(tmp_path / "run")
    evals = [r for r in found if "swd" in r]
    assert [r["epoch"] for r in evals] == [1, 2] and all("fid" in r for r in evals)
    assert [r["step"] for r in evals] == [8, 16] and all(r["eval_samples"] == 32 for r in evals)
    assert [r["step"] for r in found if "diversity" in r] == [8, 16]
    assert (tmp_path / "run" / "quality.png").stat().st_size > 5000
