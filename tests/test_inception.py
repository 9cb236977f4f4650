"""FID's Inception network in JAX against the TorchScript file, its two input pipelines
against PIL and NVIDIA's code, and `eval` against clean-fid's own FID."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from jax_dcgan.config import Config
from jax_dcgan.data import dataset
from jax_dcgan.quality import inception, metrics

from .helpers import ROOT, cli_here

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    cfg = Config(num_synthetic=96, image_size=64, cache_dir=str(tmp_path_factory.mktemp("c")))
    return np.asarray(dataset.load_dataset(cfg, quiet=True))


def test_jax_network_equals_the_torchscript_file(faces):
    """The same 299x299 inputs through both: features (of magnitude ~0.1-4) agree to 2e-4.
    Measured 1.3e-5: float32 rounding through 94 convolutions, summed in other orders."""
    params = inception.load_params()
    scripted = inception.load_torchscript()
    noise = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), np.uint8)
    for mode in inception.FID_MODES:
        x = np.asarray(inception.to_network_input(np.concatenate([faces[:2], noise]), mode))
        ours = np.asarray(inception.network(params, x))
        with torch.no_grad():
            theirs = scripted(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        assert ours.shape == theirs.shape == (4, inception.FEATURES)
        assert np.abs(ours - theirs).max() < 2e-4, mode


@pytest.mark.parametrize("size", [32, 64, 300, 512])
def test_clean_resize_equals_pil(size):
    """clean-fid's own resizer (PIL bicubic on float32, per channel, clipped), upsampling
    and downsampling: equal to 1e-3 of a 0..255 level. Measured 6e-5, i.e. 4 float32 ulps
    at 255: PIL sums in float64, the matrices here in float32."""
    from cleanfid.resize import build_resizer

    images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), np.uint8)
    theirs = np.stack([build_resizer("clean")(image) for image in images])
    ours = np.asarray(inception.to_network_input(images, "clean")) * 128 + 128
    assert np.abs(ours - theirs).max() < 1e-3


@pytest.mark.parametrize("size", [32, 64, 128])
def test_legacy_tensorflow_resize_equals_nvidias_code(size):
    """NVIDIA's affine_grid + grid_sample against TF1's formula (source j * in / 299):
    within 0.03 of a level. Measured 7e-4 to 2.8e-3, growing with the size: grid_sample's
    float32 coordinates are off by ~1e-5 of a pixel."""
    images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), np.uint8)
    theirs = metrics.nvidia_resize(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    ours = np.asarray(inception.to_network_input(images, "legacy_tensorflow")) * 128 + 128
    assert np.abs(ours - theirs.permute(0, 2, 3, 1).numpy()).max() < 0.03


@pytest.fixture(scope="module")
def clean_fid():
    """clean-fid's fid module. It imports torchvision for ToTensor alone (in the code used
    here) and pytorch-fid's network, which clean-fid's clean and legacy_tensorflow modes
    do not use; PyPI's torchvision does not import beside this CPU torch, so both get
    stand-ins (ToTensor as torchvision defines it: HWC -> CHW, uint8 scaled to [0, 1])."""
    def to_tensor(picture):
        t = torch.from_numpy(np.ascontiguousarray(picture.transpose(2, 0, 1)))
        return t.float().div(255) if t.dtype == torch.uint8 else t

    transforms = types.SimpleNamespace(ToTensor=lambda: to_tensor)
    stand_ins = {"torchvision": types.SimpleNamespace(transforms=transforms),
                 "torchvision.transforms": transforms,
                 "cleanfid.inception_pytorch": types.SimpleNamespace(InceptionV3=None)}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        import cleanfid.fid
        from cleanfid.inception_torchscript import InceptionV3W
        yield cleanfid.fid, InceptionV3W
    finally:  # clean-fid, bound to the stand-ins, goes with them
        for name in [n for n in sys.modules if n.split(".")[0] == "cleanfid"]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


FOLDER = 24  # images a side: one batch of FID's network on a CPU (16) and a padded one


@pytest.fixture(scope="module")
def folders(faces, tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("folders")
    for name, images in (("real", faces[:FOLDER]), ("fake", faces[48:48 + FOLDER] // 2 + 40)):
        (root / name).mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image).save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.parametrize("mode", inception.FID_MODES)
def test_eval_equals_clean_fids_compute_fid(clean_fid, folders, mode):
    """clean-fid's compute_fid(dir1, dir2) (its file reading, resizing, batching and
    Frechet distance), given the bundled network as its feature extractor, and
    `jax-dcgan eval --fake --real` with the JAX network: the same FID to 1e-4 relative
    (measured 1.8e-7 in clean mode, 9.4e-8 in legacy_tensorflow, at 24 images a side;
    the FIDs, 109 and 114, show what the mode alone does). clean-fid's legacy_tensorflow mode
    runs NVIDIA's file, which cannot be downloaded here: its forward is
    `metrics.nvidia_resize` and the file's layers."""
    fid, InceptionV3W = clean_fid
    extractor = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(extractor)
    extractor.layers = inception.load_torchscript().net.layers
    extractor.base = lambda x, return_features: extractor.layers(
        (metrics.nvidia_resize(x) - 128) / 128)
    extractor.resize_inside = mode == "legacy_tensorflow"
    theirs = fid.compute_fid(str(folders / "fake"), str(folders / "real"), mode=mode,
                             custom_feat_extractor=extractor, num_workers=0, batch_size=16,
                             device=torch.device("cpu"), verbose=False)
    ours = json.loads(cli_here("eval", "--fake", folders / "fake", "--real", folders / "real",
                               "--image-size", 64, "--fid-mode", mode, "--json",
                               "--cache-dir", folders / f"cache-{mode}").stdout)
    assert ours["fid_mode"] == mode and ours["inception"] == "jax" and ours["num"] == FOLDER
    assert ours["fid"] == pytest.approx(theirs, rel=1e-4)
    assert theirs > 10  # darkened faces: a distance, not rounding


