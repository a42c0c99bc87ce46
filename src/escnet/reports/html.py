"""The report of one run: a self-contained HTML page (figures embedded) built only from the run
directory, so it works on finished runs, runs still in progress (shown as partial) and copies
of runs from another machine. Also the small HTML helpers the comparison page shares."""

from __future__ import annotations

import base64
import html
import logging
from pathlib import Path

import numpy as np

from escnet.files import atomic_write_text
from escnet.models.calibration import softmax
from escnet.reports.plots import (
    save_confusion,
    save_curves,
    save_per_class,
    save_reliability,
    save_score_histograms,
)
from escnet.runs import Predictions, RunDir
from escnet.runs.metrics import (
    UNCALIBRATED,
    calibrated,
    classification_metrics,
    confused_pairs,
    held_out_figures,
    major_category,
)

log = logging.getLogger("escnet")


def held_out_predictions(run: RunDir) -> Predictions | None:
    """Pooled predictions of the finished folds, or ``None`` (with a warning) for a run made
    before escnet saved them: ``escnet evaluate RUNDIR`` writes them (``escnet report`` and
    ``escnet compare`` do that first, through :func:`escnet.engine.evaluate.ensure_predictions`)."""
    preds = run.predictions()
    if preds is None:
        log.warning("%s: no held-out predictions; `escnet evaluate %s` writes them", run.path, run.path)
    return preds


