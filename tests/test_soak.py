"""A short soak (scripts/soak.py): 22 epochs of grids, plots, SWD and FID evaluations and
checkpoints, failing on clear growth of resident memory, open descriptors or epoch time.
The long one (200 epochs x 50 steps) is in docs/BENCHMARKS.md."""

import json
import os
import subprocess
import sys

from jax_dcgan.outputs.plots import read_records

from .helpers import ROOT


def test_a_run_of_22_epochs_keeps_memory_descriptors_and_epoch_time_flat(tmp_path):
    # Looser memory and time limits than the long soak's, for a host shared with the other
    # half of the suite (measured alone: epochs of 0.045 s at the start and 0.021 s at the
    # end, resident memory +1.6 MiB; the limits are 3x + 0.2 s and 128 MiB); an open
    # descriptor that stays is still a failure. 22 epochs: the 15 of the warm-up (the first
    # evaluation's included) and 7 to compare.
    done = subprocess.run(
        [sys.executable, "scripts/soak.py", "--epochs", "22", "--steps-per-epoch", "16",
         "--eval-every", "10", "--rss-limit-mib", "128", "--time-limit", "3",
         "--time-slack", "0.2", "--out", tmp_path, "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["epochs"] == 22 and result["problems"] == []
    assert result["rss_mib"]["start"] > 0 and result["open_fds"]["start"] > 0
    evaluations = [r for r in read_records(tmp_path / "run" / "metrics.jsonl") if "swd" in r]
    assert [r["epoch"] for r in evaluations] == [10, 20]
    # FID too: a network that failed to load would drop it with a warning and pass the rest.
    assert all(r["fid"] > 0 and "kid" in r for r in evaluations), evaluations
    assert "FID is skipped" not in done.stderr


def test_the_soak_verdict_names_each_kind_of_growth(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "scripts"))
    import soak

    flat = [{"epoch_seconds": 0.1, "rss_mib": 900.0, "open_fds": 12} for _ in range(40)]
    assert soak.summarize(flat, 0, 64, 1.5, 0.05)["problems"] == []
    grown = [dict(r, rss_mib=900.0 + 5 * i, open_fds=12 + i // 20, epoch_seconds=0.1 + i / 100)
             for i, r in enumerate(flat)]
    assert soak.summarize(grown, 0, 64, 1.5, 0.05)["problems"] == [
        "resident memory grew by 95 MiB", "1 more file descriptor stays open",
        "epochs became slower: 0.210 s -> 0.400 s"]