def test_torch_and_jax_networks_give_the_same_features(faces):
    """`eval --inception torch` (PIL or NVIDIA's code, then the TorchScript file) and the
    JAX path, end to end: 2e-4, as the network alone."""
    for mode in inception.FID_MODES:
        ours = metrics.JaxInception(mode)(faces[:4])
        theirs = metrics.TorchInception(mode)(faces[:4])
        assert np.abs(ours - theirs).max() < 2e-4, mode


def test_reference_statistics_serve_as_real(folders, tmp_path):
    """The statistics eval cached beside the real folder give the folder's FID and KID
    exactly; clean-fid's format (mu and sigma alone) gives FID without KID; statistics of
    the other mode, of other features, and files that hold none are refused."""
    flags = ["--fake", folders / "fake", "--json", "--num", FOLDER]
    by_folder = json.loads(cli_here(*(["eval"] + flags), "--real", folders / "real",
                                    "--image-size", 64,
                                    "--cache-dir", folders / "cache-stats").stdout)
    [stats] = [p for p in (folders / "cache-stats").rglob(f"fid-stats-clean-jax-{FOLDER}-*.npz")]
    by_stats = json.loads(cli_here(*(["eval"] + flags), "--real", stats, "--image-size", 64,
                                   "--cache-dir", folders / "cache-stats").stdout)
    assert "swd" not in by_stats
    assert {k: by_stats[k] for k in ("fid", "kid", "fid_mode", "num")} == {
        k: by_folder[k] for k in ("fid", "kid", "fid_mode", "num")}
    with np.load(stats) as npz:
        np.savez(tmp_path / "clean-fid.npz", mu=npz["mu"], sigma=npz["sigma"])
    mu_sigma = json.loads(cli_here(*(["eval"] + flags), "--real", tmp_path / "clean-fid.npz",
                                   "--image-size", 64,
                                   "--cache-dir", folders / "cache-stats").stdout)
    assert mu_sigma["fid"] == by_folder["fid"] and "kid" not in mu_sigma
    assert mu_sigma["fid_mode"] == "clean"  # the mode it was scored in
    # Refusals come before any image is read.
    np.savez(tmp_path / "empty.npz", x=np.zeros(2))
    (tmp_path / "cut.npz").write_bytes(stats.read_bytes()[:1000])
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    for real, extra, message in (
            (stats, ["--fid-mode", "legacy_tensorflow"], "--fid-mode clean"),
            (tmp_path / "empty.npz", [], "has no reference statistics"),
            (tmp_path / "cut.npz", [], "is not a readable .npz"),
            (tmp_path / "small.npz", [], "not statistics of the FID network's 2048 features")):
        refused = cli_here(*(["eval"] + flags), "--real", real, *extra, check=False)
        assert refused.returncode == 2 and message in refused.stderr
        assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1


def _eval_without_torch(args: list, cache: str) -> subprocess.CompletedProcess:
    """`jax-dcgan eval` in a Python where `import torch` fails."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from jax_dcgan.cli import main\n"
            f"sys.exit(main({[str(a) for a in args]!r}))")
    env = {**os.environ, "JAX_DCGAN_CACHE": cache}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_eval_needs_no_torch_once_the_weights_are_converted(folders, tmp_path):
    inception.load_params()  # converted into the test session's cache
    args = ["eval", "--fake", folders / "fake", "--real", folders / "real", "--image-size",
            64, "--json", "--cache-dir", folders / "cache-notorch"]
    done = _eval_without_torch(args, inception.cache_dir())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fid"] > 10
    missing = _eval_without_torch(args, str(tmp_path / "empty-cache"))
    assert missing.returncode == 2 and "needs PyTorch" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_damaged_weights_cache_is_converted_again(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_DCGAN_CACHE", str(tmp_path))
    with open(inception.weights_path(), "wb") as f:
        f.write(b"PK\x03\x04 cut short")
    params = inception.load_params()
    assert len(params) == inception.LAYERS and params["conv"]["weight"].shape == (3, 3, 3, 32)
    with np.load(inception.weights_path()) as npz:
        assert len(npz.files) == 4 * inception.LAYERS
