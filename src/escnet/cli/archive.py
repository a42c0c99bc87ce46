"""Commands of archives of your own recordings: index, search, label, learn, rank, scan."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from escnet.cli.common import bars, text
from escnet.errors import EscnetError


def _open(path: str):
    from escnet.archive.db import Archive

    return Archive(path)


def index(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from escnet.archive.index import index_folder, parse_shard

    bar = tqdm(total=None, unit="file", desc="indexing", disable=not bars(args))

    def said(report, left: int, file: str) -> None:
        if bar.total is None:
            bar.total = left + report.indexed + len(report.unreadable)
        bar.update(1)
        bar.set_postfix_str(f"{report.hours:.2f} h, {report.realtime:.0f}× real time")

    shard = parse_shard(args.shard) if args.shard else None
    report = index_folder(args.folder, args.db, args.model, args.window, args.hop, args.workers, said, shard,
                          [Path(p) for p in args.merge])
    bar.close()
    for path, error in report.unreadable:
        print(f"escnet: unreadable, left out: {text(path)}: {text(error)}", file=sys.stderr)
    merged = f"{report.merged} merged from shards, " if args.merge else ""
    print(f"{args.db}: indexed {report.indexed} file(s), {report.hours:.2f} h of audio in "
          f"{report.seconds:.1f} s ({report.realtime:.0f}× real time); {merged}{report.unchanged} unchanged, "
          f"{report.removed} removed, {len(report.unreadable)} unreadable")
    return 0


def add_index(sub) -> None:
    p = sub.add_parser("index", help="embed every window of every recording under a folder into an "
                       "archive (searchable, labellable; new and changed files on the next call)")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--db", required=True, metavar="ARCHIVE", help="the archive folder (made if new)")
    p.add_argument("--model", default="mn04_as", help="a pretrained card (default mn04_as), a run "
                   "folder or a .pt checkpoint")
    p.add_argument("--window", type=float, metavar="S", help="seconds per window (a card's default 5; "
                   "a run's are its clips)")
    p.add_argument("--hop", type=float, metavar="S", help="seconds between window starts (default: "
                   "the window)")
    p.add_argument("--workers", type=int, help="processes (default: one per core)")
    p.add_argument("--shard", metavar="K/N", help="index only the K-th of N parts of the files (one job "
                   "of many, each into its own archive)")
    p.add_argument("--from", dest="merge", action="append", default=[], metavar="SHARD",
                   help="merge a shard's archive first (repeat; then the files no shard held are indexed)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=index)


def search(args: argparse.Namespace) -> int:
    from escnet.archive.search import embed_query, search, window_query

    archive = _open(args.db)
    if (args.query is None) == (args.like is None):
        raise EscnetError("give one of --query FILE[@START-END] and --like WINDOW_ID")
    query = embed_query(archive, args.query) if args.query else window_query(archive, args.like)
    hits = search(archive, query, args.top)
    if args.json:
        print(json.dumps([h.to_dict() for h in hits], indent=1))
        return 0
    print(f"{'id':>8}  {'score':>6}  {'start':>8}  {'end':>8}  file")
    for h in hits:
        w = h.window
        print(f"{w.id:>8}  {h.score:6.3f}  {w.start:8.2f}  {w.end:8.2f}  {text(w.file)}")
    return 0


def add_search(sub) -> None:
    p = sub.add_parser("search", help="the windows of an archive nearest an example (cosine)")
    p.add_argument("db", metavar="ARCHIVE")
    p.add_argument("--query", metavar="FILE[@START-END]", help="a recording (or a span of it, seconds)")
    p.add_argument("--like", type=int, metavar="WINDOW", help="a window of the archive, by id")
    p.add_argument("--top", type=int, default=10, metavar="K")
    p.add_argument("--json", action="store_true", help="a list of {id, file, start, end, score}")
    p.set_defaults(func=search)


def label(args: argparse.Namespace) -> int:
    from escnet.archive import labels as archive_labels

    actions = [bool(args.windows), args.undo, bool(args.import_file), bool(args.export),
               bool(args.export_csv)]
    if sum(actions) > 1:
        raise EscnetError("one thing at a time: window ids, --undo, --import, --export or --export-csv")
    if not any(actions):  # nothing to do here: the page
        return _page(args)
    archive = _open(args.db)
    if args.windows:
        if not args.label:
            raise EscnetError("--label NAME: what the windows are (or are not, with --negative)")
        kind = "negative" if args.negative else "uncertain" if args.uncertain else "positive"
        made = archive_labels.label_windows(archive, args.windows, args.label, kind)
        print(f"labelled {len(made)} window(s) {kind} for {text(args.label)!r} (batch {made[0].batch})")
    elif args.undo:
        undone = archive.undo()
        print(f"undid batch {undone[0].batch}: {len(undone)} label(s) of {text(undone[0].label)!r}")
    elif args.import_file:
        made, absent = archive_labels.import_labels(archive, args.import_file)
        for name in absent:
            print(f"escnet: not in the archive, not labelled: {text(name)}", file=sys.stderr)
        print(f"imported {made} label(s) from {args.import_file}")
    elif args.export:
        counts = archive_labels.export_dataset(archive, args.export)
        print(f"wrote {sum(counts.values())} clip(s) to {args.export}: "
              + ", ".join(f"{text(k)} {n}" for k, n in counts.items()) + f"; train with: escnet train "
              f"--data {args.export}")
    else:
        print(f"wrote {archive_labels.export_csv(archive, args.export_csv)} label(s) to {args.export_csv}")
    return 0


def _page(args: argparse.Namespace) -> int:
    from escnet.serve.app import serve
    from escnet.serve.settings import ServeSettings

    _open(args.db)  # not an archive: said before the server starts
    print(f"escnet: the labelling page of {args.db}: open http://127.0.0.1:{args.port}/ (Ctrl-C stops)",
          file=sys.stderr, flush=True)
    serve(ServeSettings(model="", port=args.port, db=args.db))
    return 0


def add_label(sub) -> None:
    p = sub.add_parser("label", help="label windows of an archive (or import, export, undo); with "
                       "nothing else, open the labelling page")
    p.add_argument("db", metavar="ARCHIVE")
    p.add_argument("windows", nargs="*", type=int, metavar="WINDOW", help="window ids (escnet search)")
    p.add_argument("--label", metavar="NAME")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--negative", action="store_true", help="the sound is not in these windows")
    kind.add_argument("--uncertain", action="store_true", help="it may be")
    p.add_argument("--undo", action="store_true", help="undo the last batch of labels")
    p.add_argument("--import", dest="import_file", metavar="FILE", help="labels from a CSV "
                   "(file,start,end,label[,type]), a Raven selection table or an Audacity label track")
    p.add_argument("--export", metavar="DIR", help="each positive label's audio as a clip in DIR/LABEL/: "
                   "a dataset escnet train takes")
    p.add_argument("--export-csv", metavar="FILE", help="every label, with how and when it was made")
    p.add_argument("--port", type=int, default=8000, help="the page's port (default 8000)")
    p.set_defaults(func=label)


def _learned(archive, args: argparse.Namespace):
    from escnet.archive.learn import learn

    return learn(archive, [args.label] if args.label else None, args.weak, args.seed)


def learn(args: argparse.Namespace) -> int:
    from escnet.archive.learn import save_run

    archive = _open(args.db)
    tick = time.perf_counter()
    learned = _learned(archive, args)
    name = args.label or "labels"
    out = Path(args.out or Path(args.db) / "models" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = save_run(archive, learned, out)
    seconds = time.perf_counter() - tick
    if args.json:
        print(json.dumps({**learned.to_dict(), "run": str(saved), "seconds": round(seconds, 3)}, indent=1))
        return 0
    print(f"learned {', '.join(map(text, learned.classes))} from "
          + ", ".join(f"{text(c)} {n['labelled']}" + (f" (+{n['weak']} weak)" if n["weak"] else "")
                      for c, n in learned.counts.items()) + f" in {seconds:.1f} s")
    for lab, e in learned.estimate.get("labels", {}).items():
        precision = "-" if e["precision"] is None else f"{100 * e['precision']:.0f} %"
        print(f"  {text(lab)}: estimated precision {precision}, recall {100 * e['recall']:.0f} % "
              "(cross-validated by recording; random unlabelled windows count as not the sound)")
    print(f"saved {saved}: escnet predict/export/serve take it; escnet scan {args.db} --model {saved}")
    return 0


def _add_learning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weak", type=int, default=500, metavar="N", help="random unlabelled windows "
                   "learned from as weak negatives (default 500; 0: none)")
    p.add_argument("--seed", type=int, default=0)


def add_learn(sub) -> None:
    p = sub.add_parser("learn", help="a calibrated classifier of an archive's labels, in seconds, saved "
                       "as an escnet run")
    p.add_argument("db", metavar="ARCHIVE")
    p.add_argument("--label", metavar="NAME", help="one label against the rest (default: every label)")
    p.add_argument("--out", metavar="RUNDIR", help="where to save it (default ARCHIVE/models/NAME-TIME)")
    p.add_argument("--json", action="store_true")
    _add_learning(p)
    p.set_defaults(func=learn)


def rank(args: argparse.Namespace) -> int:
    from escnet.archive.learn import rank

    archive = _open(args.db)
    chosen = rank(archive, _learned(archive, args), args.label, args.top, args.strategy)
    if args.json:
        print(json.dumps([{**w.to_dict(), "score": round(p, 5)} for w, p in chosen], indent=1))
        return 0
    print(f"{'id':>8}  {'p':>6}  {'start':>8}  {'end':>8}  file")
    for w, p in chosen:
        print(f"{w.id:>8}  {p:6.3f}  {w.start:8.2f}  {w.end:8.2f}  {text(w.file)}")
    return 0


def add_rank(sub) -> None:
    p = sub.add_parser("rank", help="the unlabelled windows worth labelling next (active learning)")
    p.add_argument("db", metavar="ARCHIVE")
    p.add_argument("--label", required=True, metavar="NAME")
    p.add_argument("--top", type=int, default=10, metavar="K")
    p.add_argument("--strategy", choices=["top", "margin", "mixed"], default="mixed",
                   help="the most likely, the least sure, or both in turn (default)")
    p.add_argument("--json", action="store_true")
    _add_learning(p)
    p.set_defaults(func=rank)


def scan(args: argparse.Namespace) -> int:
    from escnet.archive.learn import (
        check_threshold,
        learned_from_run,
        per_hour,
        scan,
        windows_with_scores,
        write_detections,
        write_per_hour,
    )
    from escnet.files import new_output

    if (args.label is None) == (args.model is None):
        raise EscnetError("give one of --label NAME (learned now from the labels) and --model RUN")
    check_threshold(args.threshold)
    for flag, path, suffixes in (("out", args.out, (".csv", ".txt")), ("per_hour", args.per_hour, (".csv",))):
        if path:
            new_output(path, flag, suffixes)  # before the work
    archive = _open(args.db)
    learned = learned_from_run(args.model, archive) if args.model else _learned(archive, args)
    name = args.label or next(c for c in learned.classes if c != "other")
    detections, ids, p = scan(archive, learned, name, args.threshold)
    if args.out:
        print(f"wrote {write_detections(detections, args.out)}", file=sys.stderr)
    if args.per_hour:
        written = write_per_hour(per_hour(detections), Path(args.per_hour), name)
        print(f"wrote {', '.join(map(str, written))}", file=sys.stderr)
    if args.windows:  # streamed: a million windows are never all in memory as objects
        rows = ({**w.to_dict(), "score": round(s, 5)} for w, s in windows_with_scores(archive, ids, p))
        if args.json:
            print("[", end="")
            for n, r in enumerate(rows):
                print(("," if n else "") + json.dumps(r), end="")
            print("]")
        else:
            print("id,file,start,end,score")
            for r in rows:
                print(f"{r['id']},{r['file']},{r['start']},{r['end']},{r['score']}")
    elif args.json:
        print(json.dumps([d.to_dict() for d in detections], indent=1))
    elif not args.out:
        print("file,label,start,end,confidence")
        for d in detections:
            print(f"{d.file},{d.label},{d.start:.3f},{d.end:.3f},{d.confidence:.4f}")
    print(f"escnet: {len(detections)} detection(s) of {text(name)!r} in {len(ids)} windows",
          file=sys.stderr)
    return 0


def add_scan(sub) -> None:
    p = sub.add_parser("scan", help="a classifier over every window of an archive (no audio decoded "
                       "again): detections, counts per hour")
    p.add_argument("db", metavar="ARCHIVE")
    p.add_argument("--label", metavar="NAME", help="learn NAME from the archive's labels and scan for it")
    p.add_argument("--model", metavar="RUN", help="a run learned from this archive (escnet learn) or a "
                   "pretrained-probe run of its card")
    p.add_argument("--threshold", type=float, default=0.5, metavar="P",
                   help="a window counts at this calibrated probability (default 0.5)")
    p.add_argument("--out", metavar="FILE", help="detections as .csv or a Raven selection table (.txt)")
    p.add_argument("--per-hour", metavar="FILE.csv", help="detections per hour (and FILE.png)")
    p.add_argument("--windows", action="store_true", help="every window's id, file, start, end, score")
    p.add_argument("--json", action="store_true")
    _add_learning(p)
    p.set_defaults(func=scan)


COMMANDS = (add_index, add_search, add_label, add_learn, add_rank, add_scan)
