"""Agile modelling on an archive of one's own recordings: how good the first search is, how fast
a classifier gets good as labels come in, and how fast the archive runs at a million windows.

``quality`` builds two archives of real sounds over real ambience: ESC-50 clips of 10 target and
10 distractor classes placed sparsely (one window in four) over beds of ESC-50's ambient classes
(rain, sea waves, wind, crickets, insects, crackling fire) at random levels. The searched
archive takes folds 2-4, the evaluation archive fold 5 (clips no label ever touched). For each
target class a simulated annotator searches with one clean clip of fold 1 (precision@10 of that
first search), labels the 10 results (the truth), then learns and labels the 10 windows
``rank`` shows (``mixed``), round after round. After 10, 20, 50, 100 and 200 labels the learned
classifier's average precision over the evaluation archive is taken, beside the same first
search followed by windows drawn at random, and beside a linear probe that learned from every
window of the searched archive with its truth (the ceiling of labelling). Indexing speed is
reported with what decoding alone costs.

``scale`` makes an archive of ``--windows`` synthetic vectors (clusters in the model's 384
dimensions, 5 s windows) and times: building the search graph, ``search`` (p50/p95 over 200
queries; recall@50 of the graph against exact search), ``learn`` + ``rank`` from 40 labels,
``scan`` (× real time), and the process's peak memory.

    ESCNET_WEIGHTS=../shared/weights python benchmarks/agile.py quality --data ../shared/data/esc50 \\
        --out runs/agile
    python benchmarks/agile.py scale --windows 1000000 --out runs/agile-scale
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from escnet.archive.db import Archive
from escnet.archive.learn import learn, rank, scan
from escnet.archive.search import embed_query, search
from escnet.archive.vectors import Graph, exact, unit

RATE, WINDOW = 32000, 5.0
TARGETS = ["dog", "rooster", "cow", "crying_baby", "door_wood_knock", "church_bells", "siren", "car_horn",
           "chainsaw", "clock_alarm"]
DISTRACTORS = ["cat", "hen", "sheep", "laughing", "footsteps", "keyboard_typing", "vacuum_cleaner",
               "airplane", "train", "glass_breaking"]
BEDS = ["rain", "sea_waves", "wind", "crickets", "insects", "crackling_fire"]
BUDGETS = (10, 20, 50, 100, 200)
ROUND = 10


# --- the scenes -------------------------------------------------------------------------------

def _rms_db(x: np.ndarray) -> float:
    loud = x[np.abs(x) > 1e-4]  # ESC-50 pads short sounds with digital silence
    return 10 * np.log10(np.mean(loud**2) + 1e-12) if len(loud) else -120.0


def _clip(path: str) -> np.ndarray:
    from escnet.data.audio import AudioFile

    with AudioFile(path) as f:
        x = f.excerpt(RATE, 0.0, WINDOW)
    return np.pad(x, (0, int(WINDOW * RATE) - len(x)))


def build_scene(esc50: Path, out: Path, folds: list[int], recordings: int, seed: int
                ) -> dict[tuple[str, float], str]:
    """Recordings of beds with the target and distractor clips of ``folds`` in one window of
    four (aligned to the archive's windows), written to ``out``; returns the truth: the class
    of each window holding an event, by (file, start)."""
    from escnet.data.tables import read_esc50

    table = read_esc50(esc50)
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    for path, label, fold in zip(table.paths, table.labels, table.folds, strict=True):
        if fold in folds:
            by_class.setdefault(table.classes[label], []).append(path)
    events = [(c, p) for c in TARGETS + DISTRACTORS for p in by_class[c]]
    order = rng.permutation(len(events))
    slots = 4 * len(events)
    per_recording = -(-slots // recordings)
    where = rng.permutation(slots)[: len(events)]
    beds = {b: [_clip(p) for p in by_class[b]] for b in BEDS}
    out.mkdir(parents=True, exist_ok=True)
    truth: dict[tuple[str, float], str] = {}
    placed = dict(zip(where.tolist(), (events[i] for i in order), strict=True))
    for r in range(recordings):
        bed = beds[BEDS[r % len(BEDS)]]
        parts = []
        for w in range(per_recording):
            slot = r * per_recording + w
            part = bed[rng.integers(len(bed))] * 10 ** ((-32 - _rms_db(bed[0])) / 20)  # ambience at -32 dB
            part = part * 10 ** ((rng.uniform(-4, 4)) / 20)
            if slot in placed:
                name, path = placed[slot]
                clip = _clip(path)
                part = part + clip * 10 ** ((rng.uniform(-26, -14) - _rms_db(clip)) / 20)
                truth[(f"r{r:02d}.wav", w * WINDOW)] = name
            parts.append(part)
        audio = np.concatenate(parts)
        sf.write(out / f"r{r:02d}.wav", np.clip(audio, -1, 1), RATE, subtype="PCM_16")
    return truth


def decode_seconds(folder: Path) -> float:
    """Seconds to decode and resample every recording of ``folder`` (what indexing must pay
    before any model runs)."""
    from escnet.data.audio import AudioFile

    tick = time.perf_counter()
    for path in sorted(folder.glob("*.wav")):
        with AudioFile(path) as f:
            for _ in f.blocks(RATE, 60.0):
                pass
    return time.perf_counter() - tick


# --- the simulated annotator ------------------------------------------------------------------

def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(truth, scores)) if truth.any() else float("nan")


def annotate(archive_path: Path, work: Path, truth: dict, label: str, query: str,
             evaluation: tuple[np.ndarray, np.ndarray], strategy: str, seed: int = 0) -> dict:
    """One target class: the first search's precision@10, then the average precision over the
    evaluation archive (``(vectors, classes)``) after each budget of :data:`BUDGETS`, labelling
    what ``rank`` shows (``strategy`` ``mixed``) or windows at random (``random``)."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(archive_path, work)
    archive = Archive(work)
    rng = np.random.default_rng(seed)
    windows = archive.windows(archive.alive())
    is_label = {i: truth.get((w.file, w.start)) == label for i, w in windows.items()}
    done: set[int] = set()
    eval_vectors, eval_classes = evaluation
    vector = embed_query(archive, query)

    def mark(ids: list[int], source: str) -> None:
        with archive.writing():
            for kind in ("positive", "negative"):
                spans = [(windows[i].file, windows[i].start, windows[i].end) for i in ids
                         if is_label[i] == (kind == "positive")]
                if spans:
                    archive.add_labels(spans, label, kind, source)
        done.update(ids)
        if len(done) in BUDGETS:
            found = any(is_label[i] for i in done)
            learned = learn(archive, [label], seed=seed) if found else None
            result[f"ap_{len(done)}"] = average_precision(
                eval_classes == label, learned.probabilities(eval_vectors)[:, 0]) if learned else 0.0

    first = search(archive, vector, ROUND)
    result = {"label": label, "strategy": strategy,
              "precision_at_10": float(np.mean([is_label[h.window.id] for h in first]))}
    mark([h.window.id for h in first], "search")
    asked = ROUND
    while len(done) < BUDGETS[-1]:
        if not any(is_label[i] for i in done):  # nothing found yet: further down the search
            asked += ROUND
            batch = [h.window.id for h in search(archive, vector, asked) if h.window.id not in done][:ROUND]
        elif strategy == "random":
            free = np.setdiff1d(np.fromiter(windows, np.int64), np.fromiter(done, np.int64))
            batch = rng.choice(free, ROUND, replace=False).tolist()
        else:
            learned = learn(archive, [label], seed=seed)
            batch = [w.id for w, _ in rank(archive, learned, label, ROUND, "mixed")]
        mark(batch, "rank")
    archive.close()
    return result


def ceiling(archive_path: Path, work: Path, truth: dict, label: str, evaluation: tuple) -> float:
    """Average precision of a linear probe that learned from every window of the searched
    archive, labelled by the truth."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(archive_path, work)
    archive = Archive(work)
    windows = archive.windows(archive.alive()).values()
    with archive.writing():
        for kind, wanted in (("positive", True), ("negative", False)):
            archive.add_labels([(w.file, w.start, w.end) for w in windows
                                if (truth.get((w.file, w.start)) == label) == wanted], label, kind, "import")
    learned = learn(archive, [label], weak=0)
    p = learned.probabilities(evaluation[0])[:, learned.classes.index(label)]
    archive.close()
    return average_precision(evaluation[1] == label, p)


def quality(args: argparse.Namespace) -> None:
    from escnet.archive.index import index_folder
    from escnet.data.tables import read_esc50
    from escnet.machine import machine_description

    out = Path(args.out)
    esc50 = Path(args.data)
    scenes: dict[str, tuple[Path, dict]] = {}
    for name, folds, recordings, seed in (("search", [2, 3, 4], 16, 1), ("evaluation", [5], 6, 2)):
        folder = out / f"{name}-recordings"
        truth_path = out / f"{name}-truth.json"
        if not truth_path.exists():
            truth = build_scene(esc50, folder, folds, recordings, seed)
            truth_path.write_text(json.dumps([[f, s, c] for (f, s), c in truth.items()]))
        truth = {(f, s): c for f, s, c in json.loads(truth_path.read_text())}
        scenes[name] = (folder, truth)
    timings_path = out / "index.json"  # measured when the archives were made, kept for reruns
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for name, (folder, _) in scenes.items():
        db = out / f"{name}-archive"
        if not (db / Archive.SQLITE).exists():
            report = index_folder(folder, db, args.model, workers=args.workers)
            timings[name] = {"hours": report.hours, "seconds": report.seconds, "realtime": report.realtime,
                             "decode_seconds": decode_seconds(folder)}
            timings_path.write_text(json.dumps(timings, indent=1))
        if name in timings:
            t = timings[name]
            print(f"indexed {name}: {t['hours']:.2f} h in {t['seconds']:.1f} s ({t['realtime']:.0f}× real "
                  f"time; decoding alone {t['decode_seconds']:.1f} s)", flush=True)
    evaluation = Archive(out / "evaluation-archive")
    ids = evaluation.alive()
    eval_windows = evaluation.windows(ids)
    eval_truth = scenes["evaluation"][1]
    classes = np.array([eval_truth.get((eval_windows[i].file, eval_windows[i].start), "") for i in ids])
    eval_set = (np.asarray(evaluation.vectors()[ids], np.float32), classes)

    table = read_esc50(esc50)
    rows = []
    for label in TARGETS:
        query = next(p for p, lab, f in zip(table.paths, table.labels, table.folds, strict=True)
                     if f == 1 and table.classes[lab] == label)
        for strategy in ("mixed", "random"):
            tick = time.perf_counter()
            row = annotate(out / "search-archive", out / "work", scenes["search"][1], label, query, eval_set,
                           strategy)
            row["seconds"] = time.perf_counter() - tick
            rows.append(row)
        best = ceiling(out / "search-archive", out / "work", scenes["search"][1], label, eval_set)
        rows.append({"label": label, "strategy": "all labelled", "ap_all": best})
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for r in rows[-3:]
                       for k, v in r.items()), flush=True)
    shutil.rmtree(out / "work", ignore_errors=True)

    def mean(strategy: str, key: str) -> float:
        return float(np.nanmean([r[key] for r in rows if r["strategy"] == strategy]))

    summary = {"machine": machine_description(), "model": args.model, "index": timings,
               "precision_at_10": mean("mixed", "precision_at_10"),
               "map": {s: {b: mean(s, f"ap_{b}") for b in BUDGETS} for s in ("mixed", "random")},
               "map_all_labelled": mean("all labelled", "ap_all"), "classes": rows}
    (out / "agile.json").write_text(json.dumps(summary, indent=1))
    with (out / "agile.csv").open("w", newline="") as f:
        keys = ["label", "strategy", "precision_at_10", *[f"ap_{b}" for b in BUDGETS], "ap_all", "seconds"]
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nfirst search precision@10: {summary['precision_at_10']:.3f} (mean of {len(TARGETS)} classes)")
    print(f"{'labels':>8} {'active mAP':>11} {'random mAP':>11}")
    for b in BUDGETS:
        print(f"{b:>8} {summary['map']['mixed'][b]:>11.3f} {summary['map']['random'][b]:>11.3f}")
    print(f"{'all':>8} {summary['map_all_labelled']:>11.3f}   (every window of the searched archive "
          "labelled)")
    print(f"machine: {summary['machine']}")


# --- scale ------------------------------------------------------------------------------------

def synthetic_archive(path: Path, windows: int, dim: int = 384, files: int = 1000, seed: int = 0) -> Archive:
    """An archive of ``windows`` clustered vectors (1000 clusters), ``files`` recordings of
    consecutive 5 s windows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    archive = Archive.create(path, {"model": "synthetic", "card": "", "sha256": "-", "window": "5",
                                    "hop": "5", "dim": str(dim), "sample_rate": "32000", "root": str(path)})
    per_file = windows // files
    starts = np.arange(per_file) * WINDOW
    spans = np.stack([starts, starts + WINDOW], 1)
    with archive.writing():
        for f in range(files):
            which = rng.integers(1000, size=per_file)
            vectors = centres[which] + 0.6 * rng.standard_normal((per_file, dim)).astype(np.float32)
            archive.add_file(f"site{f % 10}/{f:05d}.wav", 0, 0, per_file * WINDOW, spans,
                             np.full(per_file, -30.0), vectors)
    return archive


def peak_mb(reset: bool = False) -> float:
    """The process's peak resident memory so far (MB; pages of memory-mapped files it touched
    count), then, with ``reset``, the peak set back to the current use (Linux)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM"))
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    return peak / 1024


def scale(args: argparse.Namespace) -> None:
    from escnet.archive.search import Query
    from escnet.machine import machine_description

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    tick = time.perf_counter()
    archive = synthetic_archive(out / "archive", args.windows)
    made = time.perf_counter() - tick
    tick = time.perf_counter()
    with archive.writing():
        Graph(archive).update(archive.alive())
    built = time.perf_counter() - tick
    built_mb = peak_mb(reset=True)
    print(f"{archive.rows} windows written in {made:.1f} s; graph built in {built:.1f} s (peak memory "
          f"{built_mb:.0f} MB)", flush=True)

    vectors = archive.vectors()
    rng = np.random.default_rng(1)
    graph, latency, api, recall = Graph(archive), [], [], []
    for q in rng.integers(archive.rows, size=200):
        noisy = np.asarray(vectors[q], np.float32)[None] + 0.3 * rng.standard_normal((1, archive.dim))
        query = unit(noisy)[0]
        tick = time.perf_counter()
        ids, _ = graph.search(query, 50)
        latency.append(time.perf_counter() - tick)
        truth, _ = exact(vectors, query, 50)
        recall.append(len(set(ids.tolist()) & set(truth.tolist())) / 50)
        tick = time.perf_counter()
        search(archive, Query(query), 10)
        api.append(time.perf_counter() - tick)
    p = lambda xs, q: 1000 * float(np.percentile(xs, q))  # noqa: E731 - milliseconds
    print(f"graph search: p50 {p(latency, 50):.1f} ms, p95 {p(latency, 95):.1f} ms, recall@50 "
          f"{np.mean(recall):.3f} against exact; search() with its lookups: p95 {p(api, 95):.1f} ms",
          flush=True)

    near, _ = exact(vectors, np.asarray(vectors[0], np.float32), 20)  # a sound: one cluster's windows
    far = rng.choice(archive.rows, 20, replace=False)
    with archive.writing():
        for kind, ids in (("positive", near), ("negative", far)):
            found = archive.windows(ids.tolist())
            archive.add_labels([(w.file, w.start, w.end) for w in found.values()], "target", kind, "import")
    tick = time.perf_counter()  # scikit-learn is imported once a process: timed apart (the page is warm)
    import sklearn.linear_model
    import sklearn.model_selection  # noqa: F401
    imported = time.perf_counter() - tick
    tick = time.perf_counter()
    learned = learn(archive, ["target"])
    learned_s = time.perf_counter() - tick
    rank(archive, learned, "target", 10)
    ranked_s = time.perf_counter() - tick - learned_s
    tick = time.perf_counter()
    detections, _, _ = scan(archive, learned, "target")
    scan_s = time.perf_counter() - tick
    audio = archive.rows * WINDOW
    peak = peak_mb()
    summary = {"machine": machine_description(), "windows": archive.rows, "write_seconds": made,
               "graph_seconds": built, "search_p50_ms": p(latency, 50), "search_p95_ms": p(latency, 95),
               "search_api_p95_ms": p(api, 95), "recall_at_50": float(np.mean(recall)),
               "import_seconds": imported, "learn_seconds": learned_s, "rank_seconds": ranked_s,
               "scan_seconds": scan_s,
               "scan_realtime": audio / scan_s, "peak_rss_mb_building": built_mb, "peak_rss_mb_reading": peak,
               "vectors_mb": (out / "archive" / Archive.VECTORS).stat().st_size / 2**20}
    print(f"learn {learned_s:.2f} s + rank {ranked_s:.2f} s = {learned_s + ranked_s:.2f} s (scikit-learn's "
          f"import, once a process: {imported:.1f} s); scan "
          f"{scan_s:.1f} s ({summary['scan_realtime']:,.0f}× real time, {len(detections)} detections); "
          f"peak memory since the graph was built {peak:.0f} MB, mapped files included "
          f"(vectors {summary['vectors_mb']:.0f} MB)")
    print(f"machine: {summary['machine']}")
    (out / "scale.json").write_text(json.dumps(summary, indent=1))
    archive.close()
    shutil.rmtree(out / "archive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--data", required=True, help="the ESC-50 folder")
    q.add_argument("--model", default="mn04_as")
    q.add_argument("--workers", type=int)
    q.add_argument("--out", default="runs/agile")
    s = sub.add_parser("scale")
    s.add_argument("--windows", type=int, default=1_000_000)
    s.add_argument("--out", default="runs/agile-scale")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    (quality if args.part == "quality" else scale)(args)


if __name__ == "__main__":
    main()
