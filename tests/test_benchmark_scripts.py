"""Benchmark scripts whose figures docs/RESULTS.md quotes, run on a small real run."""

import json

import pytest
from conftest import benchmark


def test_ceiling_matches_clips_across_runs_and_rescores_each_fold(five_class_run):
    ceiling = benchmark("pretrained_ceiling")
    held = json.loads((five_class_run / "summary.json").read_text())["folds"]
    same = ceiling.compare_runs([five_class_run, five_class_run])
    errors = same["errors"][0]
    assert same["clips"] > 0 and same["errors"] == [errors, errors] and same["shared_errors"] == errors
    accuracy = pytest.approx(1 - errors / same["clips"])
    assert same["ensemble"] == accuracy and same["oracle"] == accuracy
    folds = ceiling.shifted(five_class_run, None, progress=False)
    assert set(folds) == set(held)
    for fold, (plain, averaged) in folds.items():
        assert plain == pytest.approx(held[fold])  # the fold models as trained, re-scored
        assert 0 < averaged <= 1
