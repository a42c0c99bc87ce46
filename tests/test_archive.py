"""Archives of one's own recordings (``escnet index / search / label / learn / rank / scan``).

Most tests use a small mn01 trained for a few epochs on synthetic tones (no weights needed):
its embeddings tell a 500 Hz tone from a 2 kHz one and from noise, which is all the archive's
machinery needs to be checked against known answers. The real AudioSet model on real ESC-50
clips is checked in ``test_real_sounds_are_found_learned_and_scanned``."""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import WEIGHTS, tiny_config, tone

from escnet.archive.db import Archive
from escnet.archive.index import index_folder
from escnet.cli import main

RATE = 8000


@pytest.fixture(scope="session")
def tone_model(tmp_path_factory) -> Path:
    """A run of mn01 (1 s windows at 8 kHz) taught three classes: a 500 Hz tone, a 2 kHz tone,
    noise; trained for 300 steps, which its BatchNorm statistics (momentum 0.01) need."""
    from escnet.engine.train import train

    root = tmp_path_factory.mktemp("tones")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(108):
        kind = i % 3
        wav = rng.standard_normal(RATE).astype(np.float32) * 0.05
        if kind < 2:
            wav += tone((500, 2000)[kind], RATE, 1.0, amp=0.3 + 0.2 * rng.random())
        sf.write(root / "audio" / f"{i}.wav", wav, RATE)
        rows.append((f"audio/{i}.wav", ("low", "high", "noise")[kind], 1 if i < 12 else 2))
    with (root / "clips.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "fold"), *rows])
    config = tiny_config(**{"data.data_dir": str(root / "clips.csv"), "data.folds": [1],
                            "model.name": "mn01", "train.num_epochs": 25, "data.allow_uneven_folds": True, "train.learning_rate": 3e-3,
                            "train.batch_size": 8,
                            "augment.waveform": [], "augment.spec_augment": False})
    out = tmp_path_factory.mktemp("runs") / "tones"
    train(config, out, progress=False)
    return out


def scene(path: Path, events: list[tuple[int, float, float]], seconds: float = 12.0, seed: int = 0) -> None:
    """A recording of quiet noise with ``(Hz, start, end)`` tones in it."""
    rng = np.random.default_rng(seed)
    wav = rng.standard_normal(int(seconds * RATE)).astype(np.float32) * 0.02
    for freq, start, end in events:
        a, b = int(start * RATE), int(end * RATE)
        wav[a:b] += tone(freq, RATE, (b - a) / RATE, amp=0.4)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, RATE)


@pytest.fixture
def recordings(tmp_path) -> Path:
    """Three recordings (one in a subfolder, one FLAC), 500 Hz tones at known windows, 2 kHz
    tones elsewhere, and a file that is not audio."""
    folder = tmp_path / "field"
    scene(folder / "a.wav", [(500, 2, 3), (2000, 6, 7)])
    scene(folder / "site" / "b.wav", [(500, 4, 5), (500, 9, 10)], seed=1)
    scene(folder / "c.flac", [(2000, 1, 2), (500, 7, 8)], seed=2)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    return folder


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def archive(recordings, tone_model, tmp_path) -> Path:
    db = tmp_path / "db"
    index_folder(recordings, db, str(tone_model), workers=1)
    return db


LOW = {("a.wav", 2.0), ("site/b.wav", 4.0), ("site/b.wav", 9.0), ("c.flac", 7.0)}
"""Windows (file, start) holding the 500 Hz tone."""


def test_index_records_every_window_and_lists_what_it_cannot_read(recordings, tone_model, tmp_path, capsys):
    db = tmp_path / "db"
    code, out, err = cli(capsys, "index", str(recordings), "--db", str(db), "--model", str(tone_model),
                         "--workers", "2", "--quiet")
    assert code == 0, err
    assert "indexed 3 file(s), 0.01 h" in out and "1 unreadable" in out
    assert "unreadable, left out: broken.wav" in err
    archive = Archive(db)
    summary = archive.summary()
    assert summary["files"] == 4 and summary["unreadable"] == 1 and summary["windows"] == 36
    assert summary["window"] == 1.0 and summary["hop"] == 1.0
    spans = {(w.file, w.start, w.end) for w in archive.windows(archive.alive()).values()}
    assert ("site/b.wav", 11.0, 12.0) in spans and ("c.flac", 0.0, 1.0) in spans
    vectors = archive.vectors()
    assert vectors.shape == (36, archive.dim) and vectors.dtype == np.float16 and np.isfinite(vectors).all()
    # the 500 Hz windows are nearer each other than any other window
    low = [w.id for w in archive.windows(archive.alive()).values() if (w.file, w.start) in LOW]
    sims = (lambda v: v @ v.T)(vectors.astype(np.float32) / np.linalg.norm(vectors.astype(np.float32), axis=1,
                                                                              keepdims=True))
    others = np.setdiff1d(archive.alive(), low)
    assert sims[np.ix_(low, low)].min() > sims[np.ix_(low, others)].max()
    assert archive.meta["model"] == str(tone_model.resolve()) and len(archive.meta["sha256"]) == 64


