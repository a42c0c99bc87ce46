"""The ``escnet`` command: a thin layer over the Python API.

The library raises; this module talks. User mistakes (:class:`~escnet.errors.EscnetError`)
print one line and exit with status 2; the library's notes and warnings (the ``escnet``
logger) are printed as ``escnet: ...`` lines on stderr.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from escnet.config import list_presets, load_config, parse_overrides, similar_settings
from escnet.errors import AudioError, EscnetError

# Flags of every command that builds a config, and the setting each one sets.
CONFIG_FLAGS: dict[str, tuple[str, type, str]] = {
    "model": ("model.name", str, "model name (see `escnet models`)"),
    "data": ("data.data_dir", str, "ESC-50 folder, class-folder tree, or path,label[,fold] CSV"),
    "subset": ("data.subset", str, "all or esc10"),
    "folds": ("data.folds", str, "held-out folds to run, e.g. 1,2,3,4,5 (default: all)"),
    "epochs": ("train.num_epochs", int, "training epochs per fold"),
    "batch_size": ("train.batch_size", int, "clips per batch"),
    "lr": ("train.learning_rate", float, "learning rate"),
    "seed": ("train.seed", int, "seed for data order and initialisation"),
    "device": ("train.device", str, "auto, cpu, cuda or cuda:N"),
    "workers": ("train.num_workers", int, "DataLoader worker processes"),
    "cache_dir": ("data.cache_dir", str, "folder for the decoded-waveform cache"),
    "pretrained": ("model.pretrained", str, "weights to start from: a path, a URL, or a known name "
                   "(vgg19: imagenet)"),
    "split": ("data.protocol", str, "protocol: folds (official k-fold CV) or random (the report's "
              "train_ratio split)"),
    "unknown_classes": ("data.unknown_classes", str, "open-set protocol: leave K classes (drawn by "
                        "the seed) or the named ones (dog,rain) out of training; their held-out "
                        "clips are scored as unknown sounds"),
}
# Libraries of the extras ([train], [export]); a command that needs a missing one says which.
SERVE_LIBRARIES = {"fastapi", "uvicorn", "starlette", "python_multipart", "multipart"}
OPTIONAL_LIBRARIES = {"torch", "librosa", "tqdm", "audiomentations", "matplotlib", "sklearn", "onnx",
                      "onnxscript", "onnxruntime", "tensorboard", "optuna", *SERVE_LIBRARIES}
# On/off flags of the same commands: (setting, help).
SWITCHES = {"skip_bad": ("data.skip_bad", "leave unreadable audio files out"),
            "balanced": ("data.balanced_sampling", "class-balanced sampling"),
            "tensorboard": ("train.tensorboard", "log per-epoch scalars to RUNDIR/tensorboard"),
            "refit": ("train.refit", "calibrate on the validation clips, then train again on every "
                      "clip and keep that calibration (twice the training time)")}


def add_config_flags(p: argparse.ArgumentParser, leave_out: tuple[str, ...] = ()) -> None:
    """The flags of every command that builds a config: ``--preset --config --set``, then a
    flag for each of the common settings (:data:`CONFIG_FLAGS`, :data:`SWITCHES`) but those in
    ``leave_out``. :func:`config_overrides` reads them back."""
    p.add_argument("--preset", help=f"a shipped recipe to start from: {', '.join(list_presets())} "
                   "(docs/RESULTS.md); --config, the flags and --set apply on top")
    p.add_argument("--config", help="YAML or TOML file of settings")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any setting, e.g. train.learning_rate=1e-3 or model.args.width=64")
    group = p.add_argument_group("common settings (each is also a --set)")
    for flag, (_, kind, text) in CONFIG_FLAGS.items():
        if flag not in leave_out:
            group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=text)
    for flag, (_, text) in SWITCHES.items():
        if flag not in leave_out:
            group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action="store_true", help=text)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{"section.key": value}`` of the config flags given (:func:`add_config_flags`), then
    ``--set``'s, which come last and so win."""
    overrides: dict[str, Any] = {}
    for flag, (key, _, _) in CONFIG_FLAGS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    unknown = overrides.pop("data.unknown_classes", None)
    if unknown is not None:  # a count, or class names
        if unknown.strip().isdigit():
            overrides["data.unknown_classes"] = int(unknown)
        else:
            overrides["data.unknown_names"] = [n.strip() for n in unknown.split(",") if n.strip()]
    overrides |= {key: True for flag, (key, _) in SWITCHES.items() if getattr(args, flag, False)}
    return overrides | parse_overrides(args.set or [])


