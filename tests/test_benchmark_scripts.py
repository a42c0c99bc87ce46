"""Benchmark scripts whose figures docs/RESULTS.md quotes, run on a small real run."""

import json

import pytest
from conftest import benchmark


def test_ceiling_matches_clips_across_runs(five_class_run):
    ceiling = benchmark("pretrained_ceiling")
    same = ceiling.compare_runs([five_class_run, five_class_run])
    errors = same["errors"][0]
    assert same["clips"] > 0 and same["errors"] == [errors, errors] and same["shared_errors"] == errors
    accuracy = pytest.approx(1 - errors / same["clips"])
    assert same["ensemble"] == accuracy and same["oracle"] == accuracy
    held = json.loads((five_class_run / "summary.json").read_text())["folds"]
    assert accuracy == pytest.approx(sum(held.values()) / len(held))  # equal-sized folds
