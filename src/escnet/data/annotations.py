"""Annotations of recordings: which sound is heard where, as people write them down.

Three formats, told apart by their content:

- **CSV** with a header: ``file``, ``start`` (or ``onset``), ``end`` (or ``offset``), ``label``
  and optionally ``type`` (``positive``, ``negative`` or ``uncertain``; default positive).
- **Raven selection tables** (Cornell's Raven Pro, BirdNET-Analyzer's output): tab-separated,
  with ``Begin Time (s)`` and ``End Time (s)``; the label is the ``Annotation`` column (or
  ``Species``, ``Label``, ``Class``, ``Common Name``, ``Sound Type``); the file is ``Begin
  File`` or ``Begin Path`` where the table has one, else the table's own name up to
  ``.Table`` (Raven's ``clip.Table.1.selections.txt``). A selection listed once per view
  (spectrogram and waveform) counts once.
- **Audacity label tracks**: ``start<TAB>end<TAB>label`` lines without a header, one track per
  recording (the file named like the track: ``clip.txt`` for ``clip.wav``); frequency lines
  (starting with ``\\``) are skipped.

Every row is checked (times finite, not negative, end not before start, a label): a bad row is
an :class:`~escnet.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from escnet.data.tables import csv_rows
from escnet.errors import DataError
from escnet.files import read_text

KINDS = ("positive", "negative", "uncertain")
"""What a label says of its span: the sound is there, is not there, or may be."""
RAVEN_LABELS = ("Annotation", "Species", "Label", "Class", "Common Name", "Sound Type")
"""Columns of a Raven selection table that hold the label, in the order they are looked for."""


@dataclass(frozen=True)
class Annotation:
    """One labelled span of a recording: ``label`` heard from ``start`` to ``end`` seconds of
    ``file`` (as the annotation names it: a path relative to the recordings' folder, or a name).
    A span of zero length marks an instant."""

    file: str
    start: float
    end: float
    label: str
    kind: str = "positive"
    where: str = ""
    """The annotation's file and line, for messages."""

    def overlaps(self, other: Annotation) -> bool:
        return self.file == other.file and self.start < other.end and other.start < self.end


class Recordings:
    """What an annotation's ``file`` names, among recordings known by their paths under a
    folder (``site/clip.wav``): the recording at that path, or at the longest end of it that is
    one (an absolute path, a Windows path, a path from the folder's parent, as Raven's ``Begin
    Path`` is), or whose name is that end with or without its extension; letter case counts
    only where it tells recordings apart (a table written on a system that ignores it)."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.exact: dict[str, set[str]] = {}
        self.folded: dict[str, set[str]] = {}
        for rel in paths:
            path = PurePosixPath(rel)
            for alias in (rel, path.with_suffix("").as_posix(), path.name, path.stem):
                self.exact.setdefault(alias, set()).add(rel)
                self.folded.setdefault(alias.casefold(), set()).add(rel)

    def find(self, annotation: Annotation) -> str | None:
        """The path of the recording ``annotation`` names, ``None`` for none; a
        :class:`~escnet.errors.DataError` naming its row where it could be several."""
        parts = [p for p in annotation.file.replace("\\", "/").split("/") if p not in ("", ".", "..")]
        for i in range(len(parts)):  # the longest end first
            end = "/".join(parts[i:])
            found = self.exact.get(end) or self.folded.get(end.casefold())
            if found and len(found) > 1:
                raise DataError(f"{annotation.where}: {annotation.file!r} could be any of "
                                f"{', '.join(sorted(found)[:3])}: name it by its path under the folder")
            if found:
                return next(iter(found))
        return None


def read_annotations(path: str | Path) -> list[Annotation]:
    """Every annotation of a CSV, Raven selection table or Audacity label track (see the
    module's description). An empty file is refused."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give an annotation file (CSV, a Raven selection table "
                        "or an Audacity label track)")
    text = read_text(path, "annotation file", DataError)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: holds no annotations (empty)")
    header = lines[0]
    if "Begin Time (s)" in header:
        rows = _raven(path, text)
    elif "\t" in header and not any(c.isalpha() for c in header.split("\t")[0]):
        rows = _audacity(path, text.splitlines())
    else:
        rows = _csv(path, text)
    if not rows:
        raise DataError(f"{path}: holds no annotations (a header without rows)")
    return rows


def _span(path: Path, line: int, file: str, start: str, end: str, label: str, kind: str) -> Annotation:
    where = f"{path}: line {line}"
    try:
        a, b = float(start), float(end)
    except (TypeError, ValueError):
        raise DataError(f"{where}: times {start!r}, {end!r} are not numbers of seconds") from None
    if not (math.isfinite(a) and math.isfinite(b)) or a < 0:
        raise DataError(f"{where}: times {a:g}, {b:g}: must be finite and not negative")
    if b < a:
        raise DataError(f"{where}: ends at {b:g} s, before it starts ({a:g} s)")
    label = (label or "").strip()
    if not label:
        raise DataError(f"{where}: no label")
    kind = (kind or "positive").strip().lower()
    if kind not in KINDS:
        raise DataError(f"{where}: type {kind!r}: one of {', '.join(KINDS)}")
    if not file.strip():
        raise DataError(f"{where}: no file")
    return Annotation(file.strip(), a, b, label, kind, where)


def _csv(path: Path, text: str) -> list[Annotation]:
    reader = csv_rows(text)
    fields = {f.strip().lower(): f for f in reader.fieldnames or []}
    start = fields.get("start") or fields.get("onset")
    end = fields.get("end") or fields.get("offset")
    missing = [n for n, f in (("file", fields.get("file")), ("start (or onset)", start),
                              ("end (or offset)", end), ("label", fields.get("label"))) if f is None]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                        "file,start,end,label[,type] (or onset,offset), a Raven selection table "
                        "or an Audacity label track")
    kind = fields.get("type")
    comma = reader.reader.dialect.delimiter == ";"  # its spreadsheet may write times as 1,5

    def time(value: str | None) -> str | None:
        return value.replace(",", ".") if comma and value else value

    return [_span(path, n, r[fields["file"]] or "", time(r[start]), time(r[end]), r[fields["label"]],
                  r[kind] if kind else "") for n, r in enumerate(reader, start=2)]


