"""The pictures of a run besides its grids: progress.webp, the latent walk, real beside fake."""

import numpy as np
import pytest
from PIL import Image

from jax_dcgan.common.errors import UserError
from jax_dcgan.outputs import pictures

from .helpers import cli_here, tiny_run

# TINY's 16x16 images in the 8x8 grid of 64, 2 pixels apart: 8 x 18 + 2 = 146 pixels a side.


def png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("pictures"), epochs=3)


def test_a_run_ends_with_its_animation_and_real_beside_fake(run):
    grids = [png(run / "samples" / f"epoch_{e:03d}.png") for e in (1, 2, 3)]
    assert grids[0].shape == (146, 146, 3)
    frames = pictures.read_animation(run / pictures.ANIMATION)
    assert len(frames) == 3
    for frame, grid in zip(frames, grids):
        np.testing.assert_array_equal(frame, grid)  # lossless: the grids themselves
    figure = png(run / "real_vs_fake.png")
    assert figure.shape == (146, 2 * 146 + pictures.GAP, 3)
    np.testing.assert_array_equal(figure[:, -146:], grids[-1])  # the model's: the last grid
    np.testing.assert_array_equal(figure[:, 146:146 + pictures.GAP], 0)
    real = figure[:, :146]
    assert real.std() > 10 and not np.array_equal(real, grids[-1])  # the data's faces


def test_animate_command_remakes_the_animation(run, tmp_path):
    out = tmp_path / "again.webp"
    done = cli_here("animate", run, "--out", out, "--frame-ms", 100)
    assert "wrote 3 epoch grids" in done.stdout
    for frame, expected in zip(pictures.read_animation(out),
                               pictures.read_animation(run / pictures.ANIMATION), strict=True):
        np.testing.assert_array_equal(frame, expected)
    with Image.open(out) as animation:
        animation.load()  # the frame's duration is read with the frame
        assert animation.info["duration"] == 100
    for every in (2, 5):  # epochs 1 and 3: every other one, or the first and the last
        cli_here("animate", run, "--out", tmp_path / f"every{every}.webp", "--every", every)
        frames = pictures.read_animation(tmp_path / f"every{every}.webp")
        assert len(frames) == 2
        for frame, epoch in zip(frames, (1, 3)):
            np.testing.assert_array_equal(frame, png(run / "samples" / f"epoch_{epoch:03d}.png"))
    # A writer's temporary file beside the grids (left by a killed run) is not a grid.
    (run / "samples" / "epoch_002.png.tmp-1-2.png").write_bytes(b"\x89PNG cut")
    try:
        assert pictures.animate_grids(run / "samples", tmp_path / "all.webp") == 3
    finally:
        (run / "samples" / "epoch_002.png.tmp-1-2.png").unlink()
    refused = cli_here("animate", tmp_path, check=False)
    assert refused.returncode == 2 and "has no epoch grids" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not (tmp_path / pictures.ANIMATION).exists()