def test_names_that_are_not_utf8_or_hold_a_newline_are_listed_on_one_line_each(recordings, tone_model,
                                                                              tmp_path, capsys):
    latin1 = recordings / os.fsdecode(b"caf\xe9.wav")  # a name a Latin-1 system wrote
    try:
        shutil.copy(recordings / "a.wav", latin1)
    except OSError:
        pytest.skip("this file system takes only UTF-8 names")
    (recordings / "new\nline.wav").write_bytes(b"not audio")
    code, out, err = cli(capsys, "index", str(recordings), "--db", str(tmp_path / "db"), "--model",
                         str(tone_model), "--quiet")
    assert code == 0 and "indexed 3 file(s)" in out and "3 unreadable" in out, err
    lines = err.splitlines()
    assert "escnet: unreadable, left out: caf\\xe9.wav: its name is not UTF-8 text" in lines[0], lines
    assert any(ln.startswith("escnet: unreadable, left out: new\\nline.wav: ") for ln in lines), lines
    assert len(lines) == 3  # broken.wav, and one line each
    # outside an archive such a recording is read like any other, and a bad one is named on one line
    code, out, err = cli(capsys, "predict", "--model", str(tone_model), str(latin1), str(recordings / "new\nline.wav"))
    assert code == 2 and out.count("caf") >= 1
    assert err.splitlines()[0].endswith("new\\nline.wav: not a readable audio file (Format not recognised.)")


def test_two_workers_index_what_one_does(recordings, tone_model, tmp_path):
    one = index_folder(recordings, tmp_path / "one", str(tone_model), workers=1)
    two = index_folder(recordings, tmp_path / "two", str(tone_model), workers=2)
    assert one.indexed == two.indexed == 3
    a, b = Archive(tmp_path / "one"), Archive(tmp_path / "two")
    key = {w.id: (w.file, w.start) for w in a.windows(a.alive()).values()}
    by_span = {(w.file, w.start): w.id for w in b.windows(b.alive()).values()}
    order = [by_span[key[i]] for i in a.alive()]
    np.testing.assert_allclose(a.vectors()[a.alive()].astype(np.float32),
                               b.vectors()[order].astype(np.float32), atol=2e-3)


def test_a_second_call_indexes_only_what_changed_and_labels_survive(archive, recordings, tone_model):
    a = Archive(archive)
    b_window = a.windows_of("site/b.wav", 4.0, 5.0)[0]
    from escnet.archive.labels import label_windows

    with a.writing():
        label_windows(a, [b_window.id], "beep")
    again = index_folder(recordings, archive, str(tone_model), workers=1)
    assert (again.indexed, again.unchanged, again.removed) == (0, 4, 0)

    (recordings / "c.flac").unlink()
    scene(recordings / "site" / "b.wav", [(500, 4, 5)], seconds=8.0, seed=5)  # changed: shorter
    scene(recordings / "new" / "d.wav", [(2000, 0, 1)], seconds=3.0)
    (recordings / "broken.wav").write_bytes(b"still not audio, but changed")
    report = index_folder(recordings, archive, str(tone_model), workers=1)
    assert (report.indexed, report.unchanged, report.removed, len(report.unreadable)) == (2, 1, 1, 1)
    a = Archive(archive)
    assert sorted(a.files()) == ["a.wav", "broken.wav", "new/d.wav", "site/b.wav"]
    assert a.summary()["windows"] == 12 + 8 + 3
    assert b_window.id not in a.windows([b_window.id])  # the changed file's old windows are gone
    relabelled = a.labelled_windows("beep")  # the label, kept by span, covers the new window
    assert [a.windows(relabelled)[i].start for i in relabelled] == [4.0]


def test_a_killed_writer_leaves_whole_files_and_the_next_call_continues(archive, recordings, tone_model):
    a = Archive(archive)
    rows = a.rows
    with (archive / Archive.VECTORS).open("ab") as f:  # what a writer killed mid-file appended
        f.write(np.ones((5, a.dim), np.float16).tobytes())
    report = index_folder(recordings, archive, str(tone_model), workers=1)
    assert report.indexed == 0
    assert (archive / Archive.VECTORS).stat().st_size == rows * a.dim * 2
    scene(recordings / "e.wav", [], seconds=2.0)
    index_folder(recordings, archive, str(tone_model), workers=1)
    a = Archive(archive)
    e = a.windows_of("e.wav")
    assert [w.id for w in e] == [rows, rows + 1] and a.rows == rows + 2


