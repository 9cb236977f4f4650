"""The README's Python API example runs as printed."""

import os
import re

import numpy as np

from .helpers import ROOT


def test_python_api_example(tmp_path, monkeypatch):
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Python API"):]
    (code,) = re.findall(r"```python\n(.*?)```", section[:section.index("\n## ", 5)], re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert int(namespace["state"].step) == 8
    images = np.asarray(namespace["images"])
    assert images.shape == (16, 16, 16, 3) and np.all(np.abs(images) <= 1)
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert (tmp_path / "runs" / "api" / "metrics.jsonl").exists()
