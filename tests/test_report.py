import csv
import json
import warnings

import numpy as np
import pytest
from conftest import Page
from sklearn.metrics import f1_score

from escnet.cli import main
from escnet.config import TaskConfig
from escnet.errors import EscnetError
from escnet.reports.compare import compare, joined_name
from escnet.reports.plots import save_comparison
from escnet.runs import Predictions, RunDir
from escnet.runs.metrics import classification_metrics, confused_pairs, major_category


def test_metrics_on_hand_made_predictions_with_a_class_never_predicted():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0])  # class 2 is never predicted
    m = classification_metrics(labels, predicted, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 1, 0]]
    f1_a, f1_b, f1_c = 0.5, 2 * 0.5 * 1.0 / 1.5, 0.0
    assert m["macro_f1"] == pytest.approx((f1_a + f1_b + f1_c) / 3)


def test_a_class_absent_from_the_labels_has_no_accuracy():
    m = classification_metrics(np.array([0, 0, 1]), np.array([0, 2, 1]), ["a", "b", "c"])
    assert m["per_class_accuracy"]["c"] is None
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)  # over the classes present


def test_predictions_round_trip_and_most_confused_pairs(tmp_path):
    classes = ["dog", "rain", "siren"]
    preds = Predictions([f"/d/{i}.wav" for i in range(6)], np.array([0, 0, 0, 1, 1, 2]),
                        np.array([1, 1, 0, 2, 1, 2]), np.linspace(0.4, 0.9, 6), classes)
    preds.save(tmp_path / "p.csv")
    back = Predictions.load(tmp_path / "p.csv", classes)
    assert np.array_equal(back.labels, preds.labels) and np.array_equal(back.predicted, preds.predicted)
    assert np.allclose(back.confidence, preds.confidence)
    pairs = confused_pairs(back.labels, back.predicted, back.paths, back.classes)
    assert pairs[0] == {"true": "dog", "predicted": "rain", "count": 2, "files": ["0.wav", "1.wav"]}
    assert pairs[1]["true"] == "rain" and pairs[1]["predicted"] == "siren" and len(pairs) == 2
    assert major_category("siren") == "Exterior/urban" and major_category("kazoo") is None


CLASSES = ["dog", "rain", "siren"]


