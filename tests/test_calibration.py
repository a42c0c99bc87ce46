"""Calibrated probabilities and "unknown" answers: the temperature, the unknown scores and their
thresholds, the open-set protocol (``--unknown-classes``), and old models without any of it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import benchmark, tiny_flags, tone
from scipy.stats import norm

from escnet.cli import main
from escnet.deploy.predict import UNKNOWN, Predictor
from escnet.models.calibration import Calibration, fit_temperature, softmax, unknown_threshold
from escnet.models.unknown import UnknownScorer
from escnet.runs import RunDir
from escnet.runs.metrics import FoldScores, expected_calibration_error, held_out_figures


def test_temperature_is_recovered_from_labels_drawn_at_it():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4000, 10))
    for true_t in (0.5, 2.0):
        probs = softmax(logits, true_t)
        labels = np.array([rng.choice(10, p=p) for p in probs])
        fitted, fit = fit_temperature(logits, labels)
        assert abs(fitted / true_t - 1) < 0.08, (true_t, fitted)
        assert fit_temperature(logits, labels)[0] == fitted  # deterministic
        low, high = fit["temperature_interval"]  # 4000 clips: a narrow interval around it
        assert low < fitted < high and high / low < 1.2 and fit["errors"] == np.sum(logits.argmax(1) != labels)


def test_validation_clips_with_few_errors_do_not_sharpen_the_model_without_end():
    """~130 validation clips with one error or none (easier than the clips to come, as fold 1's
    were): the likelihood alone sharpens every clip it got right (T at the search's bound with
    no error); the guarded fit stays where clips never seen score better, and a representative
    validation set is fitted as the likelihood would."""
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 2.0, (20000, 50))
    logits[np.arange(20000), 0] += 8  # 82 % accurate, calibrated at T = 1
    labels = np.array([rng.choice(50, p=p) for p in softmax(logits)])
    right = np.flatnonzero(logits.argmax(1) == labels)
    wrong = np.flatnonzero(logits.argmax(1) != labels)
    held = np.arange(1000, 20000)

    def held_nll(t: float) -> float:
        return float(-np.log(softmax(logits[held], t)[np.arange(len(held)), labels[held]]).mean())

    for errors in (0, 1):
        validation = np.concatenate([right[: 136 - errors], wrong[:errors]])
        free, _ = fit_temperature(logits[validation], labels[validation], guarded=False)
        guarded, fit = fit_temperature(logits[validation], labels[validation])
        assert free < 0.5 < guarded < 1 and fit["errors"] == errors
        assert held_nll(guarded) < 0.9 * held_nll(free), errors
    typical = rng.choice(20000, 136, replace=False)
    free, _ = fit_temperature(logits[typical], labels[typical], guarded=False)
    guarded, fit = fit_temperature(logits[typical], labels[typical])
    assert abs(guarded / free - 1) < 0.06 and fit["temperature_interval"][0] < guarded


def test_threshold_keeps_the_share_asked_for():
    scores = np.random.default_rng(1).normal(size=137)
    for keep, below in ((0.5, 68), (0.9, 12), (0.95, 5), (1.0, 0)):  # ⌊(1 - keep)(n + 1)⌋ - 1
        t = unknown_threshold(scores, keep)
        assert np.sum(scores < t) == below and np.mean(scores >= t) >= keep
    # what it promises: a new score drawn like the validation ones is kept with probability ≥ keep
    rng = np.random.default_rng(2)
    kept = [rng.normal() >= unknown_threshold(rng.normal(size=40), 0.9) for _ in range(20000)]
    assert np.mean(kept) >= 0.9 - 0.005


def test_threshold_with_confidence_keeps_the_share_for_nearly_every_validation_set():
    # a model's kept share of new known sounds (normal scores): 1 - Φ(threshold)
    rng = np.random.default_rng(3)
    kept_share = {c: np.array([1 - norm.cdf(unknown_threshold(rng.normal(size=130), 0.95, c))
                               for _ in range(4000)]) for c in (0.0, 0.9)}
    on_average = kept_share[0.0]  # the conformal quantile: 95 % on average, often less for one model
    assert on_average.mean() >= 0.95 - 0.003 and np.mean(on_average >= 0.95) < 0.7
    assured = kept_share[0.9]  # at least 95 % for 90 % of the validation sets
    assert np.mean(assured >= 0.95) >= 0.9 - 0.015 and np.mean(assured >= 0.95) < 0.97
    scores = rng.normal(size=130)  # k = 3 for n = 130: P(Binomial(130, 0.05) ≥ 3) ≥ 0.9 > P(… ≥ 4)
    assert np.sum(scores < unknown_threshold(scores, 0.95, 0.9)) == 2
    few = rng.normal(size=20)  # too few clips to promise 95 % with 90 %: every clip is kept
    assert unknown_threshold(few, 0.95, 0.9) == few.min()


def test_expected_calibration_error_by_hand():
    # bin (0.8667, 0.9333]: confidence 0.9, accuracy 0.5; bin (0.5333, 0.6]: 0.6 against 1.0
    conf, correct = np.array([0.9, 0.9, 0.6, 0.6]), np.array([1, 0, 1, 1])
    assert expected_calibration_error(conf, correct) == pytest.approx((2 * 0.4 + 2 * 0.4) / 4)
    assert expected_calibration_error(np.array([0.7, 0.7]), np.array([1, 1])) == pytest.approx(0.3)


def test_unknown_scores():
    bank = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.1, 0.0, 0.0], [3.0, 0.0, 0.0]])
    embedding = torch.tensor([[3.0, 0.0], [1.0, 1.0], [-1.0, -1.0]])
    reference = {"energy": torch.tensor([0.0, 1.0, 2.0, 3.0]), "knn": torch.tensor([0.5, 0.8, 0.9, 1.0])}
    scores = UnknownScorer(2.0, bank, reference)(logits, embedding)
    assert torch.allclose(scores["energy"], logits.logsumexp(1))
    assert torch.allclose(scores["msp"], (logits / 2).softmax(1).amax(1))
    assert torch.allclose(scores["knn"], torch.tensor([1.0, 2 ** -0.5, -(2 ** -0.5)]))  # cosine to the nearest
    # the smaller of the energy's rank among the validation scores and 4 × the similarity's:
    # energy 2.13 → 3/4 (knn 1 → 4 × 4/4); energy 1.17 → 2/4 (knn 0.71 → 4 × 1/4);
    # energy 3.1 → 4/4, but knn -0.71 is below every validation clip's → 0
    assert torch.allclose(scores["energy+knn"], torch.tensor([0.75, 0.5, 0.0]))
    assert set(UnknownScorer(1.0)(logits, None)) == {"msp", "energy", "max_logit"}


def test_open_set_figures_of_separable_scores():
    logits = np.array([[4.0, 0.0], [0.0, 4.0], [0.1, 0.0], [0.0, 0.2]])
    labels = np.array([0, 1, -1, -1])
    fold = FoldScores(logits, labels, {"energy": np.array([4.0, 4.0, 0.7, 0.8])},
                      Calibration(1.0, "energy", {"energy": 1.0}))
    o = held_out_figures([fold], "energy")["open_set"]
    assert o["auroc"] == 1.0 and o["known_kept"] == 1.0 and o["false_acceptance"] == 0.0
    assert o["known_clips"] == 2 and o["unknown_clips"] == 2 and o["known_accuracy"] == 1.0


@pytest.fixture(scope="module")
def tone_run(tmp_path_factory):
    """A tiny model trained on four tones with a fifth class (a chirp) left out of training."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    for k, freq in enumerate((300, 700, 1300, 2100)):
        (root / f"tone{k}").mkdir()
        for i in range(20):
            x = tone(freq * (1 + 0.02 * rng.standard_normal()), 8000, 1.0) + 0.01 * rng.standard_normal(8000)
            sf.write(root / f"tone{k}" / f"{i}.wav", x.astype(np.float32), 8000)
    (root / "chirp").mkdir()
    t = np.arange(8000) / 8000
    for i in range(20):
        x = 0.5 * np.sin(2 * np.pi * (200 + 1500 * t * (1 + 0.1 * i)) * t)
        sf.write(root / "chirp" / f"{i}.wav", x.astype(np.float32), 8000)
    out = tmp_path_factory.mktemp("runs") / "open"
    assert main(["train", *tiny_flags("--data", str(root), "--out", str(out), "--model", "crnn",
                                      "--epochs", "4", "--folds", "1,2", "--unknown-classes", "chirp",
                                      "--set", "train.validation_share=0.2", "--quiet")]) == 0
    return out, root


