"""FID, SWD, the diversity monitor, `jax-dcgan eval` and `train --eval-every`."""

import json
import os

import jax
import numpy as np
import pytest

from jax_dcgan import data, metrics
from jax_dcgan.config import Config
from jax_dcgan.train import EpochEnd, Recorder, Run
from jax_dcgan.step import create_train_state

from .helpers import TINY, cli, tiny_flags


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
    """Diverse samples, then all alike: the second epoch is flagged, in the log and as a warning."""
    from tqdm import tqdm

    cfg = TINY.replace(image_size=32)
    state = create_train_state(cfg)
    params = state.generator["params"]
    diverse = jax.tree.map(lambda x: 10 * x, params)  # saturated, varied patterns
    last = max((k for k in params if k.startswith("conv_")), key=lambda k: int(k.split("_")[1]))
    alike = {**params, last: {"kernel": params[last]["kernel"] * 0}}  # every sample is 0
    os.makedirs(tmp_path / "samples")
    run = Run(str(tmp_path), cfg, steps_per_epoch=10, total_steps=30)
    bar = tqdm(disable=True)
    monitor = EpochEnd(run, faces, Recorder(run, bar), bar)
    with_params = lambda p: state.replace(generator={**state.generator, "params": p})
    monitor(with_params(alike), 10)  # not diverse yet: no alarm
    monitor(with_params(diverse), 20)
    with pytest.warns(UserWarning, match="may have collapsed"):
        monitor(with_params(alike), 30)
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["collapsed"] for r in records] == [False, False, True]
    assert all(r["event"] == "diversity" for r in records) and records[2]["diversity"] == 0
    assert records[1]["diversity"] > metrics.COLLAPSE_RATIO * records[1]["reference"]


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
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2] and all("fid" in r and "swd" in r for r in evals)
    assert len([r for r in records if r.get("event") == "diversity"]) == 2
    assert (tmp_path / "run" / "quality.png").stat().st_size > 5000
