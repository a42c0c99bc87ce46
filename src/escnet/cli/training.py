"""Commands of the training wing: train, evaluate, calibrate, robustness, sweep, benchmark,
report, compare."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from escnet.cli.common import add_config_flags, bars, config_of, config_overrides
from escnet.config import load_config
from escnet.errors import EscnetError


def train(args: argparse.Namespace) -> int:
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
    summary = train(config, run_dir, resume=bool(args.resume), progress=bars(args),
                    callbacks=callbacks, parallel_folds=args.parallel_folds)
    if not summary:  # a process of a torchrun group other than rank 0
        return 0
    print(format_summary(summary))
    print(f"run saved in {run_dir} (summary.json, config.yaml, fold-*/)")
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (5-fold cross-validation by default)")
    add_config_flags(p)
    p.add_argument("--out", help="run directory, new or empty (default runs/MODEL-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUNDIR", help="continue an interrupted run")
    p.add_argument("--parallel-folds", type=int, default=1, metavar="K",
                   help="train K folds at once, each in its own process (cores or GPUs shared out)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=train)


def evaluate(args: argparse.Namespace) -> int:
    from escnet.engine.evaluate import evaluate_run

    result = evaluate_run(args.run, args.data, args.checkpoint, progress=bars(args), tta=args.tta)
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


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="recompute held-out accuracy of a run's checkpoints")
    p.add_argument("run", metavar="RUNDIR")
    p.add_argument("--data", help="dataset folder, if it moved since training")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")
    p.add_argument("--tta", type=int, default=0, metavar="N",
                   help="also score with test-time averaging over N circular time shifts")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=evaluate)


def calibrate(args: argparse.Namespace) -> int:
    from escnet.engine.calibrate import calibrate_run
    from escnet.runs.metrics import UNCALIBRATED, calibrated

    pooled = calibrate_run(args.run, args.data, args.keep, args.score, bars(args), args.confidence)
    cal = pooled.get("calibration", {})
    if not calibrated(cal):
        print(f"{args.run}: {UNCALIBRATED}")
        return 0
    print(f"{args.run}: held-out ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f}, NLL "
          f"{cal['nll_before']:.3f} → {cal['nll_after']:.3f}")
    if o := pooled.get("open_set"):
        for name, e in o["by_score"].items():
            mark = " (answers by)" if name == o["score"] else ""
            print(f"  {name:11s} AUROC {e['auroc']:.3f}; known kept {100 * e['known_kept']:.1f} %, "
                  f"unknown accepted {100 * e['false_acceptance']:.1f} %{mark}")
    return 0


def add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit a finished run's temperatures and unknown thresholds "
                       "again on its validation clips (e.g. with another --keep)")
    p.add_argument("run", metavar="RUNDIR")
    p.add_argument("--data", help="dataset folder, if it moved since training")
    p.add_argument("--keep", type=float, help="share of known clips the unknown threshold keeps "
                   "(train.unknown_keep; default: the run's)")
    p.add_argument("--score", help="the unknown score to answer by: auto, or a score of "
                   "escnet.models.unknown.SCORES (train.unknown_score; default: the run's)")
    p.add_argument("--confidence", type=float, help="probability that the threshold keeps --keep of "
                   "known sounds; 0: on average only (train.unknown_confidence; default: the run's)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=calibrate, settings={"train.unknown_keep": "--keep", "train.unknown_score": "--score",
                                             "train.unknown_confidence": "--confidence"})


def robustness(args: argparse.Namespace) -> int:
    from escnet.engine.robustness import robustness

    result = robustness(args.run, args.data, args.corruptions, args.noise_dir, args.out, args.seed,
                        progress=bars(args))
    clean = result["clean"]
    print(f"{'corruption':<20} {'accuracy':>9} {'drop':>7}")
    for name, row in result["corruptions"].items():
        print(f"{name:<20} {100 * row['accuracy']:>8.1f}% {100 * (row['accuracy'] - clean):>+6.1f}")
    print(f"mean over corruptions: {100 * result['mean_corrupted']:.1f} % (clean {100 * clean:.1f} %, "
          f"{len(result['folds'])} fold(s), {result['clips']} clips)")
    print(f"wrote robustness.json, robustness.csv, robustness.png in {args.out or args.run}")
    return 0


def add_robustness(sub) -> None:
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
    p.set_defaults(func=robustness)


def sweep(args: argparse.Namespace) -> int:
    from escnet.engine.sweep import load_space, open_study, run_sweep, write_trials

    if args.trials < 0:
        raise EscnetError(f"--trials {args.trials}: must be 0 or more")
    base = config_of(args)
    space = load_space(args.space, base)
    study = open_study(args.storage, args.study, args.prune_after, args.pruner)
    out = args.out or f"sweeps/{args.study}"
    run_sweep(base, space, study, args.trials, out, progress=bars(args),
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


def add_sweep(sub) -> None:
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
    p.set_defaults(func=sweep)


def report(args: argparse.Namespace) -> int:
    from escnet.engine.evaluate import ensure_predictions
    from escnet.reports.html import write_report
    from escnet.runs import RunDir

    ensure_predictions(RunDir(args.run))
    print(f"wrote {write_report(args.run)}")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write RUNDIR/report.html: curves, confusion matrix, "
                       "per-class accuracy, most confused pairs")
    p.add_argument("run", metavar="RUNDIR")
    p.set_defaults(func=report)


def _print_compare(rows: list[dict], out: str) -> None:
    from escnet.reports.compare import format_accuracy

    width = max(len("run"), *(len(r["run"]) for r in rows))
    print(f"{'run':<{width}} {'model':<10} {'accuracy (%)':<16} status")
    for r in rows:
        print(f"{r['run']:<{width}} {r['model']:<10} {format_accuracy(r):<16} {r['status']}")
    print(f"wrote {out}/compare.md, compare.csv, compare.png, compare.html")


def compare(args: argparse.Namespace) -> int:
    from escnet.engine.evaluate import ensure_predictions
    from escnet.reports.compare import compare
    from escnet.runs import RunDir

    for run in args.runs:
        if RunDir(run).exists:
            ensure_predictions(RunDir(run))
    _print_compare(compare(args.runs, args.out), args.out)
    return 0


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare runs: Markdown/CSV table, bar chart, HTML")
    p.add_argument("runs", nargs="+", metavar="RUNDIR")
    p.add_argument("--out", default="compare", metavar="DIR")
    p.set_defaults(func=compare)


def benchmark(args: argparse.Namespace) -> int:
    from escnet.engine.benchmark import benchmark
    from escnet.engine.train import format_summary

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = benchmark(models, config_of(args), args.out, progress=bars(args),
                     on_summary=lambda summary: print(format_summary(summary)))
    _print_compare(rows, args.out)
    return 0


def add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="train several models on one protocol, then compare them")
    p.add_argument("--models", required=True, help="comma-separated model names")
    add_config_flags(p, leave_out=("model",))
    p.add_argument("--out", default="runs/benchmark", metavar="DIR")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=benchmark)


COMMANDS = (add_train, add_evaluate, add_calibrate, add_robustness, add_sweep, add_report, add_compare,
            add_benchmark)
