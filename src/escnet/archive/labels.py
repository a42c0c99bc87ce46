"""Labels of an archive's windows: given by window id, imported from annotation files, exported
as a dataset ``escnet train`` takes or as a CSV (``escnet label``)."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from escnet.archive.db import Archive, Label
from escnet.archive.learn import OTHER
from escnet.data.annotations import Recordings, read_annotations
from escnet.data.audio import AudioFile
from escnet.data.tables import label_key
from escnet.errors import EscnetError
from escnet.files import atomic_write, atomic_write_text, make_output_dir, new_folder, new_output


def label_windows(archive: Archive, ids: list[int], label: str, kind: str = "positive",
                  source: str = "command") -> list[Label]:
    """Label the windows ``ids`` (every one must exist) as one batch; returns the labels made."""
    if not ids:
        raise EscnetError("give the ids of the windows to label (escnet search shows them)")
    ids = list(dict.fromkeys(ids))  # a window named twice is labelled once
    found = archive.windows(ids)
    if missing := [i for i in ids if i not in found]:
        raise EscnetError(f"window {missing[0]}: not in {archive.path} (its file was changed or "
                          f"removed since, or the id is wrong); {len(missing)} of {len(ids)} ids "
                          "unknown: nothing labelled")
    batch = archive.add_labels([(found[i].file, found[i].start, found[i].end) for i in ids], label, kind,
                               source)
    return archive.labels(batch=batch)


def import_labels(archive: Archive, path: str | Path) -> tuple[int, list[str]]:
    """Label what an annotation file (CSV, Raven selection table, Audacity label track) says,
    one batch per label and kind; files are matched to the archive's as
    :class:`~escnet.data.annotations.Recordings` matches them. Returns the
    labels made and the annotation files' recordings the archive does not hold (not labelled)."""
    annotations = read_annotations(path)
    recordings = Recordings(archive.files())
    groups: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    absent: set[str] = set()
    for a in annotations:
        match = recordings.find(a)
        if match is None:
            absent.add(a.file)
            continue
        groups.setdefault((a.label, a.kind), []).append((match, a.start, a.end))
    first = {a.label: a for a in reversed(annotations)}  # the row where each label appears first
    for label, a in first.items():  # every label checked before any is made: a refusal labels nothing
        try:
            archive.check_label(label, first)
        except EscnetError as err:
            raise EscnetError(f"{a.where}: {err}") from None
    made = 0
    for (label, kind), spans in groups.items():
        archive.add_labels(spans, label, kind, "import")
        made += len(spans)
    return made, sorted(absent)


NAME_BYTES = 120
"""UTF-8 bytes at most in a name export writes (file systems allow 255 for a name; a clip's
name adds its times to its recording's)."""


def _safe(name: str) -> str:
    """A label or a recording's path as one file name: no separators, nothing hidden, at most
    :data:`NAME_BYTES` bytes (a longer one is cut and ends in a digest of the whole, so that two
    names cut alike stay apart)."""
    cleaned = re.sub(r"[^\w .+=-]", "_", name).strip(" .") or "label"
    if len(cleaned.encode()) <= NAME_BYTES:
        return cleaned
    cut = cleaned.encode()[: NAME_BYTES - 9].decode(errors="ignore")
    return f"{cut}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _folders(labels: set[str]) -> dict[str, str]:
    """Each label's folder (:func:`_safe`), with a digest of the label added where two labels
    would share one, or would be taken for one by a file system that ignores case or by
    ``escnet train`` (:func:`~escnet.data.tables.label_key`): ``dog?`` and ``dog!`` are two
    classes, not one folder ``dog_``."""
    folders: dict[str, str] = {}
    taken: set[str] = set()
    for label in sorted(labels):
        folder = _safe(label)
        if label_key(folder) in taken:
            folder = f"{folder}-{hashlib.sha1(label.encode()).hexdigest()[:8]}"
        taken.add(label_key(folder))
        folders[label] = folder
    return folders


def export_dataset(archive: Archive, out: str | Path) -> dict[str, int]:
    """Each labelled span's audio as a clip (the span, at least the archive's window long,
    centred on it) in ``out/LABEL/`` for positives and ``out/other/`` for negatives that are no
    label's positive: a class-folder dataset ``escnet train`` takes as it is. A span labelled
    twice is one clip. ``out`` must be new or empty. Returns the clips written per class."""
    out = new_folder(out, "export")
    root = Path(archive.meta["root"])
    window, rate = float(archive.meta["window"]), int(archive.meta["sample_rate"])
    labels = archive.labels()

    def excerpt(lab: Label) -> tuple[str, float, float]:
        """The clip of a label: its span, widened to a window about its middle."""
        length = max(lab.end - lab.start, window)
        begin = max(0.0, (lab.start + lab.end) / 2 - length / 2)
        return lab.file, round(begin, 2), round(begin + length, 2)

    positive = {excerpt(lab) for lab in labels if lab.kind == "positive"}
    others = OTHER not in archive.label_names()  # a label named "other" would take them in
    clips: dict[tuple[str, float, float], str] = {}  # one clip of the same audio, however often labelled
    for lab in labels:  # a later label wins, as for learning
        span = excerpt(lab)
        if lab.kind == "positive":
            clips[span] = lab.label
        elif lab.kind == "negative" and span not in positive and others:
            clips.setdefault(span, OTHER)
    folders = _folders(set(clips.values()))
    counts: dict[str, int] = {}
    # written beside ``out`` and moved in whole: a stop or an unreadable recording halfway leaves
    # ``out`` as it was (empty), never a dataset missing some of its clips
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for (file, begin, end), name in clips.items():
            source = root / file
            if not source.is_file():
                continue  # its recording is gone: the label stays in the archive, unused
            with AudioFile(source) as recording:
                audio = recording.excerpt(rate, begin, end - begin)
            folder = make_output_dir(staging / folders[name])
            stem = _safe(Path(file).with_suffix("").as_posix().replace("/", "_"))
            clip = folder / f"{stem}-{begin:.2f}-{end:.2f}.wav"
            atomic_write(clip, lambda f, a=audio: sf.write(f, a, rate, format="WAV", subtype="PCM_16"))
            counts[name] = counts.get(name, 0) + 1
        if not set(counts) - {OTHER}:
            raise EscnetError(f"{archive.path}: no positive label whose recording is still at {root}")
        out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def export_csv(archive: Archive, out: str | Path) -> int:
    """Every label (with how and when it was made; undone ones marked) as
    ``file,start,end,label,type,source,created,undone``: what ``escnet label --import`` reads
    back. Returns the rows written."""
    out = new_output(out, "export_csv", (".csv",))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "start", "end", "label", "type", "source", "created", "undone"])
    labels = archive.labels(undone=True)
    for lab in labels:
        writer.writerow([lab.file, f"{lab.start:.3f}", f"{lab.end:.3f}", lab.label, lab.kind, lab.source,
                         lab.created, lab.undone or ""])
    atomic_write_text(out, buffer.getvalue())
    return len(labels)


def clip_of(archive: Archive, window_id: int, context: float = 1.0) -> tuple[np.ndarray, int, float]:
    """The audio of a window with ``context`` seconds either side (for listening): samples at
    the archive's rate, the rate, and where the window starts in it (seconds)."""
    w = archive.window(window_id)
    rate = int(archive.meta["sample_rate"])
    start = max(0.0, w.start - context)
    with AudioFile(Path(archive.meta["root"]) / w.file) as recording:
        audio = recording.excerpt(rate, start, w.end + context - start)
    return audio, rate, w.start - start
