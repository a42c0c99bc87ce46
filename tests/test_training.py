"""Integration tests on real ESC-50 clips: learning, resume, evaluate, predict, report."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import Page, esc50_subset_csv, tone

from escnet.cli import main
from escnet.config import TaskConfig
from escnet.deploy.predict import Predictor
from escnet.engine.evaluate import evaluate_run
from escnet.engine.train import train

# Five well-separated classes: dog, rain, crying baby, clock tick, church bells.
TARGETS = [0, 10, 20, 38, 46]


@pytest.fixture(scope="module")
def small_config(esc50, tmp_path_factory) -> TaskConfig:
    """200 real clips, 16 kHz, a CRNN small and fast enough for a test; fold 1 held out."""
    csv_path = esc50_subset_csv(esc50, tmp_path_factory.mktemp("data") / "five.csv", TARGETS, [1, 2, 3, 4, 5])
    return TaskConfig().replace({"data.data_dir": str(csv_path), "model.name": "crnn", "data.sample_rate": 16000, "features.n_fft": 512, "features.win_length": 512, "features.hop_length": 256, "features.n_mels": 40, "model.args.kernel_size": (5, 8), "model.args.stride": (2, 4), "model.args.cnn_out_channels": 8, "model.args.hidden_size": 32, "train.batch_size": 32, "train.learning_rate": 3e-3, "train.num_epochs": 12, "data.folds": [1]})


@pytest.fixture(scope="module")
def trained(small_config, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "full"
    return run, train(small_config, run, progress=False)


def test_short_training_beats_chance(trained):
    run, summary = trained
    assert summary["folds"]["1"] >= 0.55  # chance is 0.20 on five classes
    assert summary["status"] == "complete"
    assert summary["classes"] == ["church_bells", "clock_tick", "crying_baby", "dog", "rain"]
    metrics = [json.loads(line) for line in (run / "fold-1" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == list(range(1, 13))
    assert metrics[-1]["train_loss"] < 0.7 * metrics[0]["train_loss"]
    for name in ("config.yaml", "summary.json", "fold-1/last.pt", "fold-1/best.pt"):
        assert (run / name).is_file()
    ckpt = torch.load(run / "fold-1" / "best.pt", weights_only=True)
    assert ckpt["test_accuracy"] == max(m["test_accuracy"] for m in metrics)


def test_resume_gives_the_same_numbers(small_config, trained, tmp_path):
    _, full = trained
    run = tmp_path / "resumed"

    def stop_after_epoch_5(log):
        if log["epoch"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_config, run, progress=False, callbacks=[stop_after_epoch_5])
    assert len((run / "fold-1" / "metrics.jsonl").read_text().splitlines()) == 5
    # Resumed through the CLI, as a user would after Ctrl-C.
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["folds"] == full["folds"]
    assert resumed["best_epoch_accuracy"] == full["best_epoch_accuracy"]


def test_ema_run_scores_the_average_and_resumes_exactly(small_config, tmp_path):
    config = small_config.replace({"train.ema_decay": 0.9, "train.num_epochs": 4})
    full = train(config, tmp_path / "full", progress=False)

    def stop_after_epoch_2(log):
        if log["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", progress=False, callbacks=[stop_after_epoch_2])
    resumed = train(config, tmp_path / "resumed", resume=True, progress=False)
    losses = [[json.loads(line)["test_loss"] for line in
               (tmp_path / run / "fold-1" / "metrics.jsonl").read_text().splitlines()]
              for run in ("full", "resumed")]
    assert losses[0] == losses[1] and resumed["folds"] == full["folds"]
    ckpt = torch.load(tmp_path / "full" / "fold-1" / "last.pt", weights_only=True)
    assert ckpt["ema_updates"] == 4 * (144 // 32)  # one update per step: 160 clips, 16 held for validation
    assert any(not torch.equal(ckpt["model"][k], ckpt["trained"][k]) for k in ckpt["model"])
    # What the checkpoint calls the model is what was scored: evaluate gets the same accuracy.
    assert evaluate_run(tmp_path / "full", progress=False)["folds"]["1"]["accuracy"] == \
        pytest.approx(full["folds"]["1"])


def test_resume_refuses_changed_settings(trained, capsys):
    run, _ = trained
    assert main(["train", "--resume", str(run), "--lr", "0.1", "--quiet"]) == 2
    assert "different settings (train.learning_rate)" in capsys.readouterr().err


def test_evaluate_recomputes_recorded_accuracy(trained):
    run, summary = trained
    result = evaluate_run(run, progress=False, tta=3)
    assert result["folds"]["1"]["accuracy"] == pytest.approx(summary["folds"]["1"])
    assert 0.2 < result["folds"]["1"]["accuracy_tta"] <= 1.0  # reported beside, not instead
    assert json.loads((run / "evaluation.json").read_text())["accuracy_tta_mean"] == \
        result["accuracy_tta_mean"]


def test_metrics_and_report_of_a_real_run(trained):
    from escnet.reports.html import write_report

    run, summary = trained
    with (run / "fold-1" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40 and all(r["path"].endswith((".ogg", ".wav", ".flac")) for r in rows)
    right = sum(r["label"] == r["predicted"] for r in rows)
    assert right / 40 == pytest.approx(summary["folds"]["1"])  # the last epoch's predictions
    pooled = json.loads((run / "metrics.json").read_text())
    assert pooled["accuracy"] == pytest.approx(summary["folds"]["1"])
    assert summary["macro_f1_pooled"] == pytest.approx(pooled["macro_f1"])
    assert np.asarray(pooled["confusion"]).sum() == 40
    page = Page(write_report(run).read_text())
    assert len(page.images) == 4 and all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    assert {i["alt"] for i in page.images} == {"training curves", "confusion matrix", "per-class accuracy",
                                                "reliability diagram"}
    assert f"{100 * summary['folds']['1']:.1f}" in page.cells
    assert "Most confused pairs" in "".join(page.text)
    for name in ("curves", "confusion", "per_class"):
        assert (run / "report" / f"{name}.png").stat().st_size > 5000


def test_tensorboard_logs_every_epoch(small_config, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(small_config.replace({"train.num_epochs": 2, "train.tensorboard": True}), tmp_path / "tb", progress=False)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "fold-1/test_accuracy" in scalars and "fold-1/train_loss" in scalars
    assert [e.step for e in events.Scalars("fold-1/test_accuracy")] == [1, 2]


def test_predict_output_format(trained, esc50, capsys):
    run, _ = trained
    clip = sorted((esc50 / "audio").glob("1-*-0.*"))[0]  # a dog from the held-out fold
    assert main(["predict", "--model", str(run), str(clip), "--top-k", "3", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    # ESC-50 clips run a few ms over 5 s, so the end gets a second, end-aligned window.
    assert result["file"] == str(clip) and result["windows"] in (1, 2)
    probs = [t["probability"] for t in result["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert main(["predict", "--model", str(run / "fold-1" / "last.pt"), str(clip), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{clip} (") and len(lines) == 4
    classes = {"dog", "rain", "crying_baby", "clock_tick", "church_bells"}
    assert lines[1].startswith("  answer: ") and lines[1].split()[1] in {*classes, "unknown"}
    assert lines[2].split()[-1] in classes and lines[2].split()[0].endswith("%")


def test_predict_keeps_the_readable_files_when_one_is_not(trained, esc50, tmp_path, capsys):
    run, _ = trained
    clip = sorted((esc50 / "audio").glob("1-*-0.*"))[0]
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    assert main(["predict", "--model", str(run), str(bad), str(clip), "--json"]) == 2
    out, err = capsys.readouterr()
    assert [r["file"] for r in json.loads(out)] == [str(clip)]
    assert err.splitlines() == [f"escnet: error: {bad}: not a readable audio file (Format not "
                                "recognised.)",
                                "escnet: 1 of 2 files could not be read (listed above)"]


def test_long_file_is_scored_in_windows(trained, tmp_path):
    run, _ = trained
    predictor = Predictor.from_path(run)
    sf.write(tmp_path / "long.wav", tone(440, 16000, 12.0), 16000)
    result = predictor.predict_file(tmp_path / "long.wav", top_k=5)
    assert result.windows == 4 and result.duration == 12.0  # 12 s: windows at 0, 2.5, 5, 7 s
    assert abs(sum(p for _, p in result.top) - 1) < 1e-5


def test_augmented_training_is_the_same_with_or_without_workers(small_config, trained, tmp_path):
    config = small_config.replace({"augment.waveform": ["time_shift", "gain", "gaussian_noise"], "augment.gain_db": (-6.0, 6.0), "augment.spec_augment": True, "augment.mixup_alpha": 0.4, "train.num_epochs": 1})
    assert config.waveform_augment  # transformed per item, so no feature cache
    runs = {}
    for workers in (0, 2):
        train(config.replace({"train.num_workers": workers}), tmp_path / f"w{workers}", progress=False)
        runs[workers] = [json.loads(line) for line in
                         (tmp_path / f"w{workers}" / "fold-1" / "metrics.jsonl").read_text().splitlines()]
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    assert [[m[k] for k in keys] for m in runs[0]] == [[m[k] for k in keys] for m in runs[2]]
    plain = [json.loads(line) for line in
             (trained[0] / "fold-1" / "metrics.jsonl").read_text().splitlines()][:1]
    assert [m["train_loss"] for m in runs[0]] != [m["train_loss"] for m in plain]


def test_augmented_copies_are_made_once_and_shared(small_config, tmp_path):
    cache = tmp_path / "cache"
    config = small_config.replace({"augment.waveform": ["time_stretch"], "augment.time_stretch_rate": (1.5, 1.5), "augment.policy": "each", "augment.p": 1.0, "augment.copies": 2, "data.cache_dir": str(cache), "train.num_epochs": 1})
    train(config, tmp_path / "two", progress=False)
    copies = sorted(cache.glob("aug-*.npy"))
    assert [p.name[-6:] for p in copies] == ["-0.npy", "-1.npy"]
    original = np.load(next(cache.glob("wav-*.npy")), mmap_mode="r")
    first, second = (np.load(p, mmap_mode="r") for p in copies)
    assert first.shape == original.shape
    # Stretched by 1.5: the last third of each copy is the zero padding.
    loud = np.abs(original[:, : original.shape[1] // 2]).max(axis=1) > 0.01
    tail = np.abs(first[loud, int(original.shape[1] * 0.7):]).max(axis=1)
    assert (tail < 1e-3).mean() > 0.9
    assert not np.array_equal(first, second) or config.augment.policy == "each"
    stamps = {p.name: p.stat().st_mtime_ns for p in copies}
    summary = train(config.replace({"augment.copies": 3, "augment.mixup_alpha": 0.2, "augment.mixup_mode": "waveform"}),
                    tmp_path / "three", progress=False)
    assert len(list(cache.glob("aug-*.npy"))) == 3
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in copies)  # reused, not redone
    assert summary["feature_seconds"] == 0.0  # waveform mixing: features per batch


def test_a_run_with_nothing_to_calibrate_on_says_so_at_its_end(tmp_path, capsys):
    from conftest import write_esc50_like

    data = write_esc50_like(tmp_path / "d", [(f"{f}-{i}-A-{t}.wav", f, t, ".wav")
                                             for f in (1, 2) for t in (0, 1) for i in range(3)])
    assert main(["train", "--data", str(data), "--model", "crnn", "--folds", "1", "--epochs", "1",
                 "--quiet", "--out", str(tmp_path / "r"), "--set", "data.sample_rate=8000",
                 "--set", "features.n_fft=256", "--set", "features.win_length=256",
                 "--set", "features.hop_length=64"]) == 0
    out = capsys.readouterr().out
    # 3 clips a class: no validation clip, so the end must not claim a calibration
    assert "not calibrated: no fold had validation clips" in out
    assert "calibrated on models" not in out and "ECE" not in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["calibration"]["validation_clips"] == 0
    assert main(["calibrate", str(tmp_path / "r"), "--quiet"]) == 0  # nor may calibrate or the report
    assert "not calibrated: no fold had validation clips" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Not calibrated: no fold had validation clips" in page and "→" not in page.split("Calibration</h2>")[1][:400]


def test_a_diverging_run_stops_with_one_line_and_keeps_its_last_good_epoch(tmp_path, capsys):
    from conftest import write_esc50_like

    data = write_esc50_like(tmp_path / "d", [(f"{f}-{i}-A-{t}.wav", f, t, ".wav")
                                             for f in (1, 2) for t in (0, 1) for i in range(3)])
    args = ["train", "--data", str(data), "--model", "crnn", "--folds", "1", "--epochs", "3", "--quiet",
            "--out", str(tmp_path / "r"), "--set", "data.sample_rate=8000", "--set", "features.n_fft=256",
            "--set", "features.win_length=256", "--set", "features.hop_length=64"]
    # wrongly scaled float audio: finite samples, but a power beyond float32
    sf.write(data / "audio" / "2-0-A-0.wav", np.full(16000, 1e30, np.float32), 16000, subtype="FLOAT")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("escnet: dataset ")  # the run's first line
    assert "no clip of its training folds could be held out" in err  # 3 clips a class: said at once
    err = err.splitlines()[-1] + "\n"
    assert err.startswith("escnet: error:") and "loss became" in err and "(not finite)" in err
    assert "lower train.learning_rate" in err
    logged = (tmp_path / "r" / "fold-1" / "metrics.jsonl")
    epochs = logged.read_text().splitlines() if logged.exists() else []
    assert all(np.isfinite(json.loads(e)["train_loss"]) for e in epochs)  # only good epochs kept
    assert not (tmp_path / "r" / "summary.json").exists()
