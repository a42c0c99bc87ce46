"""Nearest windows by cosine similarity: exact over the memory-mapped vectors for a small archive,
usearch's approximate graph (HNSW) for a large one, exact over the rows the graph has not
taken in yet (a reader while an index is being written sees every committed window)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

from escnet.archive.db import Archive
from escnet.errors import EscnetError

GRAPH_FROM = 50_000
"""Rows from which a graph is built: below it an exact search over the memory map is as fast."""
CHUNK = 65_536
"""Rows scored at a time by the exact search and by classifiers (memory stays bounded)."""


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length (float32); zero rows stay zero."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def float32(rows: np.ndarray) -> np.ndarray:
    """float16 rows as float32: through PyTorch where it is installed (its conversion uses the
    CPU's F16C instructions, eight times faster than NumPy's: most of a scan's time)."""
    try:
        import torch
    except ImportError:
        return np.asarray(rows, np.float32)
    rows = rows if rows.flags.writeable else np.array(rows, np.float16)
    return torch.from_numpy(rows).float().numpy()


def chunks(vectors: np.ndarray, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, rows)`` of ``vectors[start:]`` as float32, :data:`CHUNK` rows at a time."""
    for first in range(start, len(vectors), CHUNK):
        yield first, float32(vectors[first : first + CHUNK])


def exact(vectors: np.ndarray, query: np.ndarray, k: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``vectors[start:]`` most similar to ``query`` ``(dim,)`` (cosine): ``(ids,
    scores)``, best first, at most ``k``."""
    q = unit(query[None])[0]
    best_ids, best = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for first, rows in chunks(vectors, start):
        sims = unit(rows) @ q
        top = np.argpartition(-sims, min(k, len(sims)) - 1)[:k] if len(sims) > k else np.arange(len(sims))
        best_ids = np.concatenate([best_ids, first + top])
        best = np.concatenate([best, sims[top]])
        keep = np.argsort(-best, kind="stable")[:k]
        best_ids, best = best_ids[keep], best[keep]
    return best_ids, best


class Graph:
    """The usearch graph of an archive's vectors (``vectors.usearch``, with ``.json`` saying how
    many rows it holds). Built or extended by the archive's writer (:meth:`update`); read
    memory-mapped by anyone (:meth:`open`)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.path = archive.path / archive.GRAPH
        self.info_path = self.path.with_suffix(".json")
        self._view: tuple[object, object] | None = None  # (the file's identity, the mapped graph)

    def _info(self) -> dict:
        """``{"rows": rows taken in, "dead": rows dropped since}`` of the saved graph."""
        try:
            info = json.loads(self.info_path.read_text())
            return {"rows": int(info["rows"]), "dead": int(info.get("dead", 0))}
        except (OSError, ValueError, KeyError, TypeError):
            return {"rows": 0, "dead": 0}

    def held(self) -> int:
        """Rows the saved graph holds (0: none saved)."""
        return self._info()["rows"] if self.path.exists() else 0

    def _index(self):
        try:
            from usearch.index import Index
        except ImportError:
            raise EscnetError("searching a large archive needs usearch: pip install usearch (or "
                              "pip install 'escnet[archive]')") from None
        return Index(ndim=self.archive.dim, metric="cos", dtype="f16", connectivity=16,
                     expansion_add=128, expansion_search=256)

    def update(self, alive: np.ndarray) -> int:
        """Add the rows committed since the graph was saved (the archive's writer only), drop
        those no longer alive, and save it (to a new file, then renamed over the old). Returns
        the rows it holds; a small archive keeps none."""
        rows = self.archive.rows
        if rows < GRAPH_FROM:
            return 0
        index, info = self._index(), self._info()
        start = self.held()
        if start:
            index.load(str(self.path))
        for first, block in chunks(self.archive.vectors(), start):
            index.add(np.arange(first, first + len(block), dtype=np.uint64), block,
                      threads=os.cpu_count() or 1)
        dead = np.setdiff1d(np.arange(rows), alive, assume_unique=True)
        if len(dead) > info["dead"]:  # files changed or removed since: their rows leave the graph
            index.remove(dead.astype(np.uint64))
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        index.save(str(tmp))
        os.replace(tmp, self.path)
        tmp_info = self.info_path.with_name(f".{self.info_path.name}.tmp{os.getpid()}")
        tmp_info.write_text(json.dumps({"rows": rows, "dead": len(dead)}))
        os.replace(tmp_info, self.info_path)
        return rows

    def _mapped(self):
        """The saved graph, memory-mapped once and again only when a writer has replaced it."""
        stat = self.path.stat()
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._view is None or self._view[0] != identity:
            index = self._index()
            index.view(str(self.path))
            self._view = (identity, index)
        return self._view[1]

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, cosine similarities)`` of about the ``k`` rows nearest ``query``: the graph's
        (approximate) and, exactly, the committed rows it does not hold yet."""
        held = self.held()
        vectors = self.archive.vectors()
        ids, sims = exact(vectors, query, k, start=held)
        if held:
            found = self._mapped().search(unit(query[None])[0].astype(np.float16), k)
            ids = np.concatenate([np.asarray(found.keys, np.int64), ids])
            sims = np.concatenate([1 - np.asarray(found.distances, np.float32), sims])
            order = np.argsort(-sims, kind="stable")[:k]
            ids, sims = ids[order], sims[order]
        return ids, sims
