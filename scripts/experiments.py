"""The experiments of docs/EXPERIMENTS.md, one command each (CPU, built-in synthetic faces).

    python scripts/experiments.py jax-vs-torch   # the PyTorch reference vs JAX, 10 seeds each
    python scripts/experiments.py d-loss-replication  # its open question on 10 new seeds each
    python scripts/experiments.py noise          # shared vs fresh noise for the generator step
    python scripts/experiments.py relu           # the lecture's failing activations
    python scripts/experiments.py tricks         # label flipping, smoothing, EMA
    python scripts/experiments.py report         # tables and plots from what has run, and
                                                 # the distances of real vs real and vs noise

Every run is the `demo` preset (the lecture's algorithm at 32x32, widths 32, batch 64,
8,192 faces) for --epochs epochs, evaluated with SWD, FID and KID on --samples images
(FID's network as shipped, in PyTorch: on a CPU it is faster than XLA's, with the same
features to 2e-4).
Finished runs are kept under --runs and not repeated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "experiments")
SEEDS = (0, 1, 2)
JAX_VS_TORCH_SEEDS = range(10)  # section 1's question needs more than 3
REPLICATION_SEEDS = range(10, 20)
JAX_DCGAN = [sys.executable, "-m", "jax_dcgan.cli"]
EXPERIMENTS = {
    "jax-vs-torch": [(kind, kind, [], s) for s in JAX_VS_TORCH_SEEDS for kind in ("jax", "torch")],
    "noise": [("shared noise", "jax", [], s) for s in SEEDS]
             + [("fresh noise", "jax", ["--fresh-noise"], s) for s in SEEDS],
    "relu": [("LeakyReLU(0.01), lecture", "jax", [], s) for s in SEEDS]
            + [("ReLU in G, LeakyReLU(0.2) in D", "jax", ["--gen-activation", "relu",
                                                          "--dis-slope", "0.2"], s) for s in SEEDS],
    "tricks": [("baseline", "jax", [], s) for s in SEEDS]
              + [("label flip 5%", "jax", ["--label-flip", "0.05"], 0),
                 ("label smoothing 0.1", "jax", ["--label-smoothing", "0.1"], 0),
                 ("EMA 0.999", "jax", ["--ema-decay", "0.999"], 0)],
}


def _run(*args: str) -> str:
    print("$", " ".join(args), flush=True)
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=ROOT).stdout


def run_dir(kind: str, flags: list[str], seed: int, a: argparse.Namespace) -> str:
    return os.path.join(a.runs, "-".join([kind, *[f.strip("-") for f in flags], f"seed{seed}"]))


def run_one(kind: str, flags: list[str], seed: int, a: argparse.Namespace) -> dict:
    """One run's scores (trained and evaluated once, then kept in its eval.json) and its loss
    summary (read from its metrics.jsonl each time)."""
    out = run_dir(kind, flags, seed, a)
    result_path = os.path.join(out, "eval.json")
    if not os.path.exists(result_path):
        scores = train_and_evaluate(kind, flags, seed, out, a)
        with open(result_path, "w") as f:
            json.dump(scores, f)
    with open(result_path) as f:
        scores = json.load(f)
    return {**scores, **loss_summary(out, a.epochs), "kind": kind, "flags": flags, "seed": seed}


def train_and_evaluate(kind: str, flags: list[str], seed: int, out: str,
                       a: argparse.Namespace) -> dict:
    train(kind, flags, seed, out, a)
    checkpoint = out
    if kind == "torch":
        checkpoint = os.path.join(out, "checkpoint")
        if not os.path.exists(checkpoint):
            _run(*JAX_DCGAN, "convert", "--from-torch",
                 os.path.join(out, "model.pt"), "--out", checkpoint, "--preset", "demo")
    return json.loads(_run(*JAX_DCGAN, "eval", "--checkpoint",
                           checkpoint, "--num", str(a.samples), "--json", "--num-synthetic",
                           "8192", "--cache-dir", a.cache, "--inception", "torch"))


def train(kind: str, flags: list[str], seed: int, out: str, a: argparse.Namespace) -> None:
    """Train one run into `out`; a finished one (both trainers write model.pt last) is
    kept, an interrupted JAX run resumed."""
    if os.path.exists(os.path.join(out, "model.pt")):
        return
    if kind == "jax":
        _run(*JAX_DCGAN, "train", "--out", out, "--quiet",
             "--resume", "--seed", str(seed), "--preset", "demo", "--epochs", str(a.epochs),
             "--cache-dir", a.cache, *flags)
    else:
        from jax_dcgan.config import preset
        from jax_dcgan.data import dataset

        images = dataset.load_dataset(preset("demo").replace(cache_dir=a.cache), quiet=True)
        _run(sys.executable, "-m", "torch_reference.train", "--images", images.filename,
             "--out", out, "--epochs", str(a.epochs), "--seed", str(seed))


def replicate_d_loss(a: argparse.Namespace, alpha: float = 0.05, power: float = 0.8) -> dict:
    """A confirmatory test, on new seeds, of the one direction seeds 0-9 left open: JAX's
    last-epoch discriminator loss higher than PyTorch's. One quantity, one-sided Welch test
    (runs trained only). Also the difference over all 20 seeds a side, where seeds 0-9 have
    run: an estimate, not a test, as those seeds suggested the hypothesis."""
    from scipy import stats

    def d_losses(seeds) -> dict[str, list[float]]:
        return {kind: [loss_summary(run_dir(kind, [], seed, a), a.epochs)["d_loss_last_epoch"]
                       for seed in seeds] for kind in ("jax", "torch")}

    for seed in REPLICATION_SEEDS:
        for kind in ("jax", "torch"):
            train(kind, [], seed, run_dir(kind, [], seed, a), a)
    new = d_losses(REPLICATION_SEEDS)
    test = stats.ttest_ind(new["jax"], new["torch"], equal_var=False, alternative="greater")
    summary = {"seeds": list(REPLICATION_SEEDS), "hypothesis": "jax > torch", "alpha": alpha,
               "p_one_sided": float(test.pvalue), "t": float(test.statistic),
               "detectable_difference": detectable_difference(
                   new["jax"], new["torch"], alpha, power, sides=1), "power": power,
               **{kind: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)),
                         "runs": [round(x, 4) for x in v]} for kind, v in new.items()}}
    if all(os.path.exists(os.path.join(run_dir(kind, [], seed, a), "metrics.jsonl"))
           for seed in JAX_VS_TORCH_SEEDS for kind in ("jax", "torch")):
        old = d_losses(JAX_VS_TORCH_SEEDS)
        pooled = stats.ttest_ind(old["jax"] + new["jax"], old["torch"] + new["torch"],
                                 equal_var=False)
        interval = pooled.confidence_interval(0.95)
        summary["all_seeds_estimate"] = {
            "difference": float(np.mean(old["jax"] + new["jax"])
                                - np.mean(old["torch"] + new["torch"])),
            "interval_95": [float(interval.low), float(interval.high)]}
    os.makedirs(DOCS, exist_ok=True)
    with open(os.path.join(DOCS, "d-loss-replication.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def loss_summary(out: str, epochs: int) -> dict:
    """The losses of a run's last epoch, selected by the epoch each step record carries (both
    trainers log the same fields: parity_tests/test_loop.py), and its collapse flags."""
    from jax_dcgan.outputs.plots import Kind, read_records, record_kind
    records = read_records(os.path.join(out, "metrics.jsonl"))
    steps = [r for r in records if record_kind(r) is Kind.STEP]
    events = [r for r in records if record_kind(r) is Kind.EPOCH]  # the diversity monitor's
    last_epoch = [r for r in steps if r["epoch"] == epochs]
    if not last_epoch:
        raise SystemExit(f"{out}: no steps of epoch {epochs} in metrics.jsonl; was the run "
                         f"made with --epochs {epochs}?")
    return {"steps": len(steps),
            "g_loss_last_epoch": float(np.mean([r["g_loss"] for r in last_epoch])),
            "d_loss_last_epoch": float(np.mean([r["d_loss"] for r in last_epoch])),
            "collapse_flagged": [r["epoch"] for r in events if r["collapsed"]],
            "losses": {k: [r[k] for r in steps] for k in ("g_loss", "d_loss")}}


TESTED = ("swd", "fid", "kid", "g_loss_last_epoch", "d_loss_last_epoch")


def holm(p: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: the k-th smallest times (m - k + 1), kept
    non-decreasing, at most 1."""
    adjusted, running = {}, 0.0
    for rank, key in enumerate(sorted(p, key=p.get)):
        running = max(running, min(1.0, (len(p) - rank) * p[key]))
        adjusted[key] = running
    return adjusted