def img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "text-align:left}img{max-width:100%;display:block;margin:1em 0}pre{background:#f6f6f6;"
         "padding:1em;overflow:auto;max-height:24em}</style>")


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"{STYLE}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUNDIR/report.html`` (figures embedded; the PNGs also in ``RUNDIR/report/``)
    from the run directory alone."""
    run = RunDir(run_dir)
    run.require_finished()
    data = run.summary.get("data", run.config.data.data_dir)  # a damaged summary fails before any write
    figures = run.figures_dir()
    model = run.config.model.name
    title = f"{model} — {run.name}"
    save_curves(run.histories, figures / "curves.png", model)
    parts = [f"<p>{html.escape(run.status)}; data {html.escape(data)}; "
             f"machine {html.escape(run.summary.get('machine', 'not recorded'))}</p>"]
    mean, std = run.mean_std()
    fold_rows = []
    epochs = run.config.train.num_epochs
    for fold, hist in run.histories.items():
        f1 = run.fold_metrics(fold).get("macro_f1")
        done = fold in run.finished
        fold_rows.append([fold, f"{len(hist)}/{epochs}", pct(hist[-1]["test_accuracy"]),
                          pct(f1), pct(max(h["test_accuracy"] for h in hist)),
                          f"{np.median([h['seconds'] for h in hist]):.1f}",
                          "finished" if done else "running"])
    parts.append("<h2>Held-out accuracy per fold</h2>" + table(
        ["fold", "epochs", "accuracy (%)", "macro-F1 (%)", "best epoch (%, optimistic)", "s / epoch",
         "state"], fold_rows))
    parts.append(f"<p><b>Mean over {len(run.finished)} finished folds: {100 * mean:.1f} % ± "
                 f"{100 * std:.1f}</b> (population std over folds; last epoch of each fold).</p>")
    parts.append("<h2>Training curves</h2>" + img(figures / "curves.png", "training curves"))
    preds = held_out_predictions(run)
    if preds is not None:
        pooled = classification_metrics(preds.labels, preds.predicted, preds.classes)
        parts.append(f"<h2>Pooled over the finished folds ({pooled['clips']} clips)</h2>"
                     f"<p>accuracy {pct(pooled['accuracy'])} %, macro-F1 {pct(pooled['macro_f1'])} %</p>")
        save_confusion(np.asarray(pooled["confusion"]), preds.classes, figures / "confusion.png",
                       "confusion matrix, pooled")
        save_per_class(pooled["per_class_accuracy"], {c: major_category(c) for c in preds.classes},
                       figures / "per_class.png", "per-class accuracy, pooled (worst to best)")
        parts.append(img(figures / "confusion.png", "confusion matrix"))
        parts.append(img(figures / "per_class.png", "per-class accuracy"))
        pairs = confused_pairs(preds.labels, preds.predicted, preds.paths, preds.classes)
        parts.append("<h2>Most confused pairs</h2>" + table(
            ["true", "predicted as", "clips", "examples"],
            [[p["true"], p["predicted"], str(p["count"]), ", ".join(p["files"])] for p in pairs]))
    parts.append(_calibration_section(run, figures))
    robust = run.read_robustness()
    if robust:
        rows = [[name, pct(r["accuracy"]), f"{100 * (r['accuracy'] - robust['clean']):+.1f}"]
                for name, r in robust["corruptions"].items()]
        parts.append(f"<h2>Robustness</h2><p>Held-out accuracy of folds {', '.join(robust['folds'])} "
                     f"under corruptions (escnet robustness, seed {robust['seed']}): mean over "
                     f"corruptions {pct(robust['mean_corrupted'])} %, clean {pct(robust['clean'])} %.</p>"
                     + table(["corruption", "accuracy (%)", "change (points)"], rows))
        if run.robustness_path(".png").exists():
            parts.append(img(run.robustness_path(".png"), "accuracy under corruptions"))
    ev = run.read_evaluation()
    if ev.get("tta", 0) > 1:
        parts.append(f"<p>With test-time averaging over {ev['tta']} shifts (escnet evaluate --tta): "
                     f"{pct(ev['accuracy_tta_mean'])} % ± {pct(ev['accuracy_tta_std'])}</p>")
    parts.append("<h2>Config</h2><pre>" + html.escape(run.config.to_yaml())
                 + "</pre>")
    return atomic_write_text(run.report_path, page(title, "".join(parts)))




def _calibration_section(run: RunDir, figures: Path) -> str:
    """Calibration (a reliability diagram) and, for an open-set run, the unknown scores of
    known and unknown clips; empty for a run made before escnet kept held-out logits."""
    folds = run.fold_scores(run.finished)
    if folds is None:
        return ""
    result = held_out_figures(folds, run.read_calibration(run.finished[0]).unknown_score)
    cal = result["calibration"]
    known = [f.labels >= 0 for f in folds]
    curves = {}
    for name, scaled in (("before", False), ("after", True)):
        probs = [f.calibration.probabilities(f.logits[k]) if scaled else softmax(f.logits[k])
                 for f, k in zip(folds, known, strict=True)]
        labels = np.concatenate([f.labels[k] for f, k in zip(folds, known, strict=True)])
        conf = np.concatenate([p.max(1) for p in probs])
        correct = np.concatenate([p.argmax(1) for p in probs]) == labels
        curves[f"{name} calibration"] = (conf, correct)
    save_reliability(curves, figures / "reliability.png", "reliability, held-out clips pooled")
    temps = cal["temperature"] if isinstance(cal["temperature"], list) else [cal["temperature"]]
    share = f"train.validation_share={run.config.train.validation_share:g}, never the test fold"
    fitted = (f"Each fold model's temperature was fitted on its validation clips ({share})"
              if not run.config.train.refit else
              "Each fold model was trained on every training clip and carries the temperature "
              f"its holdout model (trained without its validation clips, in {RunDir.HOLDOUT}/; "
              f"{100 * run.holdout_run.mean_std()[0]:.1f} % accuracy) fitted on them ({share})")
    said = (f"{fitted}: {', '.join(f'{t:.2f}' for t in temps)}. Held-out expected calibration "
            f"error (15 bins) {cal['ece_before']:.3f} → {cal['ece_after']:.3f}, negative "
            f"log-likelihood {cal['nll_before']:.3f} → {cal['nll_after']:.3f}." if calibrated(cal) else
            f"{UNCALIBRATED[0].upper()}{UNCALIBRATED[1:]}. Held-out expected calibration "
            f"error (15 bins) {cal['ece_before']:.3f}, negative log-likelihood {cal['nll_before']:.3f}.")
    out = f"<h2>Calibration</h2><p>{html.escape(said)}</p>" + img(figures / "reliability.png",
                                                                 "reliability diagram")
    o = result.get("open_set")
    if o is None:
        return out
    score = o["score"]
    scores = [f.scores[score] for f in folds]
    save_score_histograms(np.concatenate([s[k] for s, k in zip(scores, known, strict=True)]),
                          np.concatenate([s[~k] for s, k in zip(scores, known, strict=True)]),
                          [t for f in folds if (t := f.calibration.thresholds.get(score)) is not None],
                          figures / "unknown_scores.png", "unknown scores, held-out clips", score)
    rows = [[name, f"{e['auroc']:.3f}", pct(e.get("known_kept")), pct(e.get("false_acceptance")),
             pct(e.get("known_accuracy_at_threshold"))] for name, e in o["by_score"].items()]
    unknown_names = ", ".join(run.summary.get("unknown_classes", []))
    return out + (f"<h2>Unknown sounds</h2><p>{o['unknown_clips']} held-out clips of classes left out "
                  f"of training ({html.escape(unknown_names)}) against {o['known_clips']} of known "
                  f"classes. The model answers by <b>{html.escape(score)}</b>; known-class accuracy "
                  f"{pct(o['known_accuracy'])} %.</p>"
                  + table(["score", "AUROC", "known clips kept (%)", "unknown clips accepted (%)",
                           "known accuracy, rejections as errors (%)"], rows)
                  + img(figures / "unknown_scores.png", "unknown score histograms"))
