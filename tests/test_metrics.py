"""FID, KID, SWD, the diversity monitor, `jax-dcgan eval` and `train --eval-every`."""

import json
import os
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from jax_dcgan.config import Config
from jax_dcgan.data import dataset
from jax_dcgan.model.step import create_train_state
from jax_dcgan.outputs.sample import GRID_IMAGES, draw_noise, grid_pass, sampling_generator
from jax_dcgan.quality import metrics
from jax_dcgan.training.checkpoint import Progress
from jax_dcgan.training.dispatch import Plan
from jax_dcgan.training.epoch_end import EpochEnd
from jax_dcgan.training.rundir import RunDir
from jax_dcgan.training.writers import ConsoleWriter, History, JsonlWriter, Writers

from .helpers import TINY, cli_here, records, tiny_flags


def test_frechet_distance_against_the_direct_float64_formula():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((40, 6)), rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    m1, m2 = a.mean(0), b.mean(0)
    # The definition, with scipy's matrix square root of the product (full rank here).
    import scipy.linalg

    direct = (np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(np.real(scipy.linalg.sqrtm(s1 @ s2))))
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(direct, rel=1e-9)
    assert metrics.frechet_distance(m1, s1, m1, s1) == pytest.approx(0, abs=1e-6)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    cfg = Config(num_synthetic=400, image_size=32, cache_dir=str(tmp_path_factory.mktemp("c")))
    return np.asarray(dataset.load_dataset(cfg, quiet=True))


@pytest.fixture(scope="module")
def features(faces):
    """Inception features of two halves of the faces and of noise (100 images each)."""
    inception = metrics.TorchInception()  # on a CPU the faster of the two
    noise = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), np.uint8)
    return {"half": inception(faces[:100]), "other_half": inception(faces[100:200]),
            "noise": inception(noise)}


def test_fid_small_for_real_halves_and_large_for_noise(features):
    half = metrics.feature_statistics(features["half"])
    same = metrics.frechet_distance(*half, *metrics.feature_statistics(features["other_half"]))
    far = metrics.frechet_distance(*half, *metrics.feature_statistics(features["noise"]))
    assert same < 0.2 * far and far > 100


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased squared MMD with KID's kernel, pair by pair, in float64."""
    d, m = x.shape[1], len(x)
    k = lambda a, b: (float(np.dot(a, b)) / d + 1) ** 3  # noqa: E731
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return within / (m * (m - 1)) - 2 * across / m ** 2


def test_kid_equals_the_direct_unbiased_mmd():
    """With one subset of every feature, KID is the MMD estimate itself (any order of the
    features gives the same sum)."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((12, 6)), rng.standard_normal((12, 6)) + 0.3
    kid, std = metrics.kernel_inception_distance(y, x, subsets=1, subset_size=12)
    # Kernel values of at most ~10 summed over 132 pairs: float64 rounding stays near
    # 1e-13, so 1e-10 leaves a wide margin and still catches any wrong term (~1e-3).
    assert kid == pytest.approx(direct_mmd2(x, y), rel=0, abs=1e-10)
    assert std is None  # every subset is the whole set: no spread to show
    assert metrics.kernel_inception_distance(y, x, subsets=50, subset_size=6)[1] > 0


def clean_fid_kernel_distance():
    """clean-fid's own `kernel_distance`, read from its installed fid.py (importing that
    module would need torchvision, which only its image loading uses)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("cleanfid")
    with open(os.path.join(spec.submodule_search_locations[0], "fid.py")) as f:
        source = f.read()
    (node,) = [n for n in ast.parse(source).body
               if isinstance(n, ast.FunctionDef) and n.name == "kernel_distance"]
    namespace = {"np": np}
    exec(compile(ast.Module([node], []), "cleanfid/fid.py", "exec"), namespace)
    return namespace["kernel_distance"]


def test_kid_matches_clean_fids_code(features):
    """Same features (real faces against noise), one subset of all of them: equal
    to float64 rounding. With 100 subsets of 50 of the 100 (clean-fid draws them from
    numpy's global generator, we from our seed), both average 100 estimates of the same
    number: they agree within 4 standard errors of the difference of two such means."""
    real, fake = features["half"], features["noise"]
    kernel_distance = clean_fid_kernel_distance()
    ours, _ = metrics.kernel_inception_distance(real, fake, subsets=1, subset_size=100)
    assert ours == pytest.approx(kernel_distance(real, fake, num_subsets=1), rel=1e-9)
    ours, std = metrics.kernel_inception_distance(real, fake, subsets=100, subset_size=50)
    state = np.random.get_state()
    np.random.seed(0)
    theirs = kernel_distance(real, fake, num_subsets=100, max_subset_size=50)
    np.random.set_state(state)
    assert ours > 0 and abs(ours - theirs) < 4 * np.sqrt(2) * std / np.sqrt(100)


def test_kid_near_zero_for_real_halves_and_large_for_noise(features):
    half = features["half"]
    # Subsets of 50 of the 100, so that the spread of one subset's estimate shows; the
    # mean of 100 of them is far closer to the true value (0 for two halves).
    same, same_std = metrics.kernel_inception_distance(half, features["other_half"],
                                                       subset_size=50)
    far, _ = metrics.kernel_inception_distance(half, features["noise"], subset_size=50)
    assert abs(same) < same_std and far > 20 * same_std


