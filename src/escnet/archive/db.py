"""The archive database: the one owner of its files and formats.

An archive is a folder (``escnet index DIR --db ARCHIVE``)::

    ARCHIVE/
      index.sqlite      files, windows and labels (SQLite in WAL mode: readers never wait for
                        the writer, and a kill loses at most the file being written)
      vectors.f16       every window's embedding, float16, row ``i`` is window ``i``: appended
                        as files are indexed, read memory-mapped (rank, scan, exact search)
      vectors.usearch   an approximate nearest-neighbour graph over the rows (usearch's HNSW),
                        derived from vectors.f16 and rebuilt or extended when it lags behind
      .writer.lock      held by the one process that writes (index, label, learn)

Why these: SQLite is in Python's standard library, one file, transactional, and lets a search
or the page read while an index is being written; a flat float16 matrix is the fastest way to
score every window with a linear classifier (rank, scan) and holds 10⁶ windows of 384
dimensions in 768 MB; usearch (the engine Perch Hoplite's agile modelling uses too) answers
nearest-neighbour queries over 10⁶ vectors in milliseconds, memory-mapped. Vectors are not
kept in SQLite (a million rows of blobs read ten times slower than a memory map).

Labels are kept by span (file, start, end), not by window: re-indexing a changed file keeps
them, and a label whose file is gone stays in the record, unused. A label is never deleted:
undoing marks it undone, with the time.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import escnet
from escnet.data.annotations import KINDS
from escnet.data.tables import label_key
from escnet.errors import EscnetError
from escnet.files import hold_lock

SCHEMA = 1
"""Version of the layout below; an archive of another version is refused, saying so."""
SOURCES = ("search", "rank", "import", "page", "command")
MAX_LABEL = 100
"""Characters in a label at most: a label is a class's name, and a folder's on export."""
"""How a label was made: from a search result, an active-learning batch, an imported
annotation file, the page, or the command line."""

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, duration REAL, first INTEGER, windows INTEGER NOT NULL DEFAULT 0,
    error TEXT, indexed TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY, file INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    start REAL NOT NULL, end REAL NOT NULL, level_db REAL NOT NULL);
CREATE INDEX IF NOT EXISTS windows_by_file ON windows(file, start);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, file TEXT NOT NULL, start REAL NOT NULL,
    end REAL NOT NULL, label TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL,
    created TEXT NOT NULL, undone TEXT);
CREATE INDEX IF NOT EXISTS labels_by_label ON labels(label, undone);
"""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass(frozen=True)
class Window:
    """A window of a recording in the archive."""

    id: int
    file: str
    """Path relative to the indexed folder."""
    start: float
    end: float
    level_db: float

    def overlaps(self, other: Window) -> bool:
        return self.file == other.file and self.start < other.end and other.start < self.end

    def touches(self, other: Window) -> bool:
        """Overlapping or adjacent (no gap): parts of one sound, for search results."""
        return self.file == other.file and self.start <= other.end and other.start <= self.end

    def to_dict(self) -> dict:
        return {"id": self.id, "file": self.file, "start": round(self.start, 3),
                "end": round(self.end, 3), "level_db": round(self.level_db, 2)}