def make_run(root, name, model, accuracies, epochs=2, classes=CLASSES, finished=True, first_fold=1,
             **settings):
    """A run directory as escnet writes it, from given per-fold accuracies of folds
    ``first_fold``, ``first_fold + 1``, ...; unless ``finished``, the last fold is one epoch short."""
    run = root / name
    run.mkdir()
    folds = list(range(first_fold, first_fold + len(accuracies)))
    TaskConfig().replace({"model.name": model, "train.num_epochs": epochs,
                          "model.num_classes": len(classes), "data.folds": folds,
                          **settings}).save(run / "config.yaml")
    for fold, acc in zip(folds, accuracies, strict=True):
        (run / f"fold-{fold}").mkdir()
        n = epochs if finished or fold < folds[-1] else epochs - 1
        lines = [{"fold": str(fold), "epoch": e, "train_loss": 1.0, "train_accuracy": 0.5,
                  "test_loss": 1.0, "test_accuracy": acc if e == n else 0.1, "seconds": 2.0 + fold}
                 for e in range(1, n + 1)]
        (run / f"fold-{fold}" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        # 10 clips per fold, round(acc * 10) of them right.
        labels = np.arange(10) % len(classes)
        right = round(acc * 10)
        predicted = np.where(np.arange(10) < right, labels, (labels + 1) % len(classes))
        Predictions([f"f{fold}-{i}.wav" for i in range(10)], labels, predicted, np.ones(10),
                    classes).save(run / f"fold-{fold}" / "predictions.csv")
    status = "complete" if finished else "partial"
    (run / "summary.json").write_text(json.dumps({"status": status, "classes": classes,
                                                  "folds": {str(f): a for f, a in zip(folds, accuracies, strict=True)}}))
    return run


def test_compare_tables_hold_the_numbers_of_the_runs(tmp_path):
    a = make_run(tmp_path, "small", "crnn", [0.5, 0.7])
    b = make_run(tmp_path, "tiny", "lstm", [0.9, 0.8])
    c = make_run(tmp_path, "going", "crnn", [0.6, 0.4], finished=False)
    rows = compare([a, b, c], tmp_path / "cmp")
    assert [r["run"] for r in rows] == ["tiny", "small", "going"]  # by mean accuracy
    assert rows[0]["mean"] == pytest.approx(0.85) and rows[0]["std"] == pytest.approx(0.05)
    assert rows[2]["status"].startswith("partial (1 fold") and rows[2]["folds"] == {"1": 0.6}
    with (tmp_path / "cmp" / "compare.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [t["run"] for t in table] == ["tiny", "small", "going"]
    assert float(table[1]["fold_1"]) == 0.5 and float(table[1]["fold_2"]) == 0.7
    assert float(table[1]["accuracy_mean"]) == pytest.approx(0.6)
    assert table[2]["fold_2"] == ""
    # macro-F1 pooled from the predictions of both folds (12 of 20 right for "small").
    labels, predicted = _pooled(a)
    assert (labels == predicted).sum() == 12
    assert float(table[1]["macro_f1"]) == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-4)
    assert float(table[0]["epoch_seconds"]) == pytest.approx(3.5)  # median of 3, 3, 4, 4 s epochs
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| tiny | lstm |" in md and "85.0 ± 5.0" in md
    page = Page((tmp_path / "cmp" / "compare.html").read_text())
    assert len(page.images) == 1 and page.images[0]["src"].startswith("data:image/png;base64,")
    assert "85.0 ± 5.0" in page.cells and (tmp_path / "cmp" / "compare.png").stat().st_size > 1000


def _pooled(run):
    preds = RunDir(run).predictions()
    return preds.labels, preds.predicted


def test_compare_joins_one_experiment_split_over_folds(tmp_path):
    # Fold 1 in one session, folds 2-5 in the next (on another device): one 5-fold row.
    first = make_run(tmp_path, "crnn-f1", "crnn", [0.5])
    rest = make_run(tmp_path, "crnn-f2345", "crnn", [0.7, 0.6, 0.8, 0.9], first_fold=2, **{"train.device": "cpu"})
    repeat = make_run(tmp_path, "again-f1", "crnn", [0.4])  # fold 1 again: a run of its own
    longer = make_run(tmp_path, "longer-f2", "crnn", [0.3], epochs=3, first_fold=2)  # other settings
    rows = compare([first, rest, repeat, longer], tmp_path / "cmp")
    assert [r["run"] for r in rows] == ["crnn-{f1,f2345}", "again-f1", "longer-f2"]
    joined = rows[0]
    assert joined["folds"] == {"1": 0.5, "2": 0.7, "3": 0.6, "4": 0.8, "5": 0.9}
    accs = [0.5, 0.7, 0.6, 0.8, 0.9]
    assert joined["mean"] == pytest.approx(np.mean(accs)) and joined["std"] == pytest.approx(np.std(accs))
    assert joined["status"] == "complete (2 runs)"
    labels = np.concatenate([_pooled(first)[0], _pooled(rest)[0]])
    predicted = np.concatenate([_pooled(first)[1], _pooled(rest)[1]])
    assert len(labels) == 50
    assert joined["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert joined["epoch_seconds"] == pytest.approx(5.0)  # median of 3, 3, 4, 4, ..., 7, 7 s
    # A part still running makes the row partial and says which part.
    going = make_run(tmp_path, "going-f2", "crnn", [0.6, 0.6], first_fold=2, finished=False)
    rows = compare([repeat, going], tmp_path / "cmp2")
    assert rows[0]["run"] == "again-f1 + going-f2" and sorted(rows[0]["folds"]) == ["1", "2"]
    assert rows[0]["status"] == "again-f1: complete; going-f2: partial (1 fold finished)"


@pytest.mark.parametrize(("names", "joined"), [
    (["kumar-f1-10ep", "kumar-f2345-10ep"], "kumar-{f1,f2345}-10ep"),
    (["best-f1", "best-f2", "best-f3"], "best-{f1,f2,f3}"),
    (["f1-cnn", "f2345-cnn"], "{f1,f2345}-cnn"),
    (["r1-a", "r2-b"], "r1-a + r2-b"),  # the shared "r" is no whole word
    (["run", "run-2"], "run + run-2"),  # the shared "run" ends at no separator
])
def test_joined_name_braces_the_words_that_differ(names, joined):
    assert joined_name(names) == joined


def test_comparison_chart_makes_room_for_long_run_names(tmp_path):
    # A 7-inch chart could not fit a 130-character name: matplotlib warned and clipped it.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_comparison(["r" * 130, "short"], [0.8, 0.5], [0.02, 0.03], tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_compare_and_report_refuse_what_is_not_a_usable_run(tmp_path):
    a = make_run(tmp_path, "a", "crnn", [0.5, 0.7])
    other = make_run(tmp_path, "other", "crnn", [0.5, 0.7], classes=["x", "y", "z"])
    with pytest.raises(EscnetError, match="classes differ"):
        compare([a, other], tmp_path / "cmp")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EscnetError, match="not an escnet run"):
        RunDir(tmp_path / "empty").require_finished()
    fresh = make_run(tmp_path, "fresh", "crnn", [0.5], finished=False)
    with pytest.raises(EscnetError, match=r"no finished fold yet \(fold 1 at epoch 1/2"):
        RunDir(fresh).require_finished()


def test_cli_report_and_compare_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "config.yaml").write_text("model: crnn\nnum_epochs: 2\n")
    run = make_run(tmp_path, "small", "crnn", [0.5, 0.7])
    taken = tmp_path / "notes.txt"
    taken.write_text("a file where the output folder should go")
    for args, needle in ((["report", str(tmp_path / "empty")], "not an escnet run"),
                         (["compare", str(tmp_path / "nope")], "no such run folder"),
                         (["compare", str(taken)], "a file, not a run folder"),
                         (["compare", str(run), "--out", str(taken)], "exists and is not a folder"),
                         (["compare", str(tmp_path / "flat")], "written by an older escnet"),
                         (["compare", str(run), str(run)], "the same run as"),
                         (["compare", str(run), f"{tmp_path}/../{tmp_path.name}/small"], "the same run as"),
                         (["benchmark", "--models", "crnn,resnet", "--data", str(tmp_path)], "resnet"),
                         (["benchmark", "--models", "crnn,lstm,crnn", "--data", str(tmp_path)],
                          "models: crnn named twice")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("escnet: error:") and err.count("\n") == 1 and needle in err


def test_compare_writes_its_own_folder_again_and_never_among_a_users_files(tmp_path, capsys):
    a, b = make_run(tmp_path, "a", "crnn", [0.5, 0.7]), make_run(tmp_path, "b", "lstm", [0.6, 0.8])
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    assert main(["compare", str(a), "--out", str(out)]) == 0  # a comparison's folder is written again
    assert "b" not in [r["run"] for r in csv.DictReader((out / "compare.csv").open())]
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "compare.md").write_text("my own notes")
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--out", str(mine)]) == 2
    assert "holds files escnet compare did not write" in capsys.readouterr().err
    assert (mine / "compare.md").read_text() == "my own notes" and len(list(mine.iterdir())) == 1