def test_index_killed_by_a_signal_is_continued(recordings, tone_model, tmp_path):
    """A real kill: the process is stopped with SIGKILL while it writes; the next call ends
    with every file indexed once."""
    for n in range(6):
        scene(recordings / "more" / f"{n}.wav", [(500, 1, 2)], seconds=30.0, seed=n)
    db = tmp_path / "db"
    code = (f"import sys; from escnet.cli import main; sys.exit(main(['index', {str(recordings)!r}, "
            f"'--db', {str(db)!r}, '--model', {str(tone_model)!r}, '--workers', '1', '--quiet']))")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # until some files are in
            if (db / Archive.SQLITE).exists():
                try:
                    if sqlite3.connect(db / Archive.SQLITE).execute(
                            "SELECT COUNT(*) FROM files").fetchone()[0] >= 2:
                        break
                except sqlite3.OperationalError:
                    pass
            proc.wait(timeout=0.05) if proc.poll() is not None else __import__("time").sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    report = index_folder(recordings, db, str(tone_model), workers=1)
    a = Archive(db)
    assert report.unchanged >= 2 and a.summary()["files"] == 10
    windows = a.windows(a.alive()).values()
    assert len({(w.file, w.start) for w in windows}) == len(windows) == 36 + 6 * 30


def test_two_writers_are_refused_and_readers_go_on(archive, recordings, tone_model, capsys):
    a = Archive(archive)
    with a.writing():
        code, _, err = cli(capsys, "index", str(recordings), "--db", str(archive), "--model",
                           str(tone_model), "--quiet")
        assert code == 2 and f"being written by process {os.getpid()}" in err and err.count("\n") == 1
        code, out, _ = cli(capsys, "search", str(archive), "--like", "2", "--json")  # readers are not
        assert code == 0 and json.loads(out)
    assert index_folder(recordings, archive, str(tone_model), workers=1).unchanged == 4


def test_a_full_disk_keeps_what_was_indexed(recordings, tone_model, tmp_path):
    """Writes past a file-size limit fail as on a full disk: one line, exit 2, the files done
    before kept; the next call (with room again) finishes."""
    db = tmp_path / "db"
    index_folder(recordings / "site", db, str(tone_model), workers=1)  # made, with room
    scene(recordings / "site" / "big.wav", [(500, 3, 4)], seconds=600.0)
    limit = 64 * 1024  # above the archive's files now, below its vectors with 600 windows more
    assert max(f.stat().st_size for f in db.iterdir()) < 48 * 1024

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "escnet", "index", str(recordings / "site"), "--db", str(db),
                           "--model", str(tone_model), "--workers", "1", "--quiet"],
                          preexec_fn=small_disk, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot write the archive" in proc.stderr and "files indexed before are kept" in proc.stderr
    a = Archive(db)
    assert sorted(a.files()) == ["b.wav"] and a.summary()["windows"] == 12
    report = index_folder(recordings / "site", db, str(tone_model), workers=1)
    assert report.indexed == 1 and Archive(db).summary()["windows"] == 12 + 600


