"""``escnet search ARCHIVE --query FILE[@START-END] | --like WINDOW``: the windows of the archive
nearest an example, by cosine similarity of their embeddings.

A query recording (or the span of it asked for) is embedded with the archive's own model and
windowing, its windows' embeddings averaged; a window of the archive is its own vector. Windows
overlapping the query itself are left out, and of windows that touch (one sound heard in
adjacent or overlapping windows of a file) only the most similar is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from escnet.archive.db import Archive, Window
from escnet.archive.vectors import Graph, unit
from escnet.cards import CARDS
from escnet.data.audio import AudioFile
from escnet.errors import EscnetError


@dataclass(frozen=True)
class Hit:
    """A window found, with its cosine similarity to the query."""

    window: Window
    score: float

    def to_dict(self) -> dict:
        return {**self.window.to_dict(), "score": round(float(self.score), 5)}


@dataclass(frozen=True)
class Query:
    """What is searched for: a vector, and the span of the archive it came from, if any."""

    vector: np.ndarray
    file: str | None = None
    """The query's recording, as the archive names it (when it is one of the archive's)."""
    start: float = 0.0
    end: float = 0.0
    text: str = ""
    """The query as given, for messages."""

    def covers(self, w: Window) -> bool:
        return w.file == self.file and w.start < self.end and self.start < w.end


@lru_cache(maxsize=4)
def embedder_of(model: str, window: float):
    """The archive's model, loaded once per process (the page embeds query after query)."""
    from escnet.deploy.embed import Embedder

    return Embedder.from_path(model, window=window if model in CARDS else None)


def parse_query(text: str) -> tuple[Path, float | None, float | None]:
    """``FILE`` or ``FILE@START-END`` (seconds) → the file and the span (``None``: all of it).
    A file whose own name holds ``@`` is that file when it exists."""
    if "@" not in text or Path(text).exists():
        return Path(text), None, None
    file, span = text.rsplit("@", 1)
    try:
        start, end = map(float, span.split("-"))
    except ValueError:  # not two numbers
        start = end = math.nan
    if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
        raise EscnetError(f"query={text}: a span is START-END seconds with END after START "
                          "(e.g. rec.wav@12.5-15)")
    return Path(file), start, end


def embed_query(archive: Archive, query: str | Path | AudioFile) -> Query:
    """The vector of a query: a recording ``FILE[@START-END]`` (or one already open, an upload):
    the mean of its windows' embeddings by the archive's model (each window of the span, at the
    archive's hop)."""
    if isinstance(query, AudioFile):
        return _embedded(archive, query, None, None, None, query.name)
    path, start, end = parse_query(str(query))
    with AudioFile(path) as audio:
        return _embedded(archive, audio, start, end, _archived(archive, path), str(query))


def _embedded(archive: Archive, audio: AudioFile, start: float | None, end: float | None,
              file: str | None, text: str) -> Query:
    embedder = embedder_of(archive.meta["model"], float(archive.meta["window"]))
    if start is not None and audio.duration is not None and end > audio.duration + 0.05:
        raise EscnetError(f"query={text}: the span ends at {end:g} s, but the recording is "
                          f"{audio.duration:.2f} s long")
    rows = list(embedder.scorer.recording(audio, float(archive.meta["hop"])))
    rate = embedder.sample_rate
    picked = [v for w, v in rows
              if start is None or (w.seconds(rate)[0] < end and start < w.seconds(rate)[1])]
    if not picked:
        raise EscnetError(f"query={text}: no audio in that span")
    vector = unit(np.stack(picked)).mean(0)
    return Query(vector, file, start or 0.0, end if end is not None else math.inf, text)


def _archived(archive: Archive, path: Path) -> str | None:
    """``path`` as the archive names it, when it is one of the archive's recordings."""
    root = archive.meta.get("root")
    if not root:
        return None
    try:
        rel = path.resolve().relative_to(Path(root)).as_posix()
    except ValueError:
        return None
    return rel if rel in archive.files() else None


def window_query(archive: Archive, window_id: int) -> Query:
    """A window of the archive as the query (its own vector)."""
    w = archive.window(window_id)
    return Query(np.asarray(archive.vectors()[w.id], np.float32), w.file, w.start, w.end, f"window {w.id}")


def search(archive: Archive, query: Query, k: int = 10) -> list[Hit]:
    """The ``k`` windows nearest ``query``: alive, not overlapping it, one per sound (windows
    that touch a better one are left out)."""
    if not 1 <= k <= 10_000:
        raise EscnetError(f"top={k}: 1 to 10000 windows")
    graph = archive.cache.get("graph") or archive.cache.setdefault("graph", Graph(archive))
    asked = 4 * k + 16
    while True:  # ask for more when leaving out overlaps and touching windows left too few
        ids, scores = graph.search(query.vector, asked)
        found = archive.windows(ids)
        kept: list[Hit] = []
        for i, score in zip(ids, scores, strict=True):
            w = found.get(int(i))
            if w is None or query.covers(w) or any(h.window.touches(w) for h in kept):
                continue
            kept.append(Hit(w, float(score)))
            if len(kept) == k:
                return kept
        if len(ids) < asked or asked >= archive.rows:
            return kept
        asked *= 4