def test_open_set_run_keeps_calibration_and_scores_unknown_clips(tone_run):
    out, _ = tone_run
    run = RunDir(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == ["tone0", "tone1", "tone2", "tone3"] and summary["unknown_classes"] == ["chirp"]
    pooled = json.loads((out / "metrics.json").read_text())
    cal, o = pooled["calibration"], pooled["open_set"]
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(cal)
    assert o["score"] == "energy" and o["unknown_clips"] == 8 and o["known_clips"] == 32
    assert 0 <= o["auroc"] <= 1 and set(o["by_score"]) == {"msp", "energy", "max_logit"}
    for fold in ("1", "2"):
        held = run.read_held_out(fold)
        assert (held["labels"] == -1).sum() == 4 and set(held["truth"][held["labels"] == -1]) == {"chirp"}
        ckpt = torch.load(run.checkpoint(fold), weights_only=True)
        assert ckpt["calibration"]["validation_clips"] == 12  # 3 (20 %) of each class's 16 training clips
        assert ckpt["classes"] == summary["classes"]
        # the fold's accuracy is of known clips only, and calibration never changes a prediction
        assert run.fold_metrics(fold)["clips"] == 16
    page = (out / "report.html")
    assert main(["report", str(out)]) == 0
    text = page.read_text()
    assert "reliability diagram" in text and "Unknown sounds" in text and "chirp" in text
    assert main(["compare", str(out), "--out", str(out.parent / "cmp")]) == 0
    row = (out.parent / "cmp" / "compare.csv").read_text().splitlines()
    ece = row[1].split(",")[row[0].split(",").index("ece")]
    assert float(ece) == pytest.approx(cal["ece_after"], abs=1e-4)


def test_calibrate_again_with_another_keep(tone_run, capsys):
    out, _ = tone_run
    before = json.loads((out / "metrics.json").read_text())["open_set"]
    assert main(["calibrate", str(out), "--keep", "0.5", "--quiet"]) == 0
    after = json.loads((out / "metrics.json").read_text())["open_set"]
    assert after["known_kept"] < before["known_kept"] and after["known_kept"] >= 0.3
    assert "AUROC" in capsys.readouterr().out
    assert RunDir(out).config.train.unknown_keep == 0.5
    # 0.5 on average only (the conformal quantile) keeps fewer than 0.5 with probability 0.9
    assert main(["calibrate", str(out), "--confidence", "0", "--quiet"]) == 0
    on_average = json.loads((out / "metrics.json").read_text())["open_set"]
    assert on_average["known_kept"] < after["known_kept"]
    assert RunDir(out).config.train.unknown_confidence == 0
    capsys.readouterr()
    assert main(["calibrate", str(out), "--confidence", "1"]) == 2
    assert "train.unknown_confidence=1.0: must be >= 0 and < 1 (flag --confidence)" in capsys.readouterr().err
    assert main(["calibrate", str(out), "--keep", "0.95", "--confidence", "0.9", "--quiet"]) == 0
    again = json.loads((out / "metrics.json").read_text())["open_set"]
    assert again["known_kept"] == before["known_kept"] and again["auroc"] == pytest.approx(before["auroc"])


def test_a_run_whose_dataset_moved_says_to_give_its_new_place(tone_run, capsys):
    out, root = tone_run
    moved = root.with_name(root.name + "-moved")
    root.rename(moved)
    try:
        for command in (["calibrate", str(out), "--quiet"], ["evaluate", str(out)]):
            capsys.readouterr()
            assert main(command) == 2
            err = capsys.readouterr().err
            assert f"its dataset {root} (data.data_dir, as given at training) is not there" in err
            assert err.rstrip().endswith("give --data DIR") and err.count("\n") == 1
        assert main(["evaluate", str(out), "--data", str(moved)]) == 0
    finally:
        moved.rename(root)


def test_prediction_answers_unknown_below_the_threshold(tone_run, capsys):
    out, root = tone_run
    predictor = Predictor.from_path(out)
    assert predictor.info.calibrated and predictor.info.unknown_score == "energy"
    threshold = predictor.info.unknown_threshold
    for path in [*sorted((root / "tone1").glob("*.wav"))[:3], *sorted((root / "chirp").glob("*.wav"))[:3]]:
        p = predictor.predict_file(path)
        assert p.label == (UNKNOWN if p.known < threshold else p.top[0][0])
        assert p.top and abs(sum(prob for _, prob in predictor.predict_file(path, top_k=4).top) - 1) < 1e-5
    assert main(["predict", "--model", str(out), str(root / "chirp" / "0.wav"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["label"] in (UNKNOWN, *predictor.classes) and "unknown_score" in result


def test_old_checkpoints_predict_uncalibrated_and_say_so_once(tone_run, tmp_path, caplog):
    out, root = tone_run
    ckpt = torch.load(RunDir(out).checkpoint("1"), weights_only=True)
    for key in ("calibration", "unknown_scorer"):
        del ckpt[key]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    with caplog.at_level(logging.WARNING, logger="escnet"):
        predictor = Predictor.from_path(old)
        results = [predictor.predict_file(p) for p in sorted((root / "chirp").glob("*.wav"))[:3]]
    assert len([r for r in caplog.records if "uncalibrated" in r.message]) == 1
    assert not predictor.info.calibrated and predictor.info.unknown_threshold is None
    assert all(r.label == r.top[0][0] for r in results)  # never "unknown" without a threshold


def test_pretrained_probe_says_unknown_with_what_audioset_hears(probe_open_run, probe_open_onnx):
    out, data = probe_open_run
    pooled = json.loads((out / "metrics.json").read_text())
    assert pooled["open_set"]["score"] == "energy+knn" and "knn" in pooled["open_set"]["by_score"]
    assert pooled["open_set"]["auroc"] > 0.8 and pooled["accuracy"] > 0.85
    rows = [ln.split(",") for ln in data.read_text().splitlines()[1:]]
    cats = [p for p, label, fold in rows if label == "cat" and fold == "1"]
    predictor = Predictor.from_path(out / "fold-1" / "last.pt")
    assert len(predictor.info.tag_names) == 527
    answers = [predictor.predict_file(p) for p in cats]
    unknown = [a for a in answers if a.label == UNKNOWN]
    assert len(unknown) >= len(cats) // 2, [a.label for a in answers]
    assert any(a.sounds_like[0][0] in ("Cat", "Meow", "Animal", "Domestic animals, pets") for a in unknown)
    # the exported graph carries the scorer, the threshold and the AudioSet head
    onnx = Predictor.from_path(probe_open_onnx)
    assert onnx.info.unknown_threshold == pytest.approx(predictor.info.unknown_threshold)
    assert onnx.info.tag_names == predictor.info.tag_names and onnx.info.calibrated
    for path, a in zip(cats, answers, strict=True):
        b = onnx.predict_file(path)
        assert b.label == a.label and abs(b.top[0][1] - a.top[0][1]) < 1e-3
        assert [t for t, _ in b.sounds_like] == [t for t, _ in a.sounds_like]


def test_foreign_audio_benchmark_runs(probe_open_run, tmp_path, monkeypatch):
    """benchmarks/open_set.py builds its recordings and scores them (its figures are in docs)."""
    out, _ = probe_open_run
    kinds, _ = benchmark("open_set").build(tmp_path, 0)
    assert len(kinds["music"]) == 12 and len(kinds["noise"]) == 9 and len(kinds["silence"]) == 1
    predictor = Predictor.from_path(out / "fold-1" / "last.pt")
    music = [predictor.predict_file(p).label for p in kinds["music"]]
    assert music.count(UNKNOWN) >= 9, music  # chords and melodies are none of ESC-50's sounds
    assert predictor.predict_file(kinds["silence"][0]).label is None  # silence is refused, not labelled


def test_a_score_the_model_cannot_give_is_refused_before_training(tone_run, tmp_path, capsys):
    out, root = tone_run
    code = main(["train", *tiny_flags("--data", str(root), "--model", "crnn", "--set", "train.unknown_score=knn",
                                      "--out", str(tmp_path / "r"))])
    assert code == 2 and "train.unknown_score=knn: model crnn has no embedding" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    before = (out / "config.yaml").read_text()
    assert main(["calibrate", str(out), "--score", "energy+knn"]) == 2
    assert "has no embedding" in capsys.readouterr().err and (out / "config.yaml").read_text() == before


def _same_weights(a: Path, b: Path) -> bool:
    first, second = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_refit_trains_on_every_clip_and_carries_the_holdout_models_calibration(tone_run, tmp_path, capsys):
    first, root = tone_run  # the same settings without --refit: what the holdout run must be
    flags = ("--data", str(root), "--model", "crnn", "--epochs", "4", "--folds", "1,2",
             "--unknown-classes", "chirp", "--set", "train.validation_share=0.2")
    out, every = tmp_path / "refit", tmp_path / "every"
    assert main(["train", *tiny_flags(*flags, "--refit", "--out", str(out))]) == 0
    said = capsys.readouterr().out
    assert "(holdout model) epoch   4/4" in said and "without their validation clips, which made" in said
    assert main(["train", *tiny_flags(*flags, "--set", "train.validation_share=0", "--out", str(every),
                                      "--quiet")]) == 0
    run = RunDir(out)
    holdout = run.holdout_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["holdout"]["folds"] == json.loads((first / "summary.json").read_text())["folds"]
    assert holdout.status == "complete" and not holdout.config.train.refit
    for fold in ("1", "2"):
        assert _same_weights(holdout.checkpoint(fold), first / f"fold-{fold}" / "last.pt")
        assert _same_weights(run.checkpoint(fold), every / f"fold-{fold}" / "last.pt")
        carried, fitted = torch.load(run.checkpoint(fold), weights_only=True)["calibration"], \
            holdout.read_calibration(fold)
        assert carried["refit"] and carried["temperature"] == fitted.temperature != 1
        assert carried["thresholds"] == {k: fitted.thresholds[k] for k in ("msp", "energy", "max_logit")}
        assert carried["unknown_threshold"] == fitted.thresholds["energy"]
        held, plain = run.read_held_out(fold), RunDir(every).read_held_out(fold)
        assert np.array_equal(held["logits"], plain["logits"]) and (held["labels"] == -1).sum() == 4
    pooled = json.loads((out / "metrics.json").read_text())
    assert pooled["open_set"]["unknown_clips"] == 8 and pooled["calibration"]["ece_after"] >= 0
    predictor = Predictor.from_path(out)
    assert predictor.info.calibrated and predictor.info.unknown_score == "energy"

    # an interrupted refit run resumes with the holdout model it has; calibrating it again
    # recalibrates the holdout models and carries that over
    stamp = holdout.checkpoint("2").stat().st_mtime_ns
    shutil.rmtree(out / "fold-2")
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert _same_weights(run.checkpoint("2"), every / "fold-2" / "last.pt")
    assert holdout.checkpoint("2").stat().st_mtime_ns == stamp
    assert main(["calibrate", str(out), "--keep", "0.5", "--quiet"]) == 0
    assert RunDir(holdout.path).config.train.unknown_keep == 0.5
    for fold in ("1", "2"):
        fitted = holdout.read_calibration(fold)
        assert fitted.unknown_keep == 0.5
        assert run.read_calibration(fold).thresholds["energy"] == fitted.thresholds["energy"]
    assert main(["report", str(out)]) == 0
    assert "carries the temperature its holdout model" in (out / "report.html").read_text()
    shutil.rmtree(holdout.path)  # lost: said in one line, with the way back
    capsys.readouterr()
    assert main(["calibrate", str(out)]) == 2
    assert f"{out}/holdout: missing" in (err := capsys.readouterr().err) and "resuming the run trains them" in err