@dataclass(frozen=True)
class Label:
    """A label of a span: the sound ``label`` is (``positive``), is not (``negative``) or may
    be (``uncertain``) heard in ``file`` from ``start`` to ``end``."""

    id: int
    batch: int
    file: str
    start: float
    end: float
    label: str
    kind: str
    source: str
    created: str
    undone: str | None = None

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Archive:
    """An archive folder (see the module's description), opened for reading; :meth:`writing`
    takes it for the one writer. :meth:`create` makes a new one."""

    SQLITE, VECTORS, GRAPH, LOCK = "index.sqlite", "vectors.f16", "vectors.usearch", ".writer.lock"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / self.SQLITE).is_file():
            what = "a file, not an archive folder" if self.path.is_file() else \
                "no escnet archive here (make one with escnet index DIR --db ARCHIVE)"
            raise EscnetError(f"{self.path}: {what}")
        self.db = self._connect()
        self.meta = dict(self.db.execute("SELECT key, value FROM meta"))
        if int(self.meta.get("schema", 0)) != SCHEMA:
            raise EscnetError(f"{self.path}: an archive of layout {self.meta.get('schema')!r} (escnet "
                              f"{self.meta.get('escnet', '?')}); this escnet {escnet.__version__} reads "
                              f"layout {SCHEMA}: index the recordings again into a new archive")
        self.dim = int(self.meta["dim"])
        self._lock: object | None = None
        self.cache: dict[str, object] = {}
        """What readers derive once per opened archive (the search graph's mapping)."""

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path / self.SQLITE, timeout=30, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=FULL")  # a label, once said saved, survives a power cut
            return db
        except sqlite3.DatabaseError as err:
            raise EscnetError(f"{self.path / self.SQLITE}: cannot open the archive database ({err}; a "
                              "full disk, or not an archive)") from None

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, str]) -> Archive:
        """A new, empty archive at ``path`` (a new or empty folder) with ``meta`` (the model's
        description: ``model``, ``card``, ``sha256``, ``sample_rate``, ``window``, ``hop``,
        ``dim``)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise EscnetError(f"db={path}: exists and is not an escnet archive; choose a new folder")
        try:
            path.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path / cls.SQLITE, isolation_level=None)
            db.executescript(_TABLES)
            db.execute("BEGIN")  # the description whole or not at all
            db.executemany("INSERT INTO meta VALUES (?, ?)", {
                **meta, "schema": str(SCHEMA), "escnet": escnet.__version__, "created": now(),
                "rows": "0"}.items())
            db.execute("COMMIT")
            db.close()
        except (OSError, sqlite3.DatabaseError) as err:
            raise EscnetError(f"db={path}: cannot create the archive there ({err})") from None
        return cls(path)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction: every statement in it is kept, or none (the connection otherwise
        commits statement by statement). ``IMMEDIATE``: it takes the write lock at once, so a
        reader's snapshot never blocks it half way."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            with contextlib.suppress(sqlite3.Error):  # a failed write may have ended it already
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- the one writer -------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[Archive]:
        """Hold the archive as its one writer (an advisory lock, released however the process
        ends); a second writer is refused at once, naming the first."""
        handle = hold_lock(self.path / self.LOCK, "being written")
        self._lock = handle
        try:
            self._drop_uncommitted()
            yield self
        finally:
            self._lock = None
            handle.close()

    def _writer(self) -> None:
        if self._lock is None:
            raise RuntimeError("archive writes need Archive.writing()")

    @property
    def rows(self) -> int:
        """Vector rows committed (window ids are below it)."""
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'rows'").fetchone()[0])

    def _drop_uncommitted(self) -> None:
        """Cut vectors.f16 back to its committed rows: rows a killed writer appended for a file
        it never committed."""
        path = self.path / self.VECTORS
        if path.exists() and path.stat().st_size > self.rows * self.dim * 2:
            os.truncate(path, self.rows * self.dim * 2)

    def add_file(self, path: str, size: int, mtime_ns: int, duration: float | None,
                 spans: np.ndarray, levels: np.ndarray, vectors: np.ndarray) -> None:
        """Index one recording (replacing what the archive had of it): its windows' ``spans``
        ``(n, 2)`` seconds, ``levels`` ``(n,)`` dBFS and ``vectors`` ``(n, dim)``. The vectors are
        appended and synced first; the windows refer to them once the transaction commits, so a
        kill anywhere leaves the file fully indexed or not at all."""
        self._writer()
        first = self.rows
        try:
            with (self.path / self.VECTORS).open("ab") as f:
                f.write(np.ascontiguousarray(vectors, np.float16).tobytes())
                f.flush()
                os.fsync(f.fileno())
            with self.transaction():
                self.db.execute("DELETE FROM files WHERE path = ?", (path,))
                file_id = self.db.execute(
                    "INSERT INTO files (path, size, mtime_ns, duration, first, windows, indexed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (path, size, mtime_ns, duration, first, len(spans), now())
                ).lastrowid
                self.db.executemany("INSERT INTO windows VALUES (?, ?, ?, ?, ?)", (
                    (first + i, file_id, float(a), float(b), float(level))
                    for i, ((a, b), level) in enumerate(zip(spans, levels, strict=True))))
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'rows'", (str(first + len(spans)),))
        except (OSError, sqlite3.OperationalError) as err:  # a full disk: what was written stays
            raise EscnetError(f"{self.path}: cannot write the archive ({err}); files indexed before "
                              "are kept: free some space and run the same command again") from None

    def set_meta(self, key: str, value: str) -> None:
        self._writer()
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self.meta[key] = value

    def add_unreadable(self, path: str, size: int, mtime_ns: int, error: str) -> None:
        """Record a file that could not be read (listed, not indexed; tried again once it changes)."""
        self._writer()
        with self.transaction():
            self.db.execute("DELETE FROM files WHERE path = ?", (path,))
            self.db.execute("INSERT INTO files (path, size, mtime_ns, error, indexed) VALUES (?, ?, ?, ?, ?)",
                            (path, size, mtime_ns, error, now()))

    def remove_files(self, paths: Iterable[str]) -> int:
        """Drop files (and their windows) no longer in the folder; their rows of vectors stay
        unused until the archive is rebuilt. Returns how many were dropped."""
        self._writer()
        paths = list(paths)
        with self.transaction():
            self.db.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in paths))
        return len(paths)

    # --- reading --------------------------------------------------------------------------

    def files(self) -> dict[str, tuple[int, int, str | None]]:
        """``{path: (size, mtime_ns, error)}`` of every file the archive knows."""
        rows = self.db.execute("SELECT path, size, mtime_ns, error FROM files")
        return {p: (s, m, e) for p, s, m, e in rows}

    def summary(self) -> dict:
        """Counts: files, unreadable files, windows, hours of audio, labels by label and kind."""
        files, bad, hours = self.db.execute(
            "SELECT COUNT(*), COUNT(error), COALESCE(SUM(duration), 0) / 3600 FROM files").fetchone()
        labels: dict[str, dict[str, int]] = {}
        for label, kind, n in self.db.execute(
                "SELECT label, kind, COUNT(*) FROM labels WHERE undone IS NULL GROUP BY label, kind"):
            labels.setdefault(label, dict.fromkeys(KINDS, 0))[kind] = n
        windows = self.db.execute("SELECT COUNT(*) FROM windows").fetchone()[0]
        return {"files": files, "unreadable": bad, "windows": windows, "hours": round(hours, 3),
                "labels": labels, "model": self.meta.get("model"), "window": float(self.meta["window"]),
                "hop": float(self.meta["hop"])}

    def unreadable(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT path, error FROM files WHERE error IS NOT NULL ORDER BY path"))

    def windows(self, ids: Iterable[int]) -> dict[int, Window]:
        """The windows of ``ids`` that exist (a window of a file since changed or removed does
        not, nor an id past SQLite's 64-bit integers), by id."""
        ids = [i for i in map(int, ids) if -(1 << 63) <= i < 1 << 63]
        out: dict[int, Window] = {}
        for chunk in range(0, len(ids), 900):  # SQLite's limit on bound parameters
            part = ids[chunk : chunk + 900]
            rows = self.db.execute(
                f"SELECT w.id, f.path, w.start, w.end, w.level_db FROM windows w JOIN files f ON "
                f"f.id = w.file WHERE w.id IN ({','.join('?' * len(part))})", part)
            out.update({r[0]: Window(*r) for r in rows})
        return out

    def window(self, id: int) -> Window:
        """One window, or an error saying it is not (or no longer) in the archive."""
        found = self.windows([id]).get(int(id))
        if found is None:
            raise EscnetError(f"window {id}: not in {self.path} (its file was changed or removed since, "
                              "or the id is wrong; search again)")
        return found

    def windows_of(self, file: str, start: float | None = None, end: float | None = None) -> list[Window]:
        """The windows of ``file`` (a path in the archive) overlapping ``start``–``end`` seconds
        (all of them without a span), in time order."""
        query = ("SELECT w.id, f.path, w.start, w.end, w.level_db FROM windows w JOIN files f ON "
                 "f.id = w.file WHERE f.path = ?")
        args: list = [file]
        if start is not None and end is not None:
            query += " AND w.start < ? AND w.end > ?"
            args += [max(end, start + 1e-6), start]
        return [Window(*r) for r in self.db.execute(query + " ORDER BY w.start", args)]

    def alive(self) -> np.ndarray:
        """Ids of every window in the archive, sorted (from the files' ranges of rows: a file's
        windows are consecutive rows)."""
        ranges = self.db.execute("SELECT first, windows FROM files WHERE windows > 0 ORDER BY first")
        parts = [np.arange(first, first + n, dtype=np.int64) for first, n in ranges]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def vectors(self) -> np.ndarray:
        """Every committed row of vectors ``(rows, dim)`` float16, memory-mapped copy-on-write
        (a change stays in this process's memory, never reaches the file; writable, so PyTorch
        can take its rows without a copy)."""
        rows = self.rows
        if rows == 0:
            return np.zeros((0, self.dim), np.float16)
        return np.memmap(self.path / self.VECTORS, np.float16, "c", shape=(rows, self.dim))

    # --- labels ---------------------------------------------------------------------------

    def add_labels(self, spans: Iterable[tuple[str, float, float]], label: str, kind: str,
                   source: str) -> int:
        """Label ``spans`` (file, start, end) as one batch; returns the batch number. Written in
        one transaction, synced before it returns: a crash loses no label said saved."""
        if kind not in KINDS:
            raise EscnetError(f"kind={kind}: one of {', '.join(KINDS)}")
        if source not in SOURCES:
            raise EscnetError(f"source={source}: one of {', '.join(SOURCES)}")
        label = self.check_label(label)
        spans = list(spans)
        with self.transaction():
            batch = (self.db.execute("SELECT COALESCE(MAX(batch), 0) FROM labels").fetchone()[0]) + 1
            self.db.executemany(
                "INSERT INTO labels (batch, file, start, end, label, kind, source, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((batch, f, float(a), float(b), label, kind, source, now()) for f, a, b in spans))
        return batch

    def check_label(self, label: str, others: Iterable[str] = ()) -> str:
        """``label`` without the spaces around it, when it is a name this archive can take: of
        printable characters, at most :data:`MAX_LABEL` of them, and not looking the same as
        one of the archive's labels or of ``others`` without being it (differing only in case,
        spaces or Unicode form, :func:`~escnet.data.tables.label_key`: one sound named twice
        would become two classes); else :class:`EscnetError`."""
        label = label.strip()
        shown = repr(label if len(label) <= 40 else label[:40] + "...")
        if not label or any(not c.isprintable() for c in label):
            raise EscnetError(f"label {shown}: a label is a name of printable characters")
        if len(label) > MAX_LABEL:
            raise EscnetError(f"label {shown}: {len(label)} characters; a label is a name of at "
                              f"most {MAX_LABEL}")
        key = label_key(label)
        for other in (*self.label_names(), *others):
            if other != label and label_key(other) == key:
                raise EscnetError(f"label {shown}: looks the same as the label {other!r} (they "
                                  "differ only in case, spaces or Unicode form); give one sound "
                                  "one spelling")
        return label

    def undo(self) -> list[Label]:
        """Undo the last batch of labels not undone yet (marked, never deleted); returns it."""
        with self.transaction():
            row = self.db.execute("SELECT MAX(batch) FROM labels WHERE undone IS NULL").fetchone()
            if row[0] is None:
                raise EscnetError(f"{self.path}: no label to undo")
            undone = self.labels(batch=row[0])
            self.db.execute("UPDATE labels SET undone = ? WHERE batch = ?", (now(), row[0]))
        return undone

    def labels(self, label: str | None = None, batch: int | None = None, undone: bool = False
               ) -> list[Label]:
        """Labels (of ``label``, of ``batch``), in the order made; undone ones only with ``undone``."""
        query, args = "SELECT * FROM labels WHERE 1", []
        if label is not None:
            query, args = query + " AND label = ?", [*args, label]
        if batch is not None:
            query, args = query + " AND batch = ?", [*args, batch]
        if not undone:
            query += " AND undone IS NULL"
        return [Label(*r) for r in self.db.execute(query + " ORDER BY id", args)]

    def label_names(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT label FROM labels WHERE undone IS NULL ORDER BY label")]

    def labelled_windows(self, label: str) -> dict[int, str]:
        """Windows a label of ``label`` covers (the windows its span overlaps most: the one
        holding it for a short span, every window it spans for a long one), by id: ``kind``. A
        later label of a window wins over an earlier one."""
        out: dict[int, str] = {}
        for lab in self.labels(label):
            for w in self._covered(lab.file, lab.start, lab.end):
                out[w.id] = lab.kind
        return out

    def _covered(self, file: str, start: float, end: float) -> list[Window]:
        windows = self.windows_of(file, start - 1e-6, end + 1e-6) if end > start else \
            self.windows_of(file, start - 1e-6, start + 1e-6)
        if not windows:
            return []

        def shared(w: Window) -> float:
            return min(w.end, end) - max(w.start, start) if end > start else 1.0

        most = max(shared(w) for w in windows)
        return [w for w in windows if shared(w) >= 0.5 * most]

    def describe(self) -> str:
        s = self.summary()
        return (f"{s['files']} files ({s['unreadable']} unreadable), {s['windows']} windows, "
                f"{s['hours']:.2f} h, model {s['model']}, labels {json.dumps(s['labels'])}")