def test_swd_small_for_real_halves_and_large_for_noise(faces):
    noise = np.random.default_rng(0).integers(0, 256, (200, 32, 32, 3), np.uint8)
    same = metrics.sliced_wasserstein(faces[:200], faces[200:])
    far = metrics.sliced_wasserstein(faces[:200], noise)
    assert set(same) == {"32", "16", "mean"} and same["mean"] < 0.2 * far["mean"]


def test_diversity_monitor_fires_on_a_collapsed_generator(tmp_path, faces):
    """Diverse samples, then all alike: the third epoch is flagged, in the log and as a warning;
    the best diversity so far is what the checkpoints keep."""
    cfg = TINY.replace(image_size=32)
    state = create_train_state(cfg.step_config(), cfg.seed)
    params = state.generator["params"]
    diverse = jax.tree.map(lambda x: 10 * x, params)  # saturated, varied patterns
    alike = {**params, "to_rgb": {"kernel": params["to_rgb"]["kernel"] * 0}}  # every sample is 0
    plan = Plan(steps_per_epoch=10, total_steps=30, checkpoint_every=0, steps_per_dispatch=1)
    writers = Writers(ConsoleWriter(plan, 1, 0, disable=True), History(),
                      JsonlWriter(str(tmp_path / "metrics.jsonl")))
    run = SimpleNamespace(directory=RunDir(str(tmp_path)), cfg=cfg, step_cfg=cfg.step_config(),
                          plan=plan, writers=writers, progress=Progress())  # what EpochEnd uses
    monitor = EpochEnd(run, faces)
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
    cli_here("train", "--out", tmp_path / "run", "--quiet",
             *tiny_flags(tmp_path / "c", epochs=1))
    out = cli_here("eval", "--checkpoint", tmp_path / "run", "--num", 16, "--json",
              "--cache-dir", tmp_path / "c").stdout
    result = json.loads(out)
    assert result["num"] == 16 and result["fid"] > 0 and result["swd"] > 0
    assert result["kid"] > 0 and result["kid_std"] is None  # 16 images: subsets are all
    assert set(result["swd_levels"]) == {"16"}
    text = cli_here("eval", "--checkpoint", tmp_path / "run", "--num", 16, "--no-fid",
               "--cache-dir", tmp_path / "c").stdout
    assert "SWD" in text and "FID" not in text and "KID" not in text


def test_train_eval_every_records_quality(tmp_path):
    cli_here("train", "--out", tmp_path / "run", "--quiet",
        *tiny_flags(tmp_path / "c", epochs=2), "--eval-every", "1", "--eval-samples", "16")
    found = records(tmp_path / "run")
    evals = [r for r in found if "swd" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert all("fid" in r and "kid" in r for r in evals)
    assert [r["step"] for r in evals] == [8, 16] and all(r["eval_samples"] == 16 for r in evals)
    assert [r["step"] for r in found if "diversity" in r] == [8, 16]
    assert (tmp_path / "run" / "quality.png").stat().st_size > 5000


def test_eval_scores_a_folder_against_a_folder(tmp_path, faces):
    """`eval --fake DIR --real DIR`, as clean-fid's compute_fid(dir1, dir2): the same images
    on both sides give FID 0 and KID below 0, darkened ones a clear distance (SWD normalises each
    set's colours, so it does not see darkening); both go through the lecture's crop and
    resize (a 32x32 image is its own largest square)."""
    from PIL import Image

    for name, images in (("real", faces[:60]), ("same", faces[:60]), ("dark", faces[:60] // 2)):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / name / f"{i:03d}.png")
    flags = ["--real", tmp_path / "real", "--image-size", 32, "--num", 60, "--json",
             "--cache-dir", tmp_path / "cache"]
    same = json.loads(cli_here("eval", "--fake", tmp_path / "same", *flags).stdout)
    dark = json.loads(cli_here("eval", "--fake", tmp_path / "dark", *flags).stdout)
    assert same["num"] == dark["num"] == 60 and "step" not in same
    # A set against itself: 0 but for the square roots of the ~1990 eigenvalues that are
    # zero up to rounding (60 images, 2048 features): measured -5.9e-5.
    assert abs(same["fid"]) < 1e-3 and dark["fid"] > 10
    # The unbiased estimate of a set against itself is below 0: an image's pair with
    # itself counts only across the sets.
    assert same["kid"] < 0 < dark["kid"]
    both = cli_here("eval", "--fake", tmp_path / "same", "--checkpoint", tmp_path, check=False)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    alone = cli_here("eval", "--fake", tmp_path / "same", check=False)
    assert alone.returncode == 2 and "needs real images" in alone.stderr
    (tmp_path / "one").mkdir()
    Image.fromarray(faces[0]).save(tmp_path / "one" / "0.png")
    one = cli_here("eval", "--fake", tmp_path / "one", *flags, check=False)
    assert one.returncode == 2 and "at least 2 images" in one.stderr
    assert "Traceback" not in both.stderr + alone.stderr + one.stderr
