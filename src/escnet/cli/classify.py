"""Commands that classify, tag or embed audio with a model: predict, listen, tag, embed, and
export (a model made fit to ship)."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from escnet.cli.common import (
    add_device_flags,
    add_event_flags,
    add_silence_flag,
    each_readable,
    event_flags_given,
    event_settings,
    text,
    unreadable_status,
)
from escnet.errors import EscnetError


def _check_predict_flags(args: argparse.Namespace) -> None:
    """Flags that make no sense together, before any model or file is opened."""
    if args.top_k < 1:
        raise EscnetError(f"--top-k {args.top_k}: must be at least 1")
    if args.timeline and args.events:
        raise EscnetError("--timeline and --events: choose one (windows, or events with a start and end)")
    if not (args.timeline or args.events) and (args.hop is not None or args.out or args.plot):
        raise EscnetError("--hop, --out and --plot describe a timeline or events: add --timeline or --events")
    if args.plot and not args.timeline:
        raise EscnetError("--plot draws a timeline: add --timeline")
    if not args.events and event_flags_given(args):
        raise EscnetError("--window, --on, --off, --smooth, --min-duration, --max-gap and --lookahead "
                          "shape events: add --events")
    if args.plot and len(args.files) > 1:
        raise EscnetError(f"--plot draws one recording; {len(args.files)} files were given")


def predict(args: argparse.Namespace) -> int:
    from escnet.deploy.predict import Predictor
    from escnet.deploy.timeline import TIMELINE_SUFFIXES
    from escnet.files import new_output

    _check_predict_flags(args)
    if args.out:  # every output is checked before any work
        new_output(args.out, "out", TIMELINE_SUFFIXES)
    if args.plot:  # before scoring: a missing matplotlib is said first, not last
        from escnet.figures import pyplot

        new_output(args.plot, "plot", (".png",))
        pyplot("--plot")
    predictor = Predictor.from_path(args.model, args.device, args.threads, silence_db=args.silence_db)
    if args.sample_rate is not None and args.sample_rate != predictor.info.sample_rate:
        raise EscnetError(f"{args.model}: the model takes {predictor.info.sample_rate} Hz audio, not "
                          f"--sample-rate {args.sample_rate}")
    if args.events:
        return _predict_events(predictor, args)
    results, unreadable = each_readable(args.files, lambda path: (
        predictor.timeline(path, args.hop) if args.timeline else predictor.predict_file(path, args.top_k)))
    if args.timeline:
        _print_timelines(results, args)
    elif args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, allow_nan=False))
    else:
        for r in results:
            print(f"{text(r.path)} ({r.windows} window{'' if r.windows == 1 else 's'}):")
            if r.label == "unknown":
                heard = ", ".join(f"{text(t)!r} {p:.2f}" for t, p in r.sounds_like)
                like = f" — sounds like {heard}" if heard else ""
                print(f"  answer: unknown (none of the model's classes){like}; best guesses:")
            elif r.label is not None:
                print(f"  answer: {text(r.label)}")
            for label, prob in r.top:
                print(f"  {prob:7.2%}  {text(label)}")
            for note in r.notes:
                print(f"  note: {note}")
    return unreadable_status(unreadable, len(args.files))


def _predict_events(predictor, args: argparse.Namespace) -> int:
    from escnet.deploy.events import detect_events, events_csv, write_events

    settings = event_settings(args)
    settings.for_model(predictor.info)  # a bad setting is said once, before any file
    results, unreadable = each_readable(args.files, lambda path: (
        path, detect_events(predictor.model, path, settings, args.silence_db)))
    if args.out:
        print(f"wrote {write_events(results, args.out)}", file=sys.stderr)
    elif args.json:  # one object per line and file: JSON Lines
        for path, events in results:
            print(json.dumps({"file": str(path), "events": [e.to_dict() for e in events]}))
    else:
        print(events_csv(results), end="")
    return unreadable_status(unreadable, len(args.files))


def _print_timelines(timelines: list, args: argparse.Namespace) -> None:
    from escnet.deploy.timeline import plot_timeline, timeline_csv, timeline_json, write_timeline

    if args.out:
        print(f"wrote {write_timeline(timelines, args.out)}", file=sys.stderr)
    else:
        print(timeline_json(timelines) if args.json else timeline_csv(timelines), end="")
    if args.plot and timelines:
        print(f"wrote {plot_timeline(timelines[0], args.plot)}", file=sys.stderr)


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify audio files (whole, or as a timeline)")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="an exported .onnx file (ONNX Runtime, no PyTorch needed), a run folder "
                   "(all its fold models averaged) or a .pt checkpoint")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="JSON instead of text (or CSV)")
    p.add_argument("--timeline", action="store_true", help="the top class of every window over "
                   "time (CSV: file,start,end,label,probability,level_db) instead of one average")
    p.add_argument("--events", action="store_true", help="sound events with a start and an end "
                   "(CSV: file,label,start,end,confidence; --json: a line per file)")
    p.add_argument("--hop", type=float, metavar="SECONDS",
                   help="timeline, events: seconds between windows (default half a clip; events 0.25)")
    p.add_argument("--out", metavar="FILE", help="timeline, events: write .csv or .json here, not stdout")
    p.add_argument("--plot", metavar="PNG", help="timeline: also draw it (one input file)")
    add_event_flags(p, "events: ")
    add_silence_flag(p)
    p.add_argument("--sample-rate", type=int, metavar="HZ",
                   help="refuse a model that does not take audio at this rate")
    add_device_flags(p)
    p.set_defaults(func=predict)


def listen(args: argparse.Namespace) -> int:
    from escnet.deploy.live import Listening, raw_format

    listening = Listening(args.model, args.input, raw_format(args.rate, args.format, args.channels),
                          event_settings(args), args.silence_db, args.out, args.realtime, args.device,
                          args.threads, args.timeout)
    source = listening.source
    print(f"escnet: listening to {source.name} ({source.sample_rate} Hz); events as they start and "
          "end; Ctrl-C (or SIGTERM) stops", file=sys.stderr, flush=True)

    def emit(message, wall: str) -> None:
        print(f"{wall}  {message.decided:9.2f} s  {message.state:5s}  {text(message.label):<22s} "
              f"at {message.time:8.2f} s  confidence {message.confidence:.2f}", flush=True)

    def stop(signum, frame) -> None:
        raise KeyboardInterrupt  # a service manager's stop ends the open events, as Ctrl-C does

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        stopped = listening.run(emit)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopped:
        log = listening.log
        print("escnet: stopped; open events ended" + (f", {log.path} written" if log else ""),
              file=sys.stderr)
    return 0


def add_listen(sub) -> None:
    p = sub.add_parser("listen", help="sound events, live, from a microphone, a pipe, a URL or a file")
    p.add_argument("--model", required=True, metavar="MODEL", help="an exported .onnx file, a run "
                   "folder or a .pt checkpoint")
    p.add_argument("--input", metavar="SOURCE", help="- (WAV or raw PCM on standard input), an "
                   "http(s) URL of a WAV or raw PCM stream, or an audio file (default: the microphone)")
    p.add_argument("--realtime", action="store_true", help="a file or URL: play it at real time "
                   "(default: as fast as it decodes)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS", help="a URL: give it "
                   "up after this many seconds without data (default 10)")
    p.add_argument("--rate", type=int, metavar="HZ", help="raw PCM input: its sample rate")
    p.add_argument("--format", choices=["u8", "s16", "s24", "s32", "f32"], help="raw PCM input: "
                   "samples, integers or float, little-endian (default s16)")
    p.add_argument("--channels", type=int, default=1, help="raw PCM input: channels (default 1)")
    p.add_argument("--out", metavar="FILE", help="also write each event start and end to this .csv "
                   "or .jsonl as it happens")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="seconds between scored windows "
                   "(default 0.25)")
    add_event_flags(p)
    add_silence_flag(p, "are not scored")
    add_device_flags(p)
    p.set_defaults(func=listen)


def tag(args: argparse.Namespace) -> int:
    from escnet.deploy.tag import Tagger

    if args.top_k < 1:
        raise EscnetError(f"--top-k {args.top_k}: must be at least 1")
    if args.hop is not None and not args.timeline:
        raise EscnetError("--hop describes a timeline: add --timeline")
    tagger = Tagger(args.model, args.device)
    results, unreadable = each_readable(args.files, lambda path: tagger.tag_file(
        path, args.top_k, args.timeline, args.hop))
    for r in results:
        if args.json:  # one object per line and file: JSON Lines
            print(json.dumps(r.to_dict()))
            continue
        print(f"{text(r.file)}:")
        for label, p in r.top:
            print(f"  {p:7.2%}  {text(label)}")
        for window, top in r.windows:
            start, end = window.seconds(r.sample_rate)
            print(f"  {start:8.2f}-{end:8.2f} s  " + ", ".join(f"{text(t)} {p:.2f}" for t, p in top))
    return unreadable_status(unreadable, len(args.files))


def add_tag(sub) -> None:
    from escnet.cards import tagging_cards

    tagging = tagging_cards()
    p = sub.add_parser("tag", help="zero-shot AudioSet tags (527 classes) of audio files, with a "
                       "pretrained model as published")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--model", default="mn04_as", choices=tagging, metavar="NAME",
                   help=f"a pretrained card: {', '.join(tagging)} (default mn04_as)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help='a JSON line per file: {"file", "tags": '
                   '[{"label", "probability"}, ...]} best first')
    p.add_argument("--timeline", action="store_true", help="also each window's tags (windows of "
                   "the model's clip length)")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="--timeline: seconds between window "
                   "starts (default half a window)")
    add_device_flags(p, threads=False)
    p.set_defaults(func=tag)


def embed(args: argparse.Namespace) -> int:
    from escnet.deploy.embed import Embedder, check_output, concat, write_embeddings

    check_output(args.out, args.per_window)  # before any work
    embedder = Embedder.from_path(args.model, args.fold, args.device)
    parts, unreadable = each_readable(args.files, lambda path: embedder.embed_file(
        path, args.per_window, args.hop))
    if parts:
        result = concat(parts)
        written = write_embeddings(result, args.out, args.per_window)
        print(f"wrote {written}: {len(result.files)} row(s) of {embedder.dim} numbers "
              f"({'one per window' if args.per_window else 'one per file'})")
    return unreadable_status(unreadable, len(args.files))


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="pooled embeddings (the features before the head) of audio "
                       "files, for your own pipelines")
    p.add_argument("--model", required=True, metavar="MODEL", help="a pretrained card (mn04_as, "
                   "...: windows of its clip length), a run folder or a .pt checkpoint")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE", help=".npy (a row per file), .npz or "
                   ".parquet (rows with file, start, end)")
    p.add_argument("--per-window", action="store_true", help="a row per clip-length window, not "
                   "per file")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="--per-window: seconds between "
                   "window starts (default half a clip)")
    p.add_argument("--fold", help="the fold model of a run of several")
    add_device_flags(p, threads=False)
    p.set_defaults(func=embed)


def export(args: argparse.Namespace) -> int:
    from escnet.deploy.export import export

    result = export(args.source, args.out, args.fold, args.ensemble, args.quantize, args.data,
                    args.calibration_clips)
    info = result.info
    acc = "" if info.held_out_accuracy is None else \
        f", held-out accuracy {100 * info.held_out_accuracy:.1f} % (PyTorch)"
    print(f"wrote {result.path}: {info.model}, folds {','.join(info.folds)}, {len(info.classes)} "
          f"classes, {info.sample_rate} Hz, {info.clip_seconds:g} s clips{acc}; ONNX Runtime "
          f"matches PyTorch within {result.max_difference:.1g}")
    for note in result.notes:
        print(f"escnet: {text(note)}", file=sys.stderr)
    if result.int8_path:
        scores = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f} %" for k, v in result.accuracy.items())
        print(f"wrote {result.int8_path}: int8 ({scores} on the held-out clips)")
    return 0


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX (waveform in, "
                       "probabilities out)")
    p.add_argument("source", metavar="RUNDIR_OR_CHECKPOINT")
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--fold", help="the fold model to export from a run of several")
    p.add_argument("--ensemble", action="store_true", help="average all the run's finished fold models")
    p.add_argument("--quantize", choices=["int8"], help="also write FILE.int8.onnx, calibrated "
                   "on training clips, with its held-out accuracy beside the float one")
    p.add_argument("--data", help="the run's dataset, if it moved since training")
    p.add_argument("--calibration-clips", type=int, default=200, metavar="N")
    p.set_defaults(func=export)


COMMANDS = (add_predict, add_listen, add_tag, add_embed, add_export)
