"""Reliability: a bad dataset never yields a wrong number, no traceback reaches a user, nothing
is overwritten or lost (a run killed at any moment resumes to the same numbers and files)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_flags, tone, write_esc50_like

from escnet.cli import main
from escnet.config import TaskConfig
from escnet.data.tables import load_table
from escnet.errors import DataError

CNN10 = ["--model", "cnn10", "--set", "model.args.width=4"]
SMALL = [*CNN10, *tiny_flags("--set", "train.batch_size=4", "--quiet")]


def _esc50(root: Path) -> Path:
    clips = [(f"{f}-{10 * t + i}-A-{t}.wav", f, t, ".wav") for f in (1, 2) for t in (0, 1, 2) for i in range(3)]
    return write_esc50_like(root, clips, sr=8000)


def _edit_meta(root: Path, edit) -> Path:
    meta = root / "meta" / "esc50.csv"
    rows = list(csv.reader(meta.open()))
    rows = edit(rows) or rows
    with meta.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


def _table(path: Path, **settings) -> object:
    return load_table(TaskConfig().replace({"data.data_dir": str(path), **settings}))


# --- datasets: refused naming the rows, never re-split or renamed silently -----------------

def test_dataset_mistakes_are_refused_naming_rows(tmp_path):
    cases = {
        "fold 0": (lambda rows: rows[3].__setitem__(1, "0"), "row 4: fold 0"),
        "fold 7": (lambda rows: rows[3].__setitem__(1, "7"), "fold(s) 7; ESC-50's folds are 1 to 5"),
        "fold x": (lambda rows: rows[3].__setitem__(1, "x"), "row 4: fold and target must be integers"),
        "renamed": (lambda rows: rows[3].__setitem__(3, "rooster"), "target 0 has two category names"),
        "two targets": (lambda rows: rows[3].__setitem__(2, "9"), "category 'class0' has targets 0, 9"),
        "repeated": (lambda rows: rows.append(rows[5]), "listed more than once, e.g. 1-11-A-1.wav in rows 6, 20"),
    }
    for name, (edit, words) in cases.items():
        root = _edit_meta(_esc50(tmp_path / name.replace(" ", "_")), edit)
        with pytest.raises(DataError, match=None) as err:
            _table(root)
        assert words in str(err.value), (name, str(err.value))


def test_csv_folds_labels_and_tiny_folds(tmp_path):
    root = _esc50(tmp_path / "d")
    rows = [(f"d/audio/{p.name}", f"c{p.stem[-1]}", p.name[0]) for p in sorted((root / "audio").iterdir())]

    def write(name, body):
        path = tmp_path / name
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([("path", "label", "fold"), *body])
        return path

    assert len(_table(write("ok.csv", rows))) == 18
    for name, body, words in [
        ("zero.csv", [*rows[:-1], (*rows[-1][:2], "0")], "row 19: fold 0"),
        ("blank.csv", [*rows[:-1], (*rows[-1][:2], "")], "row 19: fold '' is not an integer"),
        ("dup.csv", [*rows, rows[0]], "listed more than once"),
        ("nolabel.csv", [*rows[:-1], (rows[-1][0], "", "2")], "row 19: empty label"),
    ]:
        with pytest.raises(DataError) as err:
            _table(write(name, body))
        assert words in str(err.value), (name, str(err.value))
    # a stray fold: refused, or with the setting kept with a warning (never a one-clip "fold")
    stray = write("stray.csv", [*rows[:-1], (*rows[-1][:2], "3")])
    with pytest.raises(DataError, match="fold 3 holds 1 clip"):
        _table(stray)
    table = _table(stray, **{"data.allow_uneven_folds": True})
    assert table.fold_ids == [1, 2, 3] and any("warning: " in n and "fold 3" in n for n in table.notes)
    # a class with one clip in the whole set is trained with a warning that says so
    sf.write(root / "parrot.wav", tone(900, 8000, 1.0), 8000)
    lonely = write("lonely.csv", [*rows, ("d/parrot.wav", "parrot", "1")])
    assert any("single clip" in n and "parrot" in n for n in _table(lonely).notes)


def test_class_folders_win_over_a_file_that_parses_as_an_esc50_name(tmp_path):
    for name in ("bird", "car", "dog"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for i in range(5):
            sf.write(tmp_path / "tree" / name / f"{name}{i}.wav", tone(300 + 50 * i, 8000, 0.3), 8000)
    sf.write(tmp_path / "tree" / "dog" / "1-100-A-0.wav", tone(300, 8000, 0.3), 8000)
    table = _table(tmp_path / "tree")
    assert table.classes == ["bird", "car", "dog"] and len(table) == 16
    assert table.notes[0].startswith(f"dataset {tmp_path / 'tree'}: one subfolder per class; 16 clips")


# --- the CLI corpus: one line, exit 2, nothing changed outside the run ---------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A finished tiny run, another model's run, and files of the wrong kind."""
    root = tmp_path_factory.mktemp("corpus")
    data = _esc50(root / "data")
    for out, model in (("run", CNN10), ("other", ["--model", "crnn"])):
        assert main(["train", "--data", str(data), "--out", str(root / out), *model, *SMALL[len(CNN10):],
                     "--epochs", "1"]) == 0
    (root / "empty.pt").write_bytes(b"")
    torch.save({"hello": 1}, root / "keyless.pt")
    sf.write(root / "audio.pt", tone(300, 8000, 0.5), 8000, format="WAV")
    (root / "text.onnx").write_text("not a model")
    (root / "bad.yaml").write_bytes(b"\xff\xfe\x00garbage: [")
    (root / "binary.toml").write_bytes(bytes(range(256)))
    (root / "absurd.yaml").write_text("train:\n  batch_size: 99999999999\n")
    (root / "afile").write_text("a file, not a folder")
    (root / "mine").mkdir()
    (root / "mine" / "metrics.json").write_text('{"mine": true}')
    (root / "adopt" / "fold-1").mkdir(parents=True)  # a checkpoint but no config.yaml
    shutil.copy(root / "run" / "fold-1" / "last.pt", root / "adopt" / "fold-1" / "last.pt")
    for name, change in {
        "swapped": lambda r: shutil.copy(root / "other" / "fold-1" / "last.pt", r / "fold-1" / "last.pt"),
        "fold-swapped": lambda r: shutil.copy(r / "fold-2" / "last.pt", r / "fold-1" / "last.pt"),
        "bad-summary": lambda r: (r / "summary.json").write_text('{"folds": '),
        "list-summary": lambda r: (r / "summary.json").write_text("[1, 2]"),
        "cut-checkpoint": lambda r: ((r / "fold-2" / "last.pt").write_bytes((r / "fold-2" / "last.pt").read_bytes()[:3000]),
                                     (r / "fold-2" / "predictions.csv").unlink(), (r / "summary.json").unlink()),
    }.items():
        shutil.copytree(root / "run", root / name)
        change(root / name)
    return root, data


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_every_bad_input_is_one_line_and_exit_2_with_nothing_changed(corpus, capsys):
    root, data = corpus
    clip = str(next((data / "audio").iterdir()))
    train = ["train", "--data", str(data), *SMALL, "--epochs", "1", "--out"]
    cases = [
        ([*train, str(root / "n1"), "--config", str(root / "bad.yaml")], "bad.yaml: config file is not UTF-16 text"),
        ([*train, str(root / "n2"), "--config", str(root / "binary.toml")],
         "binary.toml: line 2: config file is not UTF-8 text (byte 0x80)"),
        ([*train, str(root / "n3"), "--config", str(root / "absurd.yaml")], "train.batch_size=99999999999"),
        ([*train, str(root / "n4"), "--device", "cuda:3"], "train.device=cuda:3: this machine has"),
        ([*train, str(root / "n5"), "--set", "model.args.width=1000000"], "training needs about"),
        ([*train, str(root / "n8"), "--set", "model.args.width=1e30"], "model.args: model cnn10 cannot be built"),
        ([*train, str(root / "n9"), "--set", "augment.crop_seconds=0.05"],
         "frames (augment.crop_seconds): "),  # a crop too short for the model's pooling
        ([*train, str(root / "n6"), "--set", "features.hop_length=256", "--set", "data.clip_seconds=0.1"],
         "cannot take log-mels"),
        ([*train, str(root / "n7"), "--lr", "inf"], "train.learning_rate"),
        ([*train, str(root / "mine")], "not empty and not an escnet run"),
        ([*train, str(root / "afile")], "exists and is not a folder"),
        ([*train, str(root / "run")], "already holds a run"),
        (["train", "--resume", str(root / "adopt")], "not an escnet run (no config.yaml)"),
        (["train", "--resume", str(root / "cut-checkpoint")], "cut-checkpoint/fold-2/last.pt: not an escnet checkpoint"),
        (["evaluate", str(root / "swapped")], "not this run's checkpoint (its model"),
        (["evaluate", str(root / "fold-swapped")], "not this run's checkpoint (it is fold 2's"),
        (["evaluate", str(root / "bad-summary")], "bad-summary/summary.json: damaged"),
        (["report", str(root / "list-summary")], "list-summary/summary.json: damaged"),
        (["compare", str(root / "run"), str(root / "bad-summary"), "--out", str(root / "cmp")],
         "bad-summary/summary.json: damaged"),
        (["predict", "--model", str(root / "empty.pt"), clip], "empty.pt: not an escnet checkpoint"),
        (["predict", "--model", str(root / "keyless.pt"), clip], "keyless.pt: not an escnet checkpoint"),
        (["predict", "--model", str(root / "audio.pt"), clip], "audio.pt: not an escnet checkpoint"),
        (["predict", "--model", str(root / "text.onnx"), clip], "text.onnx: not a readable ONNX model"),
        (["predict", "--model", str(root / "data"), clip], "no fold-*/last.pt checkpoints"),
        (["predict", "--model", str(root / "run"), "--device", "cuda", clip], "--device cuda: this machine has"),
        (["predict", "--model", str(root / "run"), "--silence-db", "10", clip], "must be below 0 dBFS"),
        (["predict", "--model", str(root / "run"), "--threads", "100000", clip], "--threads 100000: must be 1 to"),
        (["download", "esc50", "--root", str(root / "afile"), "--url", "http://127.0.0.1:9/x.zip"],
         "afile: exists and is not a folder"),
    ]
    before = _snapshot(root)
    for args, words in cases:
        code = main(args)
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("escnet: error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0], (args, err)
        assert "Traceback" not in err
    assert _snapshot(root) == before  # no file changed, added or removed anywhere
    assert not any((root / f"n{i}").exists() for i in range(1, 8))  # no run folder left behind


# --- kill at any moment, resume, same numbers and every file ------------------------------

KILLER = """
import os, signal, sys
import escnet.runs.rundir as runs
from escnet.cli import main

point, count = sys.argv[1], int(sys.argv[2])
calls = [0]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def hit():
    calls[0] += 1
    return calls[0] == count


if point == "epoch":  # after an epoch's log and checkpoints are saved
    real_save = runs.RunDir.save_epoch

    def save_epoch(*args, **kwargs):
        real_save(*args, **kwargs)
        if hit():
            die()
    runs.RunDir.save_epoch = save_epoch
elif point == "metrics":  # a fold's predictions.csv is written, its metrics files not yet
    real_metrics = runs.write_metrics

    def write_metrics(folder, preds, *figures):
        if folder.name.startswith("fold-") and hit():
            die()
        return real_metrics(folder, preds, *figures)
    runs.write_metrics = write_metrics
else:  # in the middle of writing a file: its temporary file is full, not yet renamed
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").split("/")[-1].startswith(f".{point}.tmp") and hit():
            die()
        real_fsync(fd)
    os.fsync = fsync
sys.exit(main(sys.argv[3:]))
"""

DERIVED = ("metrics.json", "per_class.csv", "confusion.csv")


def _results(run: Path) -> dict[str, object]:
    """Everything a run's numbers are: per-fold predictions and metrics, the pooled metrics, the
    summary's accuracies, each epoch's losses and accuracies (not their timings)."""
    out: dict[str, object] = {}
    for folder in (run, *sorted(run.glob("fold-*"))):
        where = "." if folder == run else folder.name
        for name in (*DERIVED, "predictions.csv"):
            if folder != run or name != "predictions.csv":
                out[f"{where}/{name}"] = (folder / name).read_text()
        if folder != run:
            out[f"{folder.name}/epochs"] = [{k: v for k, v in json.loads(line).items()
                                             if not k.endswith("seconds")}
                                            for line in (folder / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    out["summary"] = (summary["status"], summary["folds"], summary["accuracy_mean"])
    assert not list(run.rglob(".*.tmp*")), "a temporary file was left in the run"
    return out


def test_a_run_killed_at_any_moment_resumes_to_the_same_numbers_and_files(tmp_path):
    data = _esc50(tmp_path / "data")
    args = ["train", "--data", str(data), *SMALL, "--epochs", "3", "--lr", "0.01"]
    env_cmd = [sys.executable, "-c", KILLER]
    reference = tmp_path / "reference"
    assert main([*args, "--out", str(reference)]) == 0
    expected = _results(reference)
    # a kill mid-training, mid-checkpoint, between folds and at the very end (every file escnet
    # writes goes through the same atomic write: one moment of each kind is enough)
    moments = [("last.pt", 3),  # writing fold 1's last checkpoint
               ("summary.json", 1),  # writing the summary after fold 1
               ("epoch", 5),  # fold 2, mid-training
               ("metrics.json", 4)]  # writing the pooled metrics at the very end
    for point, count in moments:
        run = tmp_path / f"{point}-{count}"
        killed = subprocess.run([*env_cmd, point, str(count), *args, "--out", str(run)],
                                capture_output=True, text=True, timeout=300)
        assert killed.returncode == -9, (point, count, killed.stderr[-2000:])
        resumed = subprocess.run([*env_cmd, "none", "0", "train", "--resume", str(run), "--quiet"],
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, (point, count, resumed.stderr[-2000:])
        assert _results(run) == expected, (point, count)
        assert np.isclose(json.loads((run / "summary.json").read_text())["accuracy_mean"],
                          expected["summary"][2])


# --- round two: no silent wrong number, no traceback, no orphan ----------------------------

def test_config_files_with_repeated_keys_aliases_or_absurd_seeds_are_refused(tmp_path, capsys):
    data = _esc50(tmp_path / "data")
    files = {
        "twice.yaml": ("train:\n  seed: 1\n  seed: 2\n", "line 3: key 'seed' given twice"),
        "laughs.yaml": ('a: &a ["lol","lol"]\nb: &b [*a,*a]\ntrain: {seed: 1}\n', "aliases (*name) are not allowed"),
        "huge.toml": ("[train]\nseed = 1e30\n", "train.seed"),
    }
    for name, (text, words) in files.items():
        (tmp_path / name).write_text(text)
        code = main(["train", "--data", str(data), *SMALL, "--config", str(tmp_path / name),
                     "--out", str(tmp_path / name.split(".")[0])])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, (name, err)
    for seed in ("20000000000000", "-1"):
        code = main(["train", "--data", str(data), *SMALL, "--seed", seed, "--out", str(tmp_path / "s")])
        err = capsys.readouterr().err
        assert code == 2 and "setting train.seed" in err and "Traceback" not in err, err
        assert not (tmp_path / "s").exists()  # refused before any folder is made


def test_labels_one_sound_named_twice_and_folders_escnet_cannot_read(tmp_path):
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", tone(300 + 100 * i, 8000, 0.3), 8000)
    (tmp_path / "t.csv").write_text("\ufeffpath,label\n0.wav,dog\n1.wav,Dog \n2.wav,cat\n", encoding="utf-8")
    with pytest.raises(DataError, match="labels 'Dog ' and 'dog' look the same"):
        _table(tmp_path / "t.csv")
    # invisible and other-form twins: zero-width space, bidirectional mark, no-break space,
    # a ligature and a decomposed accent (NFKC), a soft hyphen
    for twin, name in (("do\u200bg", "dog"), ("\u200edog", "dog"), ("hot\u00a0dog", "hot dog"),
                       ("\ufb01sh", "fish"), ("cafe\u0301", "caf\u00e9"), ("dog\u00ad", "dog")):
        (tmp_path / "twin.csv").write_text(f"path,label\n0.wav,{name}\n1.wav,{twin}\n2.wav,cat\n",
                                           encoding="utf-8")
        with pytest.raises(DataError, match="look the same"):
            _table(tmp_path / "twin.csv")
    (tmp_path / "one.csv").write_text("path,label\n0.wav,dog\n1.wav,dog\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"1 class \(dog\).*a classifier tells two or more apart"):
        _table(tmp_path / "one.csv")
    (tmp_path / "ok.csv").write_text("\ufeffpath,label\n0.wav,dog\n2.wav,cat\n", encoding="utf-8")
    assert _table(tmp_path / "ok.csv").classes == ["cat", "dog"]  # a byte-order mark is no column name
    # as spreadsheets save it: "Unicode text" (UTF-16, tabs), semicolons; another encoding is named
    (tmp_path / "u16.csv").write_text("path\tlabel\n0.wav\tdog\n2.wav\tcat\n", encoding="utf-16")
    (tmp_path / "semi.csv").write_text("path;label\n0.wav;dog\n2.wav;cat\n")
    for name in ("u16.csv", "semi.csv"):
        assert _table(tmp_path / name).classes == ["cat", "dog"], name
    (tmp_path / "latin.csv").write_bytes(b"path,label\n0.wav,dog\n2.wav,chat\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv: line 3: dataset CSV is not UTF-8 text"):
        _table(tmp_path / "latin.csv")
    tree = tmp_path / "tree"
    for name in ("bird", "car"):
        (tree / name).mkdir(parents=True)
        for i in range(3):
            sf.write(tree / name / f"{i}.wav", tone(300 + 50 * i, 8000, 0.3), 8000)
    (tree / "empty").mkdir()  # a folder with nothing in it is no class
    assert _table(tree).classes == ["bird", "car"]
    (tree / "phone").mkdir()
    (tree / "phone" / "a.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A ")
    with pytest.raises(DataError, match=r"phone: 1 file\(s\), none in a format escnet reads \(\.m4a"):
        _table(tree)


def _wav_bytes(x: np.ndarray, rate: int) -> bytearray:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return bytearray(buf.getvalue())


def test_predict_keeps_going_past_hostile_files(corpus, tmp_path, capsys):
    import struct

    root, _ = corpus
    good = tone(440, 8000, 1.0)
    streamed = _wav_bytes(good, 8000)  # a length streaming writers leave unknown: decoded
    at = streamed.find(b"data")
    streamed[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)
    streamed[4:8] = struct.pack("<I", 0xFFFFFFFF)
    (tmp_path / "streamed.wav").write_bytes(streamed)
    fast = _wav_bytes(good, 8000)
    fast[24:28] = struct.pack("<I", 1_000_000_000)  # a header claiming 1 GHz
    (tmp_path / "ghz.wav").write_bytes(fast)
    sf.write(tmp_path / "huge.wav", (good * 2e30).astype(np.float32), 8000, subtype="FLOAT")
    files = [str(tmp_path / n) for n in ("ghz.wav", "huge.wav", "streamed.wav")]
    code = main(["predict", "--model", str(root / "run"), *files, "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err
    assert "ghz.wav: its header says 1000000000 Hz" in err
    assert "huge.wav: samples reach 1e+30, far beyond full scale" in err
    results = json.loads(out)  # the readable file's result is printed, as valid JSON
    assert [r["file"] for r in results] == [files[2]] and results[0]["duration"] == 1.0


def test_unfinished_folds_are_never_shipped_or_averaged_in_silently(corpus, tmp_path, capsys, caplog):
    root, data = corpus
    run = tmp_path / "half"
    shutil.copytree(root / "run", run)
    # fold 2 back to "killed after its epoch 0": no predictions, a history of no epoch
    (run / "fold-2" / "predictions.csv").unlink()
    (run / "fold-2" / "metrics.jsonl").write_text("")
    clip = str(next((data / "audio").iterdir()))
    assert main(["export", str(run), "--fold", "2", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "--fold 2: fold 2 at epoch 0/1, unfinished; resume the run" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    with caplog.at_level("WARNING", logger="escnet"):
        assert main(["predict", "--model", str(run), clip]) == 0
    assert any("using the finished folds 1; left out fold 2 at epoch 0/1" in r.message for r in caplog.records)
    (run / "fold-1" / "predictions.csv").unlink()
    assert main(["predict", "--model", str(run), clip]) == 2
    assert "no fold has finished training" in capsys.readouterr().err


def test_an_onnx_file_whose_graph_is_not_its_metadata_is_refused(five_class_exports, tmp_path):
    import onnx

    from escnet.deploy.onnx_model import OnnxModel
    from escnet.errors import CheckpointError

    proto = onnx.load(str(five_class_exports[0].path))
    for prop in proto.metadata_props:
        if prop.key == "escnet.classes":
            prop.value = json.dumps(["a", "b", "c"])
    onnx.save(proto, str(tmp_path / "lying.onnx"))
    with pytest.raises(CheckpointError, match="its graph's outputs do not match its metadata"):
        OnnxModel(tmp_path / "lying.onnx")


def test_a_cache_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A file-size limit stands in for a full disk: the cache's space is reserved before it is
    filled, so the write fails at once with a message instead of SIGBUS halfway."""
    data = _esc50(tmp_path / "data")
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from escnet.cli import main\n"
        f"sys.exit(main(['train', '--data', {str(data)!r}, '--out', {str(tmp_path / 'r')!r}, "
        f"'--set', 'data.cache_dir={tmp_path / 'cache'}', *{SMALL!r}]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "no room for a" in done.stderr and "ESCNET_CACHE" in done.stderr
    assert not list((tmp_path / "cache").glob("*partial*"))


def test_one_run_folder_one_writer(corpus, tmp_path, capsys):
    from escnet.runs import RunDir

    root, _ = corpus
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    with RunDir(run).lock():
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
        assert main(["calibrate", str(run), "--quiet"]) == 2
    assert main(["train", "--resume", str(run), "--quiet"]) == 0  # free again once released


def test_a_fold_worker_dies_with_its_parent(tmp_path):
    """``kill -9`` of the process that started a fold worker: the worker is gone within seconds."""
    parent = (
        "import subprocess, sys, os\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, time; "
        "from escnet.engine.fold_worker import die_with_parent; "
        "die_with_parent(0.1); time.sleep(60)'], "
        "env={**os.environ, 'ESCNET_PARENT_PID': str(os.getpid())})\n"
        "print(child.pid, flush=True)\n"
        "import time; time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    time.sleep(1.0)
    os.kill(child, 0)  # alive while its parent is
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, 9)
    raise AssertionError("the worker outlived its parent by 5 s")


def test_audio_whose_container_misleads(tmp_path):
    """Joined MP3 streams are refused (libsndfile would decode only the first); an MP3 with no
    audio is called that, not "missing"; a FLAC stream of unknown length is decoded whole."""
    from escnet.data.audio import AudioFile, load_audio
    from escnet.errors import UnreadableAudioError

    x = tone(440, 16000, 2.0)
    sf.write(tmp_path / "a.mp3", x, 16000, format="MP3")
    (tmp_path / "ab.mp3").write_bytes((tmp_path / "a.mp3").read_bytes() * 2)  # cat a.mp3 a.mp3
    with AudioFile(tmp_path / "a.mp3") as one:
        assert one.duration == 2.0
    for source in (tmp_path / "ab.mp3", (tmp_path / "ab.mp3").read_bytes()):
        with pytest.raises(UnreadableAudioError, match="2 MP3 streams one after another"):
            AudioFile(source, name="ab.mp3")
    (tmp_path / "tag.mp3").write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10))
    with pytest.raises(UnreadableAudioError, match="no audio stream libsndfile recognises"):
        AudioFile(tmp_path / "tag.mp3")
    sf.write(tmp_path / "f.flac", x, 16000, format="FLAC")
    flac = bytearray((tmp_path / "f.flac").read_bytes())
    info = int.from_bytes(flac[18:26], "big") & ~((1 << 36) - 1)  # STREAMINFO's total: "unknown"
    flac[18:26] = info.to_bytes(8, "big")
    (tmp_path / "stream.flac").write_bytes(flac)
    with AudioFile(tmp_path / "stream.flac") as stream:
        assert stream.duration is None
    assert np.allclose(load_audio(tmp_path / "stream.flac", 16000), load_audio(tmp_path / "f.flac", 16000))