def _raven(path: Path, text: str) -> list[Annotation]:
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    fields = reader.fieldnames or []
    label = next((c for c in RAVEN_LABELS if c in fields), None)
    if label is None:
        raise DataError(f"{path}: a Raven selection table without a label column (one of "
                        f"{', '.join(RAVEN_LABELS)})")
    times = [c for c in ("Begin Time (s)", "End Time (s)") if c not in fields]
    if times:
        raise DataError(f"{path}: a Raven selection table without the column(s) {', '.join(times)}")
    file = next((c for c in ("Begin File", "Begin Path") if c in fields), None)
    own = path.name.split(".Table")[0] if ".Table" in path.name else path.stem
    seen, out = set(), []
    for n, r in enumerate(reader, start=2):
        key = (r.get("Selection"), r.get(file) if file else own)
        if r.get("Selection") and key in seen:  # the same selection in another view
            continue
        seen.add(key)
        given = (r[file] or "") if file else own  # a short row leaves its last columns None
        name = Path(given).name if file == "Begin Path" else given
        out.append(_span(path, n, name or "", r["Begin Time (s)"], r["End Time (s)"], r[label], ""))
    return out


def _audacity(path: Path, lines: list[str]) -> list[Annotation]:
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("\\"):  # a blank line, or a label's frequency line
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise DataError(f"{path}: line {n}: an Audacity label is start<TAB>end<TAB>label")
        out.append(_span(path, n, path.stem, parts[0], parts[1], "\t".join(parts[2:]), ""))
    return out