def config_of(args: argparse.Namespace, **overrides: Any):
    """The config the command line describes: ``--preset``, ``--config``, flags, ``--set``, and
    ``overrides`` (a command's own, last)."""
    return load_config(args.config, config_overrides(args) | overrides, preset=args.preset)


def _bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: redirected to a file (nohup, Slurm, CI) their
    carriage-return frames would fill it; the one line per epoch is printed either way."""
    return not args.quiet and sys.stderr.isatty()


def _train(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from escnet.engine.train import format_epoch, format_summary, train
    from escnet.runs import RunDir

    if args.resume:
        run_dir = Path(args.resume)
        if args.out and Path(args.out) != run_dir:
            raise EscnetError(f"--out {args.out} and --resume {args.resume} name different runs")
        # The run's own settings; anything given again must agree with them (train checks).
        if args.preset:
            raise EscnetError("--preset: a resumed run keeps its own settings; drop --preset")
        config = load_config(args.config, config_overrides(args), base=RunDir(run_dir).read_config())
    else:
        config = config_of(args)
        run_dir = Path(args.out or f"runs/{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    epochs = config.train.num_epochs
    callbacks = [] if args.quiet else [lambda entry: tqdm.write(format_epoch(entry, epochs))]
    summary = train(config, run_dir, resume=bool(args.resume), progress=_bars(args),
                    callbacks=callbacks, parallel_folds=args.parallel_folds)
    if not summary:  # a process of a torchrun group other than rank 0
        return 0
    print(format_summary(summary))
    print(f"run saved in {run_dir} (summary.json, config.yaml, fold-*/)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from escnet.engine.evaluate import evaluate_run

    result = evaluate_run(args.run, args.data, args.checkpoint, progress=_bars(args), tta=args.tta)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, fold in result["folds"].items():
        recorded = fold["recorded"]
        note = f" (recorded {100 * recorded:.1f} %)" if recorded is not None else ""
        tta = f", {100 * fold['accuracy_tta']:.1f} % with --tta {args.tta}" if args.tta else ""
        print(f"fold {name}: {100 * fold['accuracy']:.1f} %{note}{tta}, {args.checkpoint}.pt of epoch "
              f"{fold['epoch']}")
    print(f"mean: {100 * result['accuracy_mean']:.1f} % ± {100 * result['accuracy_std']:.1f}")
    if args.tta:
        print(f"mean with --tta {args.tta}: {100 * result['accuracy_tta_mean']:.1f} % "
              f"± {100 * result['accuracy_tta_std']:.1f}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from escnet.engine.calibrate import calibrate_run

    if args.keep is not None and not 0 < args.keep <= 1:
        raise EscnetError(f"--keep {args.keep}: a share of known clips, above 0 and at most 1")
    if args.confidence is not None and not 0 <= args.confidence < 1:
        raise EscnetError(f"--confidence {args.confidence}: a probability, at least 0 and below 1")
    pooled = calibrate_run(args.run, args.data, args.keep, args.score, _bars(args), args.confidence)
    cal = pooled.get("calibration", {})
    print(f"{args.run}: held-out ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f}, NLL "
          f"{cal['nll_before']:.3f} → {cal['nll_after']:.3f}")
    if o := pooled.get("open_set"):
        for name, e in o["by_score"].items():
            mark = " (answers by)" if name == o["score"] else ""
            print(f"  {name:11s} AUROC {e['auroc']:.3f}; known kept {100 * e['known_kept']:.1f} %, "
                  f"unknown accepted {100 * e['false_acceptance']:.1f} %{mark}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from escnet.deploy.predict import Predictor

    if args.top_k < 1:
        raise EscnetError(f"--top-k {args.top_k}: must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise EscnetError(f"--threads {args.threads}: must be at least 1")
    if args.timeline and args.events:
        raise EscnetError("--timeline and --events: choose one (windows, or events with a start and end)")
    if not (args.timeline or args.events) and (args.hop is not None or args.out or args.plot):
        raise EscnetError("--hop, --out and --plot describe a timeline or events: add --timeline or --events")
    if args.plot and not args.timeline:
        raise EscnetError("--plot draws a timeline: add --timeline")
    if not args.events and _event_flags_given(args):
        raise EscnetError("--window, --on, --off, --smooth, --min-duration and --max-gap shape events: "
                          "add --events")
    if args.plot and len(args.files) > 1:
        raise EscnetError(f"--plot draws one recording; {len(args.files)} files were given")
    if args.plot:
        import matplotlib  # noqa: F401  (before scoring: say it is missing first, not last)
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path and Path(path).exists():
            raise EscnetError(f"{flag} {path}: already exists; choose another name (escnet does not "
                              "overwrite it)")
    predictor = Predictor.from_path(args.model, args.device, args.threads, silence_db=args.silence_db)
    if args.sample_rate is not None and args.sample_rate != predictor.info.sample_rate:
        raise EscnetError(f"{args.model}: the model takes {predictor.info.sample_rate} Hz audio, not "
                          f"--sample-rate {args.sample_rate}")
    if args.events:
        return _predict_events(predictor, args)
    results, unreadable = [], 0
    for path in args.files:  # one bad file among many costs only its own line
        try:
            results.append(predictor.timeline(path, args.hop) if args.timeline
                           else predictor.predict_file(path, args.top_k))
        except AudioError as err:
            print(f"escnet: error: {err}", file=sys.stderr)
            unreadable += 1
    if args.timeline:
        _print_timelines(results, args)
    elif args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2, allow_nan=False))
    else:
        for r in results:
            print(f"{r.path} ({r.windows} window{'' if r.windows == 1 else 's'}):")
            if r.label == "unknown":
                heard = ", ".join(f"{t!r} {p:.2f}" for t, p in r.sounds_like)
                like = f" — sounds like {heard}" if heard else ""
                print(f"  answer: unknown (none of the model's classes){like}; best guesses:")
            elif r.label is not None:
                print(f"  answer: {r.label}")
            for label, prob in r.top:
                print(f"  {prob:7.2%}  {label}")
            for note in r.notes:
                print(f"  note: {note}")
    if unreadable:
        print(f"escnet: {unreadable} of {len(args.files)} files could not be read (listed above)",
              file=sys.stderr)
    return 2 if unreadable else 0


EVENT_FLAGS = ("hop", "window", "smooth", "on", "off", "min_duration", "max_gap")


def _event_flags_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, f) is not None for f in EVENT_FLAGS if f != "hop")


def _event_settings(args: argparse.Namespace):
    from dataclasses import replace

    from escnet.deploy.events import DEFAULTS

    return replace(DEFAULTS, **{f: getattr(args, f) for f in EVENT_FLAGS
                                       if getattr(args, f) is not None})


def _add_event_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    from escnet.deploy.events import DEFAULTS as d

    p.add_argument("--window", type=float, metavar="SECONDS",
                   help=f"{prefix}seconds of audio per scored window (default {d.window:g})")
    p.add_argument("--on", type=float, metavar="P", help=f"{prefix}an event starts when its smoothed "
                   f"probability reaches this (default {d.on:g})")
    p.add_argument("--off", type=float, metavar="P", help=f"{prefix}...and ends below this "
                   f"(default {d.off:g})")
    p.add_argument("--smooth", type=int, metavar="HOPS", help=f"{prefix}hops averaged before the "
                   f"thresholds (default {d.smooth})")
    p.add_argument("--min-duration", type=float, metavar="SECONDS", help=f"{prefix}shorter events "
                   f"are dropped (default {d.min_duration:g})")
    p.add_argument("--max-gap", type=float, metavar="SECONDS", help=f"{prefix}a dip this short "
                   f"continues an event (default {d.max_gap:g})")


def _predict_events(predictor, args: argparse.Namespace) -> int:
    from escnet.deploy.events import detect_events, events_csv, write_events

    settings = _event_settings(args)
    settings.check(predictor.info.clip_seconds)  # a bad setting is said once, before any file
    results, unreadable = [], 0
    for path in args.files:
        try:
            results.append((path, detect_events(predictor.model, path, settings, args.silence_db)))
        except AudioError as err:
            print(f"escnet: error: {err}", file=sys.stderr)
            unreadable += 1
    if args.out:
        print(f"wrote {write_events(results, args.out)}", file=sys.stderr)
    elif args.json:  # one object per line and file: JSON Lines
        for path, events in results:
            print(json.dumps({"file": str(path), "events": [e.to_dict() for e in events]}))
    else:
        print(events_csv(results), end="")
    if unreadable:
        print(f"escnet: {unreadable} of {len(args.files)} files could not be read (listed above)",
              file=sys.stderr)
    return 2 if unreadable else 0


def _listen(args: argparse.Namespace) -> int:
    from datetime import datetime

    from escnet.data.pcm import PcmFormat
    from escnet.deploy.events import Stream
    from escnet.deploy.live import EventLog, listen, open_input, real_time
    from escnet.deploy.predict import load_model_file
    from escnet.files import new_output

    if args.rate is None and args.format is not None:
        raise EscnetError("--format describes raw PCM: give --rate too")
    if args.threads is not None and args.threads < 1:
        raise EscnetError(f"--threads {args.threads}: must be at least 1")
    raw = PcmFormat(args.rate, args.format or "s16", args.channels) if args.rate is not None else None
    model = load_model_file(args.model, args.device, args.threads)
    settings = _event_settings(args)
    settings.check(model.info.clip_seconds)  # before the input is opened (the Stream checks again)
    if args.out:
        new_output(args.out, "--out", (".csv", ".jsonl"))  # refused before the input is opened
    source = open_input(args.input, raw)
    stream = Stream(model, settings, args.silence_db, input_rate=source.sample_rate, name=source.name)
    log = EventLog(args.out) if args.out else None  # created once everything else is in order
    if args.realtime:
        source = real_time(source)
    print(f"escnet: listening to {source.name} ({source.sample_rate} Hz); events as they start and "
          "end; Ctrl-C stops", file=sys.stderr, flush=True)

    def emit(message) -> None:
        wall = datetime.now().astimezone().isoformat(timespec="milliseconds")
        print(f"{wall}  {message.decided:9.2f} s  {message.state:5s}  {message.label:<22s} "
              f"at {message.time:8.2f} s  confidence {message.confidence:.2f}", flush=True)
        if log is not None:
            log.write(message, wall)

    try:
        interrupted = listen(stream, source, emit)
    finally:
        if log is not None:
            log.close()
    if interrupted:
        print("escnet: stopped; open events ended" + (f", {log.path} written" if log else ""),
              file=sys.stderr)
    return 0


def _print_timelines(timelines: list, args: argparse.Namespace) -> None:
    from escnet.deploy.timeline import plot_timeline, timeline_csv, timeline_json, write_timeline

    if args.out:
        print(f"wrote {write_timeline(timelines, args.out)}", file=sys.stderr)
    else:
        print(timeline_json(timelines) if args.json else timeline_csv(timelines), end="")
    if args.plot and timelines:
        print(f"wrote {plot_timeline(timelines[0], args.plot)}", file=sys.stderr)


def _export(args: argparse.Namespace) -> int:
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
        print(f"escnet: {note}", file=sys.stderr)
    if result.int8_path:
        scores = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f} %" for k, v in result.accuracy.items())
        print(f"wrote {result.int8_path}: int8 ({scores} on the held-out clips)")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from escnet.deploy.embed import Embedder, check_output, concat, write_embeddings

    check_output(args.out, args.per_window)  # before any work
    embedder = Embedder.from_path(args.model, args.fold, args.device)
    parts, unreadable = [], 0
    for path in args.files:  # one bad file among many costs only its own line
        try:
            parts.append(embedder.embed_file(path, args.per_window, args.hop))
        except AudioError as err:
            print(f"escnet: error: {err}", file=sys.stderr)
            unreadable += 1
    if parts:
        result = concat(parts)
        written = write_embeddings(result, args.out, args.per_window)
        print(f"wrote {written}: {len(result.files)} row(s) of {embedder.dim} numbers "
              f"({'one per window' if args.per_window else 'one per file'})")
    if unreadable:
        print(f"escnet: {unreadable} of {len(args.files)} files could not be read (listed above)",
              file=sys.stderr)
    return 2 if unreadable else 0


def _serve(args: argparse.Namespace) -> int:
    from escnet.serve.app import ServeSettings, serve

    settings = ServeSettings(args.model, args.host, args.port, args.workers, args.threads,
                             args.queue, args.max_upload_mb, args.max_seconds, args.device,
                             args.max_windows, args.body_seconds, args.max_streams,
                             args.stream_seconds, args.idle_seconds, args.rate_limit,
                             tuple(args.allow_origin or ()))
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        limit = "" if settings.rate_limit else " and consider --rate-limit (requests a second per client)"
        print(f"escnet: serving on {settings.host}: reachable from other machines; escnet serve "
              f"has no authentication, so put it behind a proxy that has{limit}", file=sys.stderr)
    serve(settings)
    return 0


def _robustness(args: argparse.Namespace) -> int:
    from escnet.engine.robustness import robustness

    result = robustness(args.run, args.data, args.corruptions, args.noise_dir, args.out, args.seed,
                        progress=_bars(args))
    clean = result["clean"]
    print(f"{'corruption':<20} {'accuracy':>9} {'drop':>7}")
    for name, row in result["corruptions"].items():
        print(f"{name:<20} {100 * row['accuracy']:>8.1f}% {100 * (row['accuracy'] - clean):>+6.1f}")
    print(f"mean over corruptions: {100 * result['mean_corrupted']:.1f} % (clean {100 * clean:.1f} %, "
          f"{len(result['folds'])} fold(s), {result['clips']} clips)")
    print(f"wrote robustness.json, robustness.csv, robustness.png in {args.out or args.run}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from escnet.engine.sweep import load_space, open_study, run_sweep, write_trials

    if args.trials < 0:
        raise EscnetError(f"--trials {args.trials}: must be 0 or more")
    base = config_of(args)
    space = load_space(args.space, base)
    study = open_study(args.storage, args.study, args.prune_after, args.pruner)
    out = args.out or f"sweeps/{args.study}"
    run_sweep(base, space, study, args.trials, out, progress=_bars(args),
              announce=lambda line: print(f"escnet sweep: {line}", file=sys.stderr, flush=True))
    rows, path = write_trials(study, out)
    done = [r for r in rows if r["accuracy"]]
    best = max(done, key=lambda r: float(r["accuracy"])) if done else None
    for r in rows:
        print(f"trial {r['trial']:>3} {r['state']:<9} {r['accuracy'] or '-':>7}  {r['run']}")
    if best:
        print(f"best: trial {best['trial']}, {100 * float(best['accuracy']):.1f} % ({best['run']})")
    print(f"wrote {path} (and trials.png)")
    return 0


def _download(args: argparse.Namespace) -> int:
    from escnet.data.download import ESC50_URL, download_esc50

    folder = download_esc50(args.root, args.url or ESC50_URL, args.sha256, progress=_bars(args))
    print(f"ESC-50 ready in {folder}; train with: escnet train --data {folder}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from escnet.engine.evaluate import ensure_predictions
    from escnet.reports.html import write_report
    from escnet.runs import RunDir

    ensure_predictions(RunDir(args.run))
    print(f"wrote {write_report(args.run)}")
    return 0


def _print_compare(rows: list[dict], out: str) -> None:
    from escnet.reports.compare import format_accuracy

    width = max(len("run"), *(len(r["run"]) for r in rows))
    print(f"{'run':<{width}} {'model':<10} {'accuracy (%)':<16} status")
    for r in rows:
        print(f"{r['run']:<{width}} {r['model']:<10} {format_accuracy(r):<16} {r['status']}")
    print(f"wrote {out}/compare.md, compare.csv, compare.png, compare.html")


def _compare(args: argparse.Namespace) -> int:
    from escnet.engine.evaluate import ensure_predictions
    from escnet.reports.compare import compare
    from escnet.runs import RunDir

    for run in args.runs:
        if RunDir(run).exists:
            ensure_predictions(RunDir(run))
    _print_compare(compare(args.runs, args.out), args.out)
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from escnet.engine.benchmark import benchmark
    from escnet.engine.train import format_summary

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = benchmark(models, config_of(args), args.out, progress=_bars(args),
                     on_summary=lambda summary: print(format_summary(summary)))
    _print_compare(rows, args.out)
    return 0


def _augment_preview(args: argparse.Namespace) -> int:
    from escnet.reports.preview import preview

    written = preview(args.file, args.out, config_of(args))
    print(f"wrote {len(written)} files to {args.out}: the original and each transform as .wav "
          "and log-mel .png")
    return 0


def _models(args: argparse.Namespace) -> int:
    from escnet.config import TaskConfig
    from escnet.models import count_macs, count_parameters, create_model, list_models, resolve_args

    config = TaskConfig()
    n_mels, frames, classes = config.features.n_mels, config.length, config.model.num_classes
    print(f"at the default settings: {config.data.clip_seconds:g} s clips, {config.data.sample_rate} Hz, "
          f"{n_mels} mels × {frames} frames, {classes} classes")
    print(f"{'model':<10} {'parameters':>13} {'MACs per clip':>15}  arguments (model.args, defaults)")
    for name in list_models():
        model = create_model(name, n_mels=n_mels, frames=frames, num_classes=classes)
        default = "  (default)" if name == config.model.name else ""
        arguments = ", ".join(f"{k}={v}" for k, v in resolve_args(name, {}).items()) or "-"
        print(f"{name:<10} {count_parameters(model):>13,} "
              f"{count_macs(model, n_mels, frames) / 1e9:>11.3f} G  {arguments}{default}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (5-fold cross-validation by default)")
    add_config_flags(p)
    p.add_argument("--out", help="run directory, new or empty (default runs/MODEL-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUNDIR", help="continue an interrupted run")
    p.add_argument("--parallel-folds", type=int, default=1, metavar="K",
                   help="train K folds at once, each in its own process (cores or GPUs shared out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="recompute held-out accuracy of a run's checkpoints")
    p.add_argument("run", metavar="RUNDIR")
    p.add_argument("--data", help="dataset folder, if it moved since training")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")
    p.add_argument("--tta", type=int, default=0, metavar="N",
                   help="also score with test-time averaging over N circular time shifts")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_evaluate)


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a finished run's temperatures and unknown thresholds "
                       "again on its validation clips (e.g. with another --keep)")
    p.add_argument("run", metavar="RUNDIR")
    p.add_argument("--data", help="dataset folder, if it moved since training")
    p.add_argument("--keep", type=float, help="share of known clips the unknown threshold keeps "
                   "(train.unknown_keep; default: the run's)")
    p.add_argument("--score", choices=["auto", "msp", "energy", "max_logit", "knn", "energy+knn"],
                   help="the unknown score to answer by (train.unknown_score; default: the run's)")
    p.add_argument("--confidence", type=float, help="probability that the threshold keeps --keep of "
                   "known sounds; 0: on average only (train.unknown_confidence; default: the run's)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_calibrate)


def _add_predict(sub) -> None:
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
    _add_event_flags(p, "events: ")
    p.add_argument("--silence-db", type=float, default=-60.0, metavar="DBFS",
                   help="windows quieter than this RMS level get no label (default -60)")
    p.add_argument("--sample-rate", type=int, metavar="HZ",
                   help="refuse a model that does not take audio at this rate")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: one per core)")
    p.add_argument("--device", default="cpu", help="PyTorch models: cpu, cuda or cuda:N")
    p.set_defaults(func=_predict)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX (waveform in, "
                       "probabilities out)")
    p.add_argument("source", metavar="RUNDIR_OR_CHECKPOINT")
    p.add_argument("--out", required=True, metavar="FILE.onnx")
    p.add_argument("--fold", help="the fold model to export from a run of several")
    p.add_argument("--ensemble", action="store_true", help="average all the run's fold models")
    p.add_argument("--quantize", choices=["int8"], help="also write FILE.int8.onnx, calibrated "
                   "on training clips, with its held-out accuracy beside the float one")
    p.add_argument("--data", help="the run's dataset, if it moved since training")
    p.add_argument("--calibration-clips", type=int, default=200, metavar="N")
    p.set_defaults(func=_export)


def _add_embed(sub) -> None:
    p = sub.add_parser("embed", help="pooled embeddings (the features before the head) of audio "
                       "files, for your own pipelines")
    p.add_argument("--model", required=True, metavar="MODEL", help="a pretrained name (mn04_as, "
                   "...), a run folder or a .pt checkpoint")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--out", required=True, metavar="FILE", help=".npy (a row per file), .npz or "
                   ".parquet (rows with file, start, end)")
    p.add_argument("--per-window", action="store_true", help="a row per clip-length window, not "
                   "per file")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="--per-window: seconds between "
                   "window starts (default half a clip)")
    p.add_argument("--fold", help="the fold model of a run of several")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=_embed)


def _add_listen(sub) -> None:
    p = sub.add_parser("listen", help="sound events, live, from a microphone, a pipe, a URL or a file")
    p.add_argument("--model", required=True, metavar="MODEL", help="an exported .onnx file, a run "
                   "folder or a .pt checkpoint")
    p.add_argument("--input", metavar="SOURCE", help="- (WAV or raw PCM on standard input), an "
                   "http(s) URL of a WAV or raw PCM stream, or an audio file (default: the microphone)")
    p.add_argument("--realtime", action="store_true", help="a file or URL: play it at real time "
                   "(default: as fast as it decodes)")
    p.add_argument("--rate", type=int, metavar="HZ", help="raw PCM input: its sample rate")
    p.add_argument("--format", choices=["u8", "s16", "s24", "s32", "f32"], help="raw PCM input: "
                   "samples, integers or float, little-endian (default s16)")
    p.add_argument("--channels", type=int, default=1, help="raw PCM input: channels (default 1)")
    p.add_argument("--out", metavar="FILE", help="also write each event start and end to this .csv "
                   "or .jsonl as it happens")
    p.add_argument("--hop", type=float, metavar="SECONDS", help="seconds between scored windows "
                   "(default 0.25)")
    _add_event_flags(p)
    p.add_argument("--silence-db", type=float, default=-60.0, metavar="DBFS",
                   help="windows quieter than this RMS level are not scored (default -60)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: one per core)")
    p.add_argument("--device", default="cpu", help="PyTorch models: cpu, cuda or cuda:N")
    p.set_defaults(func=_listen)


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP API and a web page for a model (pip install "
                       "'escnet[serve]')")
    p.add_argument("model", metavar="MODEL", help="an exported .onnx file (fastest), a run folder "
                   "or a .pt checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: "
                   "this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes, each with the model")
    p.add_argument("--threads", type=int, default=0,
                   help="inference threads per process (default: one per core)")
    p.add_argument("--queue", type=int, default=64, metavar="N", help="requests that may wait for "
                   "a thread; more are answered 503 with Retry-After (default 64)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB")
    p.add_argument("--max-seconds", type=float, default=600.0, metavar="S",
                   help="longest audio accepted (default 600)")
    p.add_argument("--device", default="cpu", help="PyTorch models: cpu, cuda or cuda:N")
    p.add_argument("--max-windows", type=int, default=1000, metavar="N", help="most clip-length "
                   "windows one request may cost, its length and hop together (default 1000)")
    p.add_argument("--body-seconds", type=float, default=30.0, metavar="S", help="an upload must "
                   "arrive within this (default 30); slow senders never hold an inference thread")
    p.add_argument("--max-streams", type=int, default=32, metavar="N", help="live streams "
                   "(/v1/stream) open at once (default 32; 0: none)")
    p.add_argument("--stream-seconds", type=float, default=3600.0, metavar="S",
                   help="longest live stream, seconds of audio (default 3600)")
    p.add_argument("--idle-seconds", type=float, default=10.0, metavar="S",
                   help="a live stream silent this long is closed (default 10)")
    p.add_argument("--rate-limit", type=float, default=0.0, metavar="R", help="requests a second "
                   "one client address may make (of each worker); more wait their turn, up to 1 s, "
                   "then 429 (default 0: no limit)")
    p.add_argument("--allow-origin", action="append", metavar="ORIGIN", help="a web origin "
                   "(https://app.example.org) whose pages may use this server from a browser, "
                   "besides its own page; repeat for more (default: none; other pages are refused)")
    p.set_defaults(func=_serve)


def _add_robustness(sub) -> None:
    p = sub.add_parser("robustness", help="accuracy under corruptions (16/8 kHz, codecs, noise, "
                       "level, reverb, short input) on each fold's held-out clips")
    p.add_argument("run", metavar="RUNDIR")
    p.add_argument("--data", help="the run's dataset, if it moved")
    p.add_argument("--corruptions", metavar="LIST", help="families or family:severity, comma-"
                   "separated (default all): band_limit, mp3, vorbis, white_noise, pink_noise, "
                   "background, level, reverb, truncate")
    p.add_argument("--noise-dir", help="background recordings for the background corruption")
    p.add_argument("--out", help="write the results here instead of the run folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_robustness)


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="search settings with Optuna (pip install 'escnet[sweep]')")
    p.add_argument("--space", required=True, help="YAML: setting → {low, high[, log, step]} or {choices}")
    p.add_argument("--storage", required=True, help="Optuna storage shared by the workers: "
                   "sqlite:///sweep.db on one machine, postgresql://user:pass@host/db across several")
    p.add_argument("--study", default="escnet", help="study name (workers of one search share it)")
    p.add_argument("--trials", type=int, default=10, help="trials this worker runs")
    add_config_flags(p)
    p.add_argument("--out", help="folder of the trial runs (default sweeps/STUDY)")
    p.add_argument("--pruner", choices=["median", "none"], default="median",
                   help="stop trials whose held-out accuracy falls below the median of earlier "
                   "trials at the same epoch")
    p.add_argument("--prune-after", type=int, default=3, metavar="N",
                   help="finished trials before pruning starts (default 3)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_sweep)


def _add_download(sub) -> None:
    p = sub.add_parser("download", help="download and verify a dataset")
    p.add_argument("dataset", choices=["esc50"])
    p.add_argument("--root", required=True, help="folder to put the dataset in")
    p.add_argument("--url", help="mirror of the ESC-50 archive (default: the official GitHub one)")
    p.add_argument("--sha256", help="expected checksum of the archive")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_download)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="write RUNDIR/report.html: curves, confusion matrix, "
                       "per-class accuracy, most confused pairs")
    p.add_argument("run", metavar="RUNDIR")
    p.set_defaults(func=_report)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: Markdown/CSV table, bar chart, HTML")
    p.add_argument("runs", nargs="+", metavar="RUNDIR")
    p.add_argument("--out", default="compare", metavar="DIR")
    p.set_defaults(func=_compare)


def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="train several models on one protocol, then compare them")
    p.add_argument("--models", required=True, help="comma-separated model names")
    add_config_flags(p, leave_out=("model",))
    p.add_argument("--out", default="runs/benchmark", metavar="DIR")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_benchmark)


def _add_augment_preview(sub) -> None:
    p = sub.add_parser("augment-preview", help="write a clip under each augmentation "
                       "(audio and log-mel PNG)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    add_config_flags(p)
    p.set_defaults(func=_augment_preview)


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models and their arguments")
    p.set_defaults(func=_models)


COMMANDS = (_add_train, _add_evaluate, _add_calibrate, _add_predict, _add_listen, _add_embed, _add_export,
            _add_serve, _add_robustness, _add_sweep, _add_download, _add_report, _add_compare, _add_benchmark,
            _add_augment_preview, _add_models)


class _Parser(argparse.ArgumentParser):
    """argparse, saying which typed option was probably meant when its error comes from a
    misspelling (``--modle``: "the following arguments are required: --model")."""

    typed: ClassVar[list[str]] = []
    """The command line being parsed (set by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        known = [option for action in self._actions for option in action.option_strings]
        for word in (w.split("=")[0] for w in self.typed if w.startswith("--")):
            if word not in known and (close := difflib.get_close_matches(word, known, 1)):
                message += f" ({word} is not an option of this command; did you mean {close[0]}?)"
                break
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="escnet", description=(
        "Environmental sound classification: train, evaluate and compare models on ESC-50 "
        "and your own recordings."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _unknown_flag_error(extras: list[str], has_set: bool) -> str:
    """One line for flags argparse does not know, pointing to ``--set`` when one names a setting."""
    message = f"escnet: error: unrecognized arguments: {' '.join(extras)}"
    flag = next((x for x in extras if x.startswith("--")), None)
    if not (has_set and flag):
        return message
    key, _, value = flag[2:].partition("=")
    following = extras[extras.index(flag) + 1:]
    value = value or (following[0] if following and not following[0].startswith("-") else "VALUE")
    close = similar_settings(key.replace("-", "_"))
    if not close:
        return f"{message} (other settings go through --set SECTION.KEY=VALUE)"
    hint = f"--set {close[0]}={value}"
    if len(close) > 1:
        hint += f"; similar: {', '.join(close[1:])}"
    return f"{message} (settings without a flag go through --set: {hint})"


def _flag_hint(message: str) -> str:
    """``message`` with the command-line flag of the first setting it names, if it has one
    (``data.skip_bad`` → ``--skip-bad``): the library speaks in settings, users type flags."""
    flags = {key: f"--{flag.replace('_', '-')}" for flag, (key, _, _) in CONFIG_FLAGS.items()}
    flags |= {key: f"--{flag.replace('_', '-')}" for flag, (key, _) in SWITCHES.items()}
    for key, flag in flags.items():
        if f"setting {key}=" in message or f"setting {key}:" in message or f"set {key}=" in message:
            return f"{message} (flag {flag})"
    return message


class _Lines(logging.Handler):
    """The library's notes and warnings as ``escnet: message`` lines on stderr, above any
    progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the runtime-only install has no progress bars to keep clear of
            print(f"escnet: {record.getMessage()}", file=sys.stderr)
        else:
            tqdm.write(f"escnet: {record.getMessage()}", file=sys.stderr)


def _talk() -> None:
    logger = logging.getLogger("escnet")
    if not any(isinstance(h, _Lines) for h in logger.handlers):
        logger.addHandler(_Lines())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    _talk()
    parser = build_parser()
    _Parser.typed = sys.argv[1:] if argv is None else argv
    args, extras = parser.parse_known_args(argv)
    if extras:
        print(_unknown_flag_error(extras, hasattr(args, "set")), file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] not in OPTIONAL_LIBRARIES:
            raise
        name = err.name.split(".")[0]
        extra = "serve" if name in SERVE_LIBRARIES else "sweep" if name == "optuna" else \
            "export" if args.command == "export" else "train"
        why = "" if args.command in ("predict", "serve") else \
            " (the runtime install only classifies with .onnx models)"
        print(f"escnet: error: escnet {args.command} needs {name}, which is not installed: "
              f"pip install 'escnet[{extra}]'{why}", file=sys.stderr)
        return 2
    except EscnetError as err:
        print(f"escnet: error: {_flag_hint(str(err))}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # torch's out-of-memory errors are RuntimeErrors
        if not isinstance(err, MemoryError) and not any(
                words in str(err) for words in ("can't allocate memory", "out of memory")):
            raise
        resume = " (resume with --resume RUNDIR)" if args.command == "train" else ""
        print(f"escnet: error: out of memory: lower train.batch_size, the model's size or the "
              f"features (n_mels, clip_seconds){resume}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (continue with --resume RUNDIR)" if args.command == "train" else ""
        print(f"\nescnet: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
