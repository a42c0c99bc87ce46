"""``escnet evaluate-events``: a model's events scored on your own annotated recordings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from escnet.cli.common import (
    add_device_flags,
    add_event_flags,
    add_silence_flag,
    bars,
    event_settings,
    text,
)


def _out_folder(path: str) -> Path:
    """``--out``, checked before the work: a new or empty folder, and matplotlib there to draw
    in it."""
    from escnet.figures import pyplot
    from escnet.files import new_folder

    pyplot("--out (a plot per recording)")
    return new_folder(path, "out")


def evaluate_events(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from escnet.data.annotations import read_annotations
    from escnet.deploy.event_evaluation import check_scoring, evaluate_events, match_annotations, plot_file
    from escnet.deploy.predict import load_model_file
    from escnet.deploy.psds import SCENARIOS
    from escnet.files import atomic_write_json

    check_scoring(args.collar, args.offset_share, args.segment)  # settings first, then files
    out = _out_folder(args.out) if args.out else None
    model = load_model_file(args.model, args.device, args.threads)
    settings = event_settings(args)
    settings.for_model(model.info)
    rows = [a for path in args.annotations for a in read_annotations(path)]
    reference = match_annotations(rows, args.audio, model.info.classes)
    bar = tqdm(total=sum(reference.durations.values()), unit="s", desc="scoring", disable=not bars(args),
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]")
    result = evaluate_events(model, reference, settings, args.silence_db, args.collar, args.offset_share,
                             args.segment, SCENARIOS[args.psds_scenario],
                             each=lambda name, seconds: bar.update(seconds))
    bar.close()
    for name, error in result.unreadable:
        print(f"escnet: unreadable, not scored: {text(name)}: {error}", file=sys.stderr)
    report = result.to_dict()
    if out is not None:
        atomic_write_json(out / "evaluation.json", report)
        for i, f in enumerate(result.files):
            plot_file(f, out / f"{i + 1:04d}-{Path(f.name).stem[:60]}.png")
        print(f"wrote {out / 'evaluation.json'} and {len(result.files)} plots", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1, allow_nan=False))
    else:
        _print(report, args)
    return 2 if result.unreadable else 0


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _print(report: dict, args: argparse.Namespace) -> None:
    ev, seg, ps = report["event_based"], report["segment_based"], report["psds"]
    print(f"{report['files']} recordings, {report['hours']:.2f} h: {report['events']} annotated events, "
          f"{report['detected']} detected")
    print(f"{'':16}{'F1':>7}{'P':>7}{'R':>7}{'ER':>7}   class-average F1")
    for name, s, how in (("event-based", ev, f"onset within {args.collar:g} s, offset within "
                          f"max({args.collar:g} s, {args.offset_share:.0%})"),
                         ("segment-based", seg, f"{args.segment:g} s segments")):
        o = s["overall"]
        print(f"{name:16}{_num(o['f1']):>7}{_num(o['precision']):>7}{_num(o['recall']):>7}"
              f"{_num(o['error_rate']):>7}   {_num(s['class_average']['f1'])}   ({how})")
    c = ps["settings"]
    print(f"PSDS, scenario {args.psds_scenario} (dtc {c['dtc']:g}, gtc {c['gtc']:g}, cttc {c['cttc']}, "
          f"alpha_ct {c['alpha_ct']:g}, alpha_st {c['alpha_st']:g}, up to {c['max_efpr']:g} per hour): "
          f"{_num(ps['psds'])}")
    labels = sorted(set(ev["per_class"]) | set(seg["per_class"]))
    if labels:
        print(f"\n{'class':24}{'events':>7}{'found':>7}{'event F1':>10}{'segment F1':>12}{'PSD AUC':>9}")
    for label in labels:
        e, s = ev["per_class"].get(label, {}), seg["per_class"].get(label, {})
        auc = ps["per_class"].get(label, {}).get("auc")
        print(f"{text(label)[:23]:24}{e.get('ref', 0):>7}{e.get('sys', 0):>7}{_num(e.get('f1')):>10}"
              f"{_num(s.get('f1')):>12}{_num(auc):>9}")
    print("\n(— : undefined, as sed_eval reports it: no annotated or no detected events of that kind)")


def add_evaluate_events(sub) -> None:
    from escnet.deploy.event_metrics import COLLAR, OFFSET_SHARE, SEGMENT

    p = sub.add_parser("evaluate-events", help="score a model's events on your own annotated "
                       "recordings (event and segment F1, error rate, PSDS)")
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder, .pt checkpoint or exported .onnx")
    p.add_argument("--audio", required=True, metavar="DIR", help="the recordings (every audio file "
                   "under DIR; one no annotation names holds no events)")
    p.add_argument("--annotations", required=True, action="append", metavar="FILE",
                   help="CSV file,onset,offset,label; a Raven selection table; an Audacity label "
                   "track (named like its recording). Repeat for several files")
    p.add_argument("--json", action="store_true", help="the scores as JSON")
    p.add_argument("--out", metavar="DIR", help="write evaluation.json and a plot per recording "
                   "(annotated against detected events) into this new folder")
    p.add_argument("--collar", type=float, default=COLLAR, metavar="SECONDS",
                   help=f"event-based: onset (and least offset) tolerance (default {COLLAR:g})")
    p.add_argument("--offset-share", type=float, default=OFFSET_SHARE, metavar="SHARE",
                   help=f"event-based: offset tolerance as a share of the event (default {OFFSET_SHARE:g})")
    p.add_argument("--segment", type=float, default=SEGMENT, metavar="SECONDS",
                   help=f"segment-based: segment length (default {SEGMENT:g})")
    p.add_argument("--psds-scenario", type=int, choices=(1, 2), default=1,
                   help="DCASE's PSDS scenario: 1 (boundaries), 2 (finding sounds, cross-triggers) "
                   "(default 1)")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="seconds between scored windows "
                   "(default 0.25)")
    add_event_flags(p)
    add_silence_flag(p)
    add_device_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=evaluate_events)


COMMANDS = (add_evaluate_events,)