def test_two_workers_index_shards_that_one_archive_merges(recordings, tone_model, tmp_path, capsys):
    """The recipe beyond one machine: each job of an array indexes its part of the files into an
    archive of its own (here two processes at once), then one archive merges them."""
    for n in range(4):
        scene(recordings / "more" / f"{n}.wav", [(2000, n, n + 1)], seconds=6.0, seed=10 + n)
    jobs = [subprocess.Popen([sys.executable, "-m", "escnet", "index", str(recordings), "--db",
                              str(tmp_path / f"shard{k}"), "--model", str(tone_model), "--shard", f"{k}/2",
                              "--workers", "1", "--quiet"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    for job in jobs:
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
    parts = [set(Archive(tmp_path / f"shard{k}").files()) for k in (1, 2)]
    assert parts[0] and parts[1] and not parts[0] & parts[1] and len(parts[0] | parts[1]) == 8

    code, out, err = cli(capsys, "index", str(recordings), "--db", str(tmp_path / "all"), "--model",
                         str(tone_model), "--from", str(tmp_path / "shard1"), "--from", str(tmp_path / "shard2"))
    assert code == 0, err
    assert "indexed 0 file(s)" in out and "8 merged from shards, 0 unchanged" in out
    index_folder(recordings, tmp_path / "direct", str(tone_model), workers=1)
    merged, direct = Archive(tmp_path / "all"), Archive(tmp_path / "direct")
    assert merged.unreadable() == direct.unreadable() == [("broken.wav", direct.unreadable()[0][1])]

    def by_span(a: Archive) -> dict:
        return {(w.file, w.start, w.end): np.asarray(a.vectors()[w.id], np.float32)
                for w in a.windows(a.alive()).values()}

    one, other = by_span(merged), by_span(direct)
    assert one.keys() == other.keys() and len(one) == 36 + 24
    np.testing.assert_allclose(np.stack([one[k] for k in one]), np.stack([other[k] for k in one]), atol=2e-3)
    code, _, err = cli(capsys, "index", str(recordings), "--db", str(tmp_path / "shard1"), "--model",
                       str(tone_model))
    assert code == 2 and "holds shard 1/2 of the files, not all of them" in err
    code, _, err = cli(capsys, "index", str(recordings), "--db", str(tmp_path / "new"), "--model",
                       str(tone_model), "--shard", "3/2")
    assert code == 2 and "--shard 3/2: K/N" in err


def test_search_finds_the_tone_leaves_out_the_query_and_collapses_touching_windows(archive, recordings,
                                                                                  capsys, tmp_path):
    code, out, err = cli(capsys, "search", str(archive), "--query", f"{recordings / 'a.wav'}@2-3",
                         "--top", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert [set(h) >= {"id", "file", "start", "end", "score"} for h in hits] == [True] * 3
    assert {(h["file"], h["start"]) for h in hits} == LOW - {("a.wav", 2.0)}
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"] > 0.5
    like = json.loads(cli(capsys, "search", str(archive), "--like", str(hits[0]["id"]), "--json",
                          "--top", "3")[1])
    assert hits[0]["id"] not in [h["id"] for h in like]
    assert {(h["file"], h["start"]) for h in like} <= LOW | {("a.wav", 2.0)}
    # a search for noise: of windows that touch, one each; no two results adjacent
    noise = json.loads(cli(capsys, "search", str(archive), "--query", f"{recordings / 'a.wav'}@9-12",
                           "--top", "10", "--json")[1])
    for i, h in enumerate(noise):
        for g in noise[:i]:
            assert h["file"] != g["file"] or h["start"] > g["end"] or g["start"] > h["end"]
    code, out, _ = cli(capsys, "search", str(archive), "--query", str(recordings / "site" / "b.wav"))
    assert code == 0 and out.splitlines()[0].split() == ["id", "score", "start", "end", "file"]
    # a recording whose own name holds "@" is that recording, not a span of another
    named, plain = tmp_path / "a@2-3.wav", tmp_path / "a.wav"
    shutil.copy(recordings / "a.wav", named)
    shutil.copy(recordings / "a.wav", plain)
    whole = cli(capsys, "search", str(archive), "--query", str(plain), "--json")[1]
    code, out, err = cli(capsys, "search", str(archive), "--query", str(named), "--json")
    assert code == 0, err
    assert [h["id"] for h in json.loads(out)] == [h["id"] for h in json.loads(whole)]


@pytest.mark.parametrize("args, needle", [
    (["search", "{db}", "--query", "{rec}/a.wav@10-20"], "a.wav@10-20: the span ends at 20 s, but the "
                                                          "recording is 12.00 s long"),
    (["search", "{db}", "--query", "{rec}/a.wav@3-2"], "a span is START-END seconds with END after START"),
    (["search", "{db}", "--query", "{rec}/a.wav@1.2.3-4"], "a.wav@1.2.3-4: a span is START-END seconds"),
    (["search", "{db}", "--query", "{rec}/a.wav@nan-inf"], "a span is START-END seconds"),
    (["search", "{db}", "--query", "{rec}/a.wav@.-."], "a span is START-END seconds"),
    (["search", "{db}", "--query", "{rec}/broken.wav"], "broken.wav"),
    (["search", "{db}", "--like", "99999"], "window 99999: not in"),
    (["search", "{db}", "--like", "1", "--top", "0"], "--top 0: 1 to 10000"),
    (["search", "{db}"], "give one of --query"),
    (["search", "{rec}"], "no escnet archive here"),
    (["label", "{db}", "1", "99999", "--label", "beep"], "window 99999: not in"),
    (["label", "{db}", str(10**21), "--label", "beep"], f"window {10**21}: not in"),  # past SQLite's ints
    (["search", "{db}", "--like", str(-10**21)], f"window {-10**21}: not in"),
    (["label", "{db}", "1"], "--label NAME"),
    (["label", "{db}", "--undo"], "no label to undo"),
    (["learn", "{db}"], "no labels yet"),
    (["learn", "{db}", "--label", "beep"], "--label beep: no positive window"),
    (["rank", "{db}", "--label", "beep"], "--label beep: no positive window"),
    (["learn", "{db}", "--seed", "-5"], "--seed -5: must be 0 to 4294967295"),
    (["index", "{rec}/site", "--db", "{db}", "--model", "{model}"], "indexed with root"),
    (["index", "{empty}", "--db", "{tmp}/new", "--model", "{model}"], "no audio files in it"),
    (["index", "{rec}", "--db", "{tmp}/new", "--model", "{model}", "--hop", "0"], "--hop 0.0: seconds"),
    (["index", "{rec}", "--db", "{tmp}/new", "--model", "mn99_as"], "--model mn99_as: not a pretrained name"),
    (["index", "{rec}", "--db", "{rec}", "--model", "{model}"], "exists and is not an escnet archive"),
    (["index", "{rec}", "--db", "{tmp}/new", "--model", "{tmp}/m.onnx"], "gives probabilities, not embeddings"),
    (["scan", "{db}", "--label", "beep", "--threshold", "1.5"], "--threshold 1.5: a probability"),
    (["scan", "{db}", "--label", "x", "--model", "{model}"], "give one of --label NAME"),
])
def test_mistakes_are_one_line_and_exit_2(archive, recordings, tone_model, tmp_path, capsys, args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    (tmp_path / "m.onnx").write_bytes(b"an exported model")
    fill = {"db": str(archive), "rec": str(recordings), "model": str(tone_model), "tmp": str(tmp_path),
            "empty": str(tmp_path / "empty")}
    code, _, err = cli(capsys, *[a.format(**fill) for a in args])
    assert code == 2 and needle in err and err.count("\n") == 1 and err.startswith("escnet: error:"), err
    assert not (tmp_path / "new").exists() or needle.startswith("--hop")


def test_an_archive_of_another_model_or_layout_is_refused(archive, recordings, tone_model, tmp_path, capsys):
    other = tmp_path / "other.pt"
    other.write_bytes((tone_model / "fold-1" / "last.pt").read_bytes() + b"\0")  # another digest
    code, _, err = cli(capsys, "index", str(recordings), "--db", str(archive), "--model", str(other))
    assert code == 2 and "indexed with model" in err and "index into a new archive" in err
    db = sqlite3.connect(archive / Archive.SQLITE)
    with db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    db.close()
    code, _, err = cli(capsys, "search", str(archive), "--like", "1")
    assert code == 2 and "an archive of layout '99'" in err and "index the recordings again" in err


def test_labels_undo_import_and_export(archive, recordings, tmp_path, capsys):
    a = Archive(archive)
    low = sorted(w.id for w in a.windows(a.alive()).values() if (w.file, w.start) in LOW)
    high = a.windows_of("a.wav", 6, 7)[0].id
    assert cli(capsys, "label", str(archive), *map(str, low[:2]), "--label", "beep")[0] == 0
    code, out, _ = cli(capsys, "label", str(archive), str(high), "--label", "beep", "--negative")
    assert code == 0 and "1 window(s) negative" in out
    assert cli(capsys, "label", str(archive), "--undo")[1].startswith("undid batch 2: 1 label(s)")
    assert Archive(archive).labelled_windows("beep") == dict.fromkeys(low[:2], "positive")

    # the three annotation formats, files named by path (here a Windows one) or by name
    (tmp_path / "ann.csv").write_text("file,start,end,label,type\nD:\\rec\\site\\b.wav,9.2,9.8,beep,positive\n"
                                      "a,6.0,7.0,beep,negative\nnowhere.wav,0,1,beep,positive\n")
    (tmp_path / "c.Table.1.selections.txt").write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tAnnotation\n"
        "1\tSpectrogram 1\t1\t7.1\t7.9\tbeep\n1\tWaveform 1\t1\t7.1\t7.9\tbeep\n")
    (tmp_path / "a.txt").write_text("2.0\t3.0\tbeep\n\\\t500\t600\n")
    for name, made in (("ann.csv", 2), ("c.Table.1.selections.txt", 1), ("a.txt", 1)):
        code, out, err = cli(capsys, "label", str(archive), "--import", str(tmp_path / name))
        assert code == 0 and f"imported {made} label(s)" in out, err
    assert "not in the archive, not labelled: nowhere.wav" in cli(
        capsys, "label", str(archive), "--import", str(tmp_path / "ann.csv"))[2]
    labelled = Archive(archive).labelled_windows("beep")
    spans = {(w.file, w.start): labelled[w.id] for w in Archive(archive).windows(labelled).values()}
    assert spans == {**dict.fromkeys(LOW - {("site/b.wav", 4.0)}, "positive"), ("a.wav", 6.0): "negative"}

    code, out, _ = cli(capsys, "label", str(archive), "--export-csv", str(tmp_path / "labels.csv"))
    rows = list(csv.DictReader((tmp_path / "labels.csv").open()))
    assert {r["source"] for r in rows} == {"command", "import"} and sum(bool(r["undone"]) for r in rows) == 1
    assert cli(capsys, "label", str(archive), "--export-csv", str(tmp_path / "labels.csv"))[0] == 2  # kept

    code, out, _ = cli(capsys, "label", str(archive), "--export", str(tmp_path / "dataset"))
    clips = sorted((tmp_path / "dataset" / "beep").glob("*.wav"))
    # a.wav 2-3 s and c.flac 7-8 s by id; b.wav 9.2-9.8 s (widened to 9-10 s) imported; c.flac 7.1-7.9 s
    # and a.wav 2-3 s imported are the same audio again: one clip each
    assert code == 0 and len(clips) == 3
    assert all(sf.info(c).duration == pytest.approx(1.0, abs=1e-3) for c in clips)
    from escnet.data.tables import read_class_folders

    table = read_class_folders(tmp_path / "dataset")  # negatives are the "other" class: a dataset to train
    assert table.classes == ["beep", "other"] and len(table.paths) == 4


def test_labels_that_look_the_same_or_run_long_are_refused_and_export_keeps_classes_apart(archive, tmp_path,
                                                                                          capsys):
    ids = sorted(Archive(archive).alive())[:3]
    code, out, _ = cli(capsys, "label", str(archive), str(ids[0]), str(ids[0]), "--label", "dog?")
    assert code == 0 and "labelled 1 window(s)" in out  # a window named twice is labelled once
    code, _, err = cli(capsys, "label", str(archive), str(ids[1]), "--label", "DOG?  ")
    assert code == 2 and "label 'DOG?': looks the same as the label 'dog?'" in err
    code, _, err = cli(capsys, "learn", str(archive), "--label", "Dog?")
    assert code == 2 and "no positive window" in err and "its label is spelt 'dog?'" in err
    code, _, err = cli(capsys, "label", str(archive), str(ids[1]), "--label", "x" * 10_000)
    assert code == 2 and "10000 characters; a label is a name of at most 100" in err and len(err) < 200
    # an import that names one sound twice labels nothing, and says where
    (tmp_path / "ann.csv").write_text("file,start,end,label\na.wav,0,1,bird\na.wav,1,2,Bird\n")
    code, _, err = cli(capsys, "label", str(archive), "--import", str(tmp_path / "ann.csv"))
    assert code == 2 and "ann.csv: line 3: label 'Bird': looks the same as the label 'bird'" in err
    assert Archive(archive).label_names() == ["dog?"]
    # labels one folder name would merge ("dog?" and "dog!" are both "dog_"), and a label too long
    # for a file name in bytes, are folders of their own
    assert cli(capsys, "label", str(archive), str(ids[1]), "--label", "dog!")[0] == 0
    assert cli(capsys, "label", str(archive), str(ids[2]), "--label", "é" * 100)[0] == 0
    code, _, err = cli(capsys, "label", str(archive), "--export", str(tmp_path / "dataset"))
    assert code == 0, err
    folders = list((tmp_path / "dataset").iterdir())
    assert len(folders) == 3 and all(len(f.name.encode()) <= 120 for f in folders)
    assert [len(list(f.glob("*.wav"))) for f in folders] == [1, 1, 1]


def test_an_export_stopped_halfway_leaves_no_partial_dataset(archive, recordings, tmp_path, capsys):
    a = Archive(archive)
    ids = [w.id for w in a.windows(a.alive()).values() if (w.file, w.start) in LOW]
    assert cli(capsys, "label", str(archive), *map(str, ids), "--label", "beep")[0] == 0
    (recordings / "c.flac").write_bytes(b"no longer audio")  # one of the labelled recordings
    out = tmp_path / "dataset"
    code, _, err = cli(capsys, "label", str(archive), "--export", str(out))
    assert code == 2 and "c.flac: not a readable audio file" in err
    assert list(out.iterdir()) == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".dataset")]
    (recordings / "c.flac").unlink()  # gone: its label is left out, the rest exported into the same folder
    assert cli(capsys, "label", str(archive), "--export", str(out))[0] == 0
    assert len(list((out / "beep").glob("*.wav"))) == 3


def test_learn_rank_and_scan(archive, recordings, tmp_path, capsys):
    a = Archive(archive)
    low = sorted(w.id for w in a.windows(a.alive()).values() if (w.file, w.start) in LOW)
    high = [w.id for w in a.windows(a.alive()).values() if (w.file, w.start) in {("a.wav", 6.0), ("c.flac", 1.0)}]
    main(["label", str(archive), str(low[0]), str(low[1]), "--label", "beep"])
    main(["label", str(archive), *map(str, high), "--label", "beep", "--negative"])
    capsys.readouterr()

    code, out, err = cli(capsys, "rank", str(archive), "--label", "beep", "--top", "2", "--strategy", "top",
                         "--json", "--weak", "20")
    assert code == 0, err
    ranked = json.loads(out)
    assert {r["id"] for r in ranked} == set(low[2:])  # the unlabelled beeps come first
    margin = json.loads(cli(capsys, "rank", str(archive), "--label", "beep", "--top", "5", "--strategy",
                            "margin", "--json", "--weak", "20")[1])
    labelled = set(low[:2]) | set(high)
    assert not labelled & {r["id"] for r in margin}
    assert [abs(r["score"] - 0.5) for r in margin] == sorted(abs(r["score"] - 0.5) for r in margin)

    code, out, err = cli(capsys, "learn", str(archive), "--label", "beep", "--out", str(tmp_path / "beep"),
                         "--json", "--weak", "20")
    assert code == 0, err
    learned = json.loads(out)
    assert learned["classes"] == ["beep", "other"] and learned["counts"]["beep"] == {"labelled": 2, "weak": 0}
    assert learned["counts"]["other"]["labelled"] == 2 and learned["counts"]["other"]["weak"] == 20

    events = tmp_path / "events.csv"
    code, out, err = cli(capsys, "scan", str(archive), "--model", str(tmp_path / "beep"), "--out", str(events),
                         "--per-hour", str(tmp_path / "hours.csv"))
    assert code == 0, err
    found = {(r["file"], float(r["start"])) for r in csv.DictReader(events.open())}
    assert found == LOW
    assert (tmp_path / "hours.png").stat().st_size > 1000
    assert "a.wav +0 h,1" in (tmp_path / "hours.csv").read_text()
    code, out, _ = cli(capsys, "scan", str(archive), "--label", "beep", "--windows", "--json", "--weak", "20")
    rows = json.loads(out)
    assert len(rows) == 36 and set(rows[0]) == {"id", "file", "start", "end", "level_db", "score"}
    assert {(r["file"], r["start"]) for r in rows if r["score"] >= 0.5} == LOW
    code, _, err = cli(capsys, "scan", str(archive), "--model", str(tmp_path / "beep"), "--out", str(events))
    assert code == 2 and "exists" in err  # never over a user's file

    # the learned run is an escnet model: predict and export take it, and score as the archive did
    code, out, err = cli(capsys, "predict", "--model", str(tmp_path / "beep"), str(recordings / "site" / "b.wav"),
                         "--timeline", "--hop", "1")
    assert code == 0, err
    timeline = list(csv.DictReader(out.splitlines()))
    said = {float(r["start"]) for r in timeline if r["label"] == "beep"}
    assert said == {4.0, 9.0} and len(timeline) == 12
    onnx = tmp_path / "beep.onnx"
    assert cli(capsys, "export", str(tmp_path / "beep"), "--out", str(onnx))[0] == 0
    from escnet.deploy.onnx_model import OnnxModel

    model = OnnxModel(onnx)
    assert model.info.classes == ["beep", "other"]
    with sf.SoundFile(recordings / "site" / "b.wav") as f:
        wav = f.read(dtype="float32")
    windows = np.stack([wav[i * RATE:(i + 1) * RATE] for i in range(12)])
    p = model.score(windows).probabilities[:, 0]
    by_window = {(r["file"], r["start"]): r["score"] for r in rows if r["file"] == "site/b.wav"}
    np.testing.assert_allclose(p, [by_window[("site/b.wav", float(i))] for i in range(12)], atol=0.02)


def test_raven_table_of_detections(tmp_path):
    from escnet.archive.learn import Detection, per_hour, write_detections

    found = [Detection("site/20240501_053000.wav", "beep", 1800.0, 1801.0, 0.9),
             Detection("site/20240501_053000.wav", "beep", 3700.0, 3702.0, 0.8)]
    table = write_detections(found, tmp_path / "beep.selections.txt")
    from escnet.data.annotations import read_annotations

    back = read_annotations(table)
    assert [(b.file, b.start, b.end, b.label) for b in back] == [
        ("site/20240501_053000.wav", 1800.0, 1801.0, "beep"), ("site/20240501_053000.wav", 3700.0, 3702.0, "beep")]
    assert per_hour(found) == [("2024-05-01 06:00", 2)]  # 05:30 + 30 min and + 61 min 40 s
    assert per_hour([Detection("x.wav", "beep", 7300.0, 7301.0, 0.9)]) == [("x.wav +2 h", 1)]


@pytest.mark.data
def test_real_sounds_are_found_learned_and_scanned(real_archive, esc50, tmp_path, monkeypatch, capsys):
    from escnet.data.tables import read_esc50

    monkeypatch.setenv("ESCNET_WEIGHTS", str(WEIGHTS))
    db, truth = tmp_path / "db", real_archive[1]
    shutil.copytree(real_archive[0], db)  # the session's archive stays unlabelled
    table = read_esc50(esc50)
    query = next(p for p, lab, f in zip(table.paths, table.labels, table.folds, strict=True)
                 if f == 1 and table.classes[lab] == "dog")
    code, out, err = cli(capsys, "search", str(db), "--query", str(query), "--top", "4", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert sum(truth[(h["file"], h["start"])] == "dog" for h in hits) >= 3  # a dog of another fold finds dogs

    # one positive and one negative labelled: the classifier finds the other dogs
    a = Archive(db)
    ids = {(w.file, w.start): w.id for w in a.windows(a.alive()).values()}
    main(["label", str(db), str(ids[("r0.wav", 0.0)]), "--label", "dog"])
    main(["label", str(db), str(ids[("r0.wav", 5.0)]), "--label", "dog", "--negative"])
    capsys.readouterr()
    code, out, err = cli(capsys, "scan", str(db), "--label", "dog", "--windows", "--json", "--weak", "10")
    assert code == 0, err
    rows = sorted(json.loads(out), key=lambda r: -r["score"])
    from sklearn.metrics import average_precision_score

    unlabelled = [r for r in rows if (r["file"], r["start"]) not in {("r0.wav", 0.0), ("r0.wav", 5.0)}]
    ap = average_precision_score([truth[(r["file"], r["start"])] == "dog" for r in unlabelled],
                                 [r["score"] for r in unlabelled])
    assert ap >= 0.8


def test_the_page_api_searches_plays_labels_learns_and_undoes(archive, recordings):
    from conftest import local_client

    from escnet.serve.app import create_app
    from escnet.serve.settings import ServeSettings

    a = Archive(archive)
    ids = {(w.file, w.start): w.id for w in a.windows(a.alive()).values()}
    with local_client(create_app(ServeSettings(model="", db=str(archive)))) as c:
        assert "label.js" in c.get("/").text and c.get("/label").status_code == 200
        summary = c.get("/v1/archive").json()
        assert summary["files"] == 4 and summary["windows"] == 36 and summary["labels"] == {}
        upload = (recordings / "a.wav").read_bytes()
        hits = c.post("/v1/archive/search?top=3", files={"file": ("a.wav", upload)}).json()
        assert len(hits) == 3 and {"id", "file", "start", "end", "score"} <= set(hits[0])
        like = c.get(f"/v1/archive/search?like={ids[('a.wav', 2.0)]}&top=3").json()
        assert {(h["file"], h["start"]) for h in like} == LOW - {("a.wav", 2.0)}

        wav = c.get(f"/v1/archive/windows/{ids[('a.wav', 2.0)]}/audio")
        info = sf.info(__import__("io").BytesIO(wav.content))
        assert wav.headers["content-type"] == "audio/wav" and info.duration == pytest.approx(3.0, abs=0.01)
        image = c.get(f"/v1/archive/windows/{ids[('a.wav', 0.0)]}/spectrogram").json()
        assert image["offset"] == 0.0 and image["seconds"] == pytest.approx(2.0, abs=0.01)  # the file's start
        assert len(__import__("base64").b64decode(image["pixels"])) == image["n_mels"] * image["frames"]

        made = c.post("/v1/archive/labels", json={"ids": [ids[("a.wav", 2.0)], ids[("c.flac", 7.0)]],
                                                  "label": "beep"}).json()
        assert made["summary"]["labels"]["beep"]["positive"] == 2 and made["labels"][0]["source"] == "page"
        c.post("/v1/archive/labels", json={"ids": [ids[("a.wav", 6.0)]], "label": "beep", "kind": "negative"})
        learned = c.post("/v1/archive/learn", json={"label": "beep", "top": 2}).json()
        assert {(r["file"], r["start"]) for r in learned["rank"]} == {("site/b.wav", 4.0), ("site/b.wav", 9.0)}
        assert learned["counts"]["beep"]["labelled"] == 2
        undone = c.post("/v1/archive/undo").json()
        assert undone["summary"]["labels"]["beep"] == {"positive": 2, "negative": 0, "uncertain": 0}

        for url, status, said in ((f"/v1/archive/windows/{10**6}/audio", 404, "window 1000000: not in"),
                                  (f"/v1/archive/windows/{10**21}/audio", 404, f"window {10**21}: not in"),
                                  ("/v1/archive/search?like=1&top=0", 422, "top")):
            r = c.get(url)
            assert r.status_code == status and said in json.dumps(r.json())
        r = c.post("/v1/archive/labels", json={"ids": [1], "label": "beep", "kind": "maybe"})
        assert r.status_code == 422 and "kind=maybe" in r.json()["error"]
        r = c.post("/v1/archive/search", content=b"not audio at all")
        assert r.status_code == 422 and "error" in r.json()
        assert c.post("/v1/classify", content=upload).status_code == 404  # no model: the page alone


def test_the_search_graph_finds_what_exact_search_does_and_follows_changes(tmp_path, monkeypatch):
    """usearch's graph (from GRAPH_FROM rows; lowered here to 1000) against exact search: the
    same neighbours, rows committed after it was built found too, removed files' rows gone once
    it is updated."""
    from conftest import benchmark

    from escnet.archive import vectors
    from escnet.archive.vectors import Graph, exact

    monkeypatch.setattr(vectors, "GRAPH_FROM", 1000)
    a = benchmark("agile").synthetic_archive(tmp_path / "db", 3000, dim=32, files=30)
    with a.writing():
        assert Graph(a).update(a.alive()) == 3000
    rng = np.random.default_rng(0)
    graph, all_vectors = Graph(a), a.vectors()
    recall = []
    for q in rng.integers(3000, size=20):
        query = np.asarray(all_vectors[q], np.float32) + 0.1 * rng.standard_normal(32).astype(np.float32)
        ids, sims = graph.search(query, 10)
        assert (np.diff(sims) <= 1e-6).all()
        recall.append(len(set(ids.tolist()) & set(exact(all_vectors, query, 10)[0].tolist())) / 10)
    assert np.mean(recall) >= 0.95

    new = rng.standard_normal((50, 32)).astype(np.float32) * 5
    spans = np.stack([np.arange(50) * 5.0, np.arange(50) * 5.0 + 5], 1)
    with a.writing():
        a.add_file("late.wav", 0, 0, 250.0, spans, np.zeros(50), new)
    ids, _ = Graph(a).search(new[7], 1)  # not in the graph yet: found by the exact tail
    assert ids.tolist() == [3007] and Graph(a).held() == 3000
    with a.writing():
        a.remove_files(["late.wav", "site0/00000.wav"])
        assert Graph(a).update(a.alive()) == 3050
    gone = set(range(0, 100)) | set(range(3000, 3050))
    for q in (5, 3007):
        ids, _ = Graph(a).search(np.asarray(all_vectors[q] if q < 3000 else new[7], np.float32), 20)
        assert not gone & set(ids.tolist())