def detectable_difference(a: list[float], b: list[float], alpha: float, power: float,
                          sides: int = 2) -> float:
    """The true difference of means that Welch's test of samples this size and spread finds
    with `power` at level `alpha` (noncentral t with the Welch-Satterthwaite degrees of
    freedom; rejections in the wrong direction, < 1e-4 here, are not counted)."""
    from scipy import optimize, stats

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    t = stats.t.ppf(1 - alpha / sides, df)
    shift = optimize.brentq(lambda d: stats.nct.sf(t, df, d) - power, 0.0, 20.0)
    return float(shift * np.sqrt(va + vb))


def compare(samples: dict[str, tuple[list[float], list[float]]], alpha: float = 0.05,
            power: float = 0.8) -> dict:
    """Welch's t-test per quantity, Holm's correction for testing them together, and the
    difference each test detects with `power` at the strictest corrected level."""
    from scipy import stats

    p = {key: float(stats.ttest_ind(a, b, equal_var=False).pvalue)
         for key, (a, b) in samples.items()}
    level = alpha / len(samples)
    return {"welch_p": p, "holm_p": holm(p), "alpha": alpha, "power": power,
            "detectable_difference": {key: detectable_difference(a, b, level, power)
                                      for key, (a, b) in samples.items()}}


def report(name: str, results: dict[str, list[dict]]) -> dict:
    """Mean and spread per group, the first two groups compared (`compare`), loss plot."""
    from jax_dcgan.outputs.plots import plot_curves, running_average

    summary = {}
    for group, runs in results.items():
        summary[group] = {
            key: {"mean": float(np.mean([r[key] for r in runs])),
                  "std": float(np.std([r[key] for r in runs], ddof=1)) if len(runs) > 1 else None,
                  "runs": [round(r[key], 3) for r in runs]}
            for key in ("swd", "fid", "kid", "diversity", "g_loss_last_epoch",
                        "d_loss_last_epoch")}
        summary[group]["collapse_flagged"] = [r["collapse_flagged"] for r in runs]
    groups = list(results)
    if len(groups) >= 2 and min(len(results[g]) for g in groups[:2]) > 1:
        summary.update(compare({key: ([r[key] for r in results[groups[0]]],
                                      [r[key] for r in results[groups[1]]])
                                for key in TESTED}))
    os.makedirs(DOCS, exist_ok=True)
    with open(os.path.join(DOCS, f"{name}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    curves = {}
    for group, runs in results.items():
        for key in ("d_loss", "g_loss"):
            mean = np.mean([running_average(np.array(r["losses"][key]), 100) for r in runs], 0)
            curves[f"{group}: {key}"] = (list(range(1, len(mean) + 1)), list(mean))
    plot_curves(curves, os.path.join(DOCS, f"{name}_losses.png"), "Iterations",
                "Loss (100-batch running average, mean over seeds)", markers=False)
    return summary


def reference_points(a: argparse.Namespace) -> dict:
    """The scale of SWD, FID and KID here: real vs other real images, and real vs noise."""
    from jax_dcgan.config import preset
    from jax_dcgan.data import dataset
    from jax_dcgan.quality import metrics

    images = dataset.load_dataset(preset("demo").replace(cache_dir=a.cache), quiet=True)
    rng = np.random.default_rng(0)
    chosen = rng.permutation(len(images))[:2 * a.samples]
    real, other = (np.asarray(images[np.sort(chosen[i::2])]) for i in (0, 1))
    noise = rng.integers(0, 256, real.shape, dtype=np.uint8)
    network = metrics.TorchInception()
    reference = metrics.Reference.of(network(real), network.mode)
    summary = {}
    for name, fake in (("real vs other real", other), ("real vs uniform noise", noise)):
        summary[name] = {"swd": metrics.sliced_wasserstein(real, fake)["mean"],
                         **reference.scores(network, fake),
                         "diversity": float(metrics.diversity(fake[:64]))}
    os.makedirs(DOCS, exist_ok=True)
    with open(os.path.join(DOCS, "reference.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=[*EXPERIMENTS, "d-loss-replication", "all", "report"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--samples", type=int, default=512, help="images for SWD and FID")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "experiments"))
    p.add_argument("--cache", default=os.path.join(ROOT, "runs", "cache"))
    a = p.parse_args()
    if a.experiment == "d-loss-replication":
        print(json.dumps(replicate_d_loss(a), indent=1))
        return
    names = list(EXPERIMENTS) if a.experiment in ("all", "report") else [a.experiment]
    for name in names:
        results: dict[str, list[dict]] = {}
        for group, kind, flags, seed in EXPERIMENTS[name]:
            if a.experiment == "report" and not os.path.exists(
                    os.path.join(run_dir(kind, flags, seed, a), "eval.json")):
                continue
            results.setdefault(group, []).append(run_one(kind, flags, seed, a))
        if results:
            print(name, json.dumps(report(name, results), indent=1))
    if a.experiment in ("all", "report"):
        print("reference", json.dumps(reference_points(a), indent=1))


if __name__ == "__main__":
    main()