def test_slerp_passes_through_its_ends_on_the_sphere():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 100)).astype(np.float32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    np.testing.assert_allclose(pictures.slerp(a, b, 0.0), a, atol=1e-6)
    np.testing.assert_allclose(pictures.slerp(a, b, 1.0), b, atol=1e-6)
    for t in (0.25, 0.5, 0.75):  # between two points of one norm: that norm, not less
        assert np.linalg.norm(pictures.slerp(a, b, t)) == pytest.approx(np.linalg.norm(a))
    path = pictures.interpolation_noise(np.stack([a, b, -a]), steps=4)
    assert path.shape == (9, 100)
    np.testing.assert_array_equal(path[[0, 4, 8]], np.stack([a, b, -a]))
    for opposite in (-a, np.zeros_like(a)):  # no arc joins them: refused, not NaN or zero
        with pytest.raises(UserError, match="opposite directions"):
            pictures.slerp(a, opposite, 0.5)


def test_sample_interpolate_writes_a_strip_and_its_animation(run, tmp_path):
    done = cli_here("sample", "--checkpoint", run, "--interpolate", 3, "--between", 2,
                    "--seed", 5, "--out", tmp_path / "walk.png")
    assert "7 images" in done.stdout
    strip = png(tmp_path / "walk.png")
    assert strip.shape == (16 + 4, 7 * 18 + 2, 3)
    frames = pictures.read_animation(tmp_path / "walk.webp")
    assert len(frames) == 7
    for i, frame in enumerate(frames):  # scaled together: each frame is its tile of the strip
        np.testing.assert_array_equal(frame, strip[2:18, 2 + 18 * i:18 + 18 * i])
    assert not np.array_equal(frames[0], frames[-1])
    # Each image is its own vector's: the walk's ends are what `sample --noise` gives them
    # with running statistics, however many images lie between (to float32 rounding of
    # other batch sizes, ~1e-7 in images within [-1, 1]).
    ends = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    np.save(tmp_path / "ends.npy", ends)
    walks = []
    for between in (1, 3):
        cli_here("sample", "--checkpoint", run, "--interpolate", 2, "--noise",
                 tmp_path / "ends.npy", "--between", between, "--out",
                 tmp_path / f"w{between}.png", "--save-array", tmp_path / f"w{between}.npy")
        walks.append(np.load(tmp_path / f"w{between}.npy"))
    cli_here("sample", "--checkpoint", run, "--noise", tmp_path / "ends.npy", "--bn",
             "running", "--out", tmp_path / "ends.png", "--save-array", tmp_path / "ends_.npy")
    np.testing.assert_allclose(walks[0][[0, -1]], np.load(tmp_path / "ends_.npy"), atol=1e-6)
    np.testing.assert_allclose(walks[1][[0, -1]], walks[0][[0, -1]], atol=1e-6)
    (tmp_path / "taken.webp").mkdir()
    for argv, message in ((["--num", 4], "leave out --num"),
                          (["--between", 0], "--between must be at least 1"),
                          (["--out", tmp_path / "x.webp"], "give the strip a .png name"),
                          (["--out", tmp_path / "taken.png"], "which is a directory")):
        refused = cli_here("sample", "--checkpoint", run, "--interpolate", 3, "--out",
                           tmp_path / "x.png", *argv, check=False)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    refused = cli_here("sample", "--checkpoint", run, "--between", 2, "--out",
                       tmp_path / "x.png", check=False)
    assert refused.returncode == 2 and "give --interpolate N too" in refused.stderr
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.webp").exists()
    # A folder where nothing can be written (even by root): one paragraph, exit 1.
    for argv in (["sample", "--checkpoint", run, "--interpolate", 2, "--out", "/proc/w.png"],
                 ["animate", run, "--out", "/proc/p.webp"]):
        failed = cli_here(*argv, check=False)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
        assert "a file could not be read or written" in failed.stderr
    refused = cli_here("sample", "--checkpoint", run, "--interpolate", 1,
                       "--out", tmp_path / "x.png", check=False)
    assert refused.returncode == 2 and "at least 2" in refused.stderr


def test_eval_figure_puts_real_images_beside_the_scored_ones(tmp_path):
    faces = {"real": np.full((8, 16, 16, 3), 200, np.uint8), "fake": np.zeros((8, 16, 16, 3),
                                                                            np.uint8)}
    faces["fake"][:, 4:12, 4:12] = 90  # a square on each: something for the grid to scale
    faces["real"][:, :8] = 30
    for name, images in faces.items():
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / name / f"{i}.png")
    cli_here("eval", "--fake", tmp_path / "fake", "--real", tmp_path / "real", "--no-fid",
             "--image-size", 16, "--cache-dir", tmp_path / "cache", "--figure",
             tmp_path / "figure.png")
    figure = png(tmp_path / "figure.png")
    width = 8 * 18 + 2
    assert figure.shape == (20, 2 * width + pictures.GAP, 3)
    np.testing.assert_array_equal(figure[2:18, 2:18], np.where(np.arange(16)[:, None, None] < 8,
                                                                0, 255).repeat(16, 1).repeat(3, 2))
    assert figure[10, width + pictures.GAP + 10].tolist() == [255, 255, 255]  # the square
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    refused = cli_here("eval", "--fake", tmp_path / "fake", "--real", tmp_path / "stats.npz",
                       "--figure", tmp_path / "no.png", check=False)
    assert refused.returncode == 2 and "--figure shows real images" in refused.stderr


def test_progress_is_rewritten_during_the_run_and_capped_in_frames(tmp_path, monkeypatch):
    """With the rewrite interval at 0, every epoch end rewrites progress.webp; with at most 2
    frames, a run of 3 epochs shows the first and the last."""
    from jax_dcgan.training import epoch_end
    monkeypatch.setattr(epoch_end, "ANIMATION_SECONDS", 0.0)
    monkeypatch.setattr(epoch_end, "ANIMATION_FRAMES", 2)
    written = []
    real_animate = pictures.animate_grids
    monkeypatch.setattr(pictures, "animate_grids", lambda *a, **kw: written.append(
        len(pictures.epoch_grids(a[0]))) or real_animate(*a, **kw))
    run = tiny_run(tmp_path, epochs=3)
    assert written[:3] == [1, 2, 3]  # at each epoch end, as the grids come
    frames = pictures.read_animation(run / pictures.ANIMATION)
    assert len(frames) == 2
    for frame, epoch in zip(frames, (1, 3)):
        np.testing.assert_array_equal(frame, png(run / "samples" / f"epoch_{epoch:03d}.png"))
