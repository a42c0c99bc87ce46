"""``escnet index DIR --db ARCHIVE``: every window of every recording under a folder, embedded
and stored (:mod:`escnet.archive.db`).

Files are found recursively (every format escnet decodes), decoded block by block (a
recording of any length is never whole in memory) and embedded by worker processes, one per
core, each with one PyTorch thread (a small model runs faster so than on threads of one
process); the main process writes each file's windows in one transaction as it comes. A second
call indexes what was added or changed since (by size and modification time) and drops what
was removed; files a killed call left half done are indexed again. Unreadable files are listed
and skipped, and tried again once they change.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from escnet.archive.db import Archive
from escnet.archive.vectors import Graph
from escnet.cards import CARDS
from escnet.data.audio import AUDIO_EXTENSIONS, AudioFile, audio_files
from escnet.errors import AudioError, EscnetError
from escnet.files import utf8_text
from escnet.machine import PARENT_PID, available_cores, die_with_parent

WINDOW = 5.0
"""Seconds of audio per window for a pretrained card (a run's windows are its clips)."""


@dataclass
class IndexReport:
    """What one call of :func:`index_folder` did."""

    indexed: int = 0
    merged: int = 0
    """Files taken from shards (:func:`merge_shards`), not embedded again."""
    unchanged: int = 0
    removed: int = 0
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    hours: float = 0.0
    """Hours of audio indexed by this call."""
    seconds: float = 0.0
    """Wall-clock seconds it took."""

    @property
    def realtime(self) -> float:
        """Times real time: hours indexed per hour of wall clock."""
        return self.hours * 3600 / self.seconds if self.seconds else 0.0


def shard_files(folder: Path, shard: tuple[int, int] | None = None) -> dict[str, Path]:
    """:func:`~escnet.data.audio.audio_files` of ``folder``; with ``shard`` ``(k, n)``, the k-th
    of n parts of them, chosen by a hash of the path (a file stays in its part however many
    files are added)."""
    files = audio_files(folder)
    if shard is None:
        return files
    k, n = shard
    return {rel: p for rel, p in files.items() if zlib.crc32(rel.encode()) % n == k - 1}


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` → ``(k, n)``, 1 ≤ k ≤ n."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise EscnetError(f"shard={text}: K/N, the K-th of N parts (1 <= K <= N), e.g. 3/8")
    return int(k), int(n)


SAME = ("root", "model", "sha256", "window", "hop", "dim")
"""What an archive and the shards merged into it must share."""


def merge_shards(archive: Archive, shards: list[Path]) -> int:
    """Copy into ``archive`` (held for writing) every recording of ``shards`` (archives of parts
    of the same folder, by the same model) that it lacks or holds in another version: windows
    and embeddings as they are, nothing embedded again. Returns the files copied."""
    copied = 0
    for path in shards:
        shard = Archive(path)
        if differ := [k for k in SAME if shard.meta.get(k) != archive.meta.get(k)]:
            raise EscnetError(f"from={path}: its {differ[0]} is {shard.meta.get(differ[0])}, the archive's "
                              f"{archive.meta.get(differ[0])}: shards are indexed from the same folder "
                              "path with the same model, window and hop")
        known, vectors = archive.files(), shard.vectors()
        rows = shard.db.execute("SELECT id, path, size, mtime_ns, duration, first, windows, error FROM files")
        for file_id, rel, size, mtime_ns, duration, first, n, error in rows.fetchall():
            if known.get(rel, (None, None))[:2] == (size, mtime_ns):
                continue
            copied += 1
            if error is not None:
                archive.add_unreadable(rel, size, mtime_ns, error)
                continue
            windows = np.array(shard.db.execute(
                "SELECT start, end, level_db FROM windows WHERE file = ? ORDER BY id", (file_id,)).fetchall(),
                np.float64).reshape(-1, 3)
            archive.add_file(rel, size, mtime_ns, duration, windows[:, :2], windows[:, 2],
                             vectors[first : first + n] if n else np.zeros((0, archive.dim), np.float16))
        shard.close()
    return copied


def describe_model(spec: str, window: float | None, hop: float | None) -> dict[str, str]:
    """What an archive records of its model (and that a later call must match): its name, the
    card and weights digest, or the run or file and its digest."""
    card = CARDS.get(spec)
    if card is not None:
        window = window or WINDOW
        return {"model": spec, "card": spec, "sha256": card.weights.sha256 or "unpinned",
                "window": f"{window:g}", "hop": f"{hop or window:g}"}
    path = Path(spec)
    if not path.exists():
        names = ", ".join(n for n, c in CARDS.items() if c.family == "efficientat-mn")
        raise EscnetError(f"model={spec}: not a pretrained name ({names}), a run folder or a checkpoint")
    digest = hashlib.sha256()
    for part in sorted(path.rglob("last.pt")) if path.is_dir() else [path]:
        digest.update(part.read_bytes())
    return {"model": str(path.resolve()), "card": "", "sha256": digest.hexdigest(),
            "window": f"{window:g}" if window else "", "hop": f"{hop:g}" if hop else ""}


_EMBEDDER = None


def _start_worker(spec: str, window: float, threads: int, parent: int | None = None) -> None:
    """The model embedding in this process, on ``threads`` PyTorch threads; in a worker
    process of ``parent``, which it leaves with."""
    global _EMBEDDER
    import torch

    from escnet.deploy.embed import Embedder

    if parent is not None:
        os.environ[PARENT_PID] = str(parent)
        die_with_parent()
    torch.set_num_threads(threads)
    _EMBEDDER = Embedder.from_path(spec, window=window if spec in CARDS else None)


def _embed_file(path: str, hop: float) -> tuple:
    """``(duration, spans (n, 2), levels (n,), vectors (n, dim))`` of one recording, or
    ``(error,)`` when it cannot be read."""
    try:
        with AudioFile(path) as audio:
            rows = list(_EMBEDDER.scorer.recording(audio, hop))
        spans = np.array([w.seconds(_EMBEDDER.sample_rate) for w, _ in rows], np.float64).reshape(-1, 2)
        return (float(spans[:, 1].max()) if len(spans) else 0.0, spans,
                np.array([w.level_db for w, _ in rows], np.float32),
                np.stack([v for _, v in rows]).astype(np.float16))
    except AudioError as err:
        return (str(err),)


def _results(todo: list[tuple[str, Path]], spec: str, window: float, hop: float, workers: int
             ) -> Iterator[tuple[str, tuple]]:
    """Each file of ``todo`` embedded (:func:`_embed_file`), as they finish: in this process
    with one worker, else in ``workers`` processes."""
    if workers == 1:
        _start_worker(spec, window, available_cores())
        for rel, path in todo:
            yield rel, _embed_file(str(path), hop)
        return
    context = multiprocessing.get_context("spawn")  # no torch state forked into the workers
    with ProcessPoolExecutor(workers, context, initializer=_start_worker,
                             initargs=(spec, window, 1, os.getpid())) as pool:  # they leave with this one
        futures = {pool.submit(_embed_file, str(path), hop): rel for rel, path in todo}
        for done in as_completed(futures):
            yield futures[done], done.result()


def open_archive(db: str | Path, folder: Path, model: str, window: float | None, hop: float | None
                 ) -> Archive:
    """The archive at ``db`` of the recordings under ``folder``, made if new, for ``model``; one
    made with another model (or window, or hop) or of another folder is refused: windows of two
    models are not comparable, and paths are kept relative to the folder."""
    wanted = describe_model(model, window, hop) | {"root": str(folder.resolve())}
    path = Path(db)
    if not (path / Archive.SQLITE).is_file():
        from escnet.deploy.embed import Embedder

        embedder = Embedder.from_path(model, window=float(wanted["window"]) if wanted["card"] else None)
        if window and not wanted["card"] and abs(window - embedder.clip_seconds) > 1e-9:
            raise EscnetError(f"window={window:g}: {model} scores windows of its clips, "
                              f"{embedder.clip_seconds:g} s")
        wanted["window"] = f"{embedder.clip_seconds:g}"
        wanted["hop"] = wanted["hop"] or wanted["window"]
        return Archive.create(path, {**wanted, "dim": str(embedder.dim),
                                     "sample_rate": str(embedder.sample_rate)})
    archive = Archive(path)
    for key in ("root", "model", "sha256") + (("window", "hop") if window or hop else ()):
        if wanted[key] and archive.meta.get(key) != wanted[key]:
            raise EscnetError(f"db={path}: indexed with {key} {archive.meta.get(key)} (model "
                              f"{archive.meta.get('model')}); asked for {wanted[key]}: an archive "
                              "holds one folder's windows of one model; index into a new archive")
    return archive


def index_folder(folder: str | Path, db: str | Path, model: str = "mn04_as", window: float | None = None,
                 hop: float | None = None, workers: int | None = None,
                 progress: Callable[[IndexReport, int, str], None] | None = None,
                 shard: tuple[int, int] | None = None, shards: list[Path] | None = None) -> IndexReport:
    """Index the audio files under ``folder`` into the archive ``db`` (made if new) with
    ``model`` (a pretrained card, a run folder or a checkpoint), windows of ``window`` seconds
    every ``hop`` (default: the window), ``workers`` processes (default one per core).
    ``progress(report, files left, file)`` is told of each file as it is done.

    Beyond one machine: ``shard=(k, n)`` indexes only the k-th of n parts of the files (each
    part into its own archive, by its own job), and ``shards`` merges such archives into this
    one before the files still missing are indexed (:func:`merge_shards`)."""
    started = time.perf_counter()
    folder = Path(folder)
    if not folder.is_dir():
        raise EscnetError(f"{folder}: not a folder of recordings")
    if hop is not None and not 0.05 <= hop <= 3600:
        raise EscnetError(f"hop={hop}: seconds between window starts, 0.05 to 3600")
    if not audio_files(folder):
        raise EscnetError(f"{folder}: no audio files in it or its subfolders "
                          f"({', '.join(AUDIO_EXTENSIONS)})")
    found = shard_files(folder, shard)
    workers = workers or available_cores()
    if workers < 1:
        raise EscnetError(f"workers={workers}: at least 1")
    archive = open_archive(db, folder, model, window, hop)
    report = IndexReport()
    for rel in [rel for rel in found if utf8_text(rel) != rel]:  # listed on every call, never stored
        del found[rel]
        report.unreadable.append((utf8_text(rel), "its name is not UTF-8 text, which an archive keeps "
                                  "names in: rename it"))
    part = f"{shard[0]}/{shard[1]}" if shard else ""
    if archive.meta.get("shard", part) != part:
        raise EscnetError(f"db={db}: holds shard {archive.meta['shard']} of the files, not "
                          f"{part or 'all of them'}: merge shards into a new archive (--from)")
    with archive.writing():
        if shard is not None:
            archive.set_meta("shard", part)
        report.merged = merge_shards(archive, shards or [])
        known = archive.files()
        stats = {rel: path.stat() for rel, path in found.items()}
        todo = [(rel, found[rel]) for rel in found
                if known.get(rel, (None, None))[:2] != (stats[rel].st_size, stats[rel].st_mtime_ns)]
        report.unchanged = len(found) - len(todo) - report.merged
        report.removed = archive.remove_files(sorted(set(known) - set(found)))
        hop_seconds = float(archive.meta["hop"])
        for n, (rel, result) in enumerate(_results(todo, model, float(archive.meta["window"]),
                                                   hop_seconds, min(workers, max(len(todo), 1)))):
            stat = stats[rel]
            if len(result) == 1:
                archive.add_unreadable(rel, stat.st_size, stat.st_mtime_ns, result[0])
                report.unreadable.append((rel, result[0]))
            else:
                duration, spans, levels, vectors = result
                archive.add_file(rel, stat.st_size, stat.st_mtime_ns, duration, spans, levels, vectors)
                report.indexed += 1
                report.hours += duration / 3600
            report.seconds = time.perf_counter() - started
            if progress is not None:
                progress(report, len(todo) - n - 1, rel)
        Graph(archive).update(archive.alive())
    report.seconds = time.perf_counter() - started
    archive.close()
    return report
