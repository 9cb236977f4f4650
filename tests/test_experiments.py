"""The statistics behind docs/EXPERIMENTS.md (`scripts/experiments.py`)."""

import importlib.util
import os

import numpy as np
import pytest
from scipy import stats

from .helpers import ROOT

spec = importlib.util.spec_from_file_location(
    "experiments", os.path.join(ROOT, "scripts", "experiments.py"))
experiments = importlib.util.module_from_spec(spec)
spec.loader.exec_module(experiments)


def test_holm_adjusts_step_down_keeps_the_order_and_caps_at_one():
    assert experiments.holm({"a": 0.01, "b": 0.02, "c": 0.03}) == pytest.approx(
        {"a": 0.03, "b": 0.04, "c": 0.04})  # 3 x 0.01, 2 x 0.02, then kept at 0.04
    assert experiments.holm({"a": 0.4, "b": 0.6, "c": 0.001}) == pytest.approx(
        {"c": 0.003, "a": 0.8, "b": 0.8})  # 0.6 x 1 raised to the 0.8 before it
    assert experiments.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("spread", [1.0, 2.5])  # G's loss: 0.45 against 0.18 over 10 seeds
def test_detectable_difference_is_found_with_the_stated_power(spread):
    """Welch tests of 10 vs 10 draws whose means differ by the detectable difference reject
    at the level in 80% of 40,000 repeats: a rate with standard error 0.002, so the bound
    0.01 is 5 of them. Measured 0.794 (equal spreads) and 0.799 (2.5 to 1); with Student's
    degrees of freedom in place of Welch's, the second was 0.729."""
    rng = np.random.default_rng(0)
    a, b = list(rng.normal(0, 1, 10)), list(rng.normal(0, spread, 10))
    level = 0.05 / 5
    d = experiments.detectable_difference(a, b, level, 0.8)
    x = rng.normal(0, np.std(a, ddof=1), (40_000, 10))
    y = rng.normal(d, np.std(b, ddof=1), (40_000, 10))
    power = np.mean(stats.ttest_ind(x, y, axis=1, equal_var=False).pvalue < level)
    assert power == pytest.approx(0.8, abs=0.01)


def test_compare_tests_each_quantity_and_corrects_for_all():
    rng = np.random.default_rng(1)
    samples = {"same": (list(rng.normal(0, 1, 10)), list(rng.normal(0, 1, 10))),
               "apart": (list(rng.normal(0, 1, 10)), list(rng.normal(3, 1, 10)))}
    result = experiments.compare(samples)
    for key, (a, b) in samples.items():
        assert result["welch_p"][key] == stats.ttest_ind(a, b, equal_var=False).pvalue
        assert result["detectable_difference"][key] == experiments.detectable_difference(
            a, b, 0.05 / 2, 0.8)
    assert result["holm_p"] == experiments.holm(result["welch_p"])