def test_benchmark_trains_each_model_then_compares_and_resumes(tmp_path, capsys):
    from conftest import write_esc50_like

    data = write_esc50_like(tmp_path / "d", [(f"{f}-{i}-A-{t}.wav", f, t, ".wav")
                                             for f in (1, 2) for t in (0, 1) for i in range(3)])
    args = ["benchmark", "--models", "crnn,lstm", "--data", str(data), "--epochs", "2",
            "--out", str(tmp_path / "b"), "--quiet", "--set", "data.sample_rate=8000", "--set", "features.n_fft=256",
            "--set", "features.win_length=256", "--set", "features.hop_length=64"]
    assert main(args) == 0
    with (tmp_path / "b" / "compare.csv").open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"crnn", "lstm"} and all(r["status"] == "complete" for r in rows.values())
    for name in ("crnn", "lstm"):
        summary = json.loads((tmp_path / "b" / name / "summary.json").read_text())
        assert float(rows[name]["accuracy_mean"]) == pytest.approx(summary["accuracy_mean"], abs=1e-4)
        assert rows[name]["epochs"] == "2"
    stamp = (tmp_path / "b" / "crnn" / "fold-1" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # finished runs are kept, not retrained
    assert (tmp_path / "b" / "crnn" / "fold-1" / "last.pt").stat().st_mtime_ns == stamp
