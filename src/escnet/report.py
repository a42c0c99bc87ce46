"""Reports: one run as a self-contained HTML page, several runs as a comparison table.

Both read only the run directories (``config.yaml``, ``fold-K/metrics.jsonl``,
``fold-K/predictions.csv``), so they work on finished runs, on runs still in progress (shown as
partial) and on copies of runs from another machine.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from escnet.config import TaskConfig
from escnet.errors import DataError, EscnetError, make_output_dir
from escnet.metrics import Predictions, classification_metrics, confused_pairs, major_category


@dataclass
class RunInfo:
    """What a run directory holds. ``finished``: folds that ran all their epochs."""

    path: Path
    config: TaskConfig
    summary: dict
    histories: dict[str, list[dict]]
    finished: list[str]
    classes: list[str]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        planned = len(self.config.folds) if self.config.folds else len(self.summary.get("folds", {}))
        if self.summary.get("status") == "complete" and len(self.finished) >= planned:
            return "complete"
        return f"partial ({len(self.finished)} fold{'s' if len(self.finished) != 1 else ''} finished)"

    def accuracy(self, fold: str) -> float:
        return self.histories[fold][-1]["test_accuracy"]

    def mean_std(self) -> tuple[float, float]:
        accs = [self.accuracy(f) for f in self.finished]
        return float(np.mean(accs)), float(np.std(accs))

    def predictions(self) -> Predictions | None:
        """Pooled held-out predictions of the finished folds (``None`` if any fold lacks them)."""
        files = [self.path / f"fold-{f}" / "predictions.csv" for f in self.finished]
        if not files or not all(p.exists() for p in files):
            return None
        return Predictions.concat([Predictions.load(p, self.classes) for p in files])


def read_run(path: str | Path) -> RunInfo:
    """Read a run directory, or raise :class:`EscnetError` saying why it is not a usable run."""
    from escnet.training import read_run_config

    path = Path(path)
    if not path.is_dir():
        raise EscnetError(f"{path}: {'a file, not a run folder' if path.exists() else 'no such run folder'}")
    config = read_run_config(path)
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    histories = {}
    for metrics in sorted(path.glob("fold-*/metrics.jsonl")):
        lines = metrics.read_text().splitlines()
        if lines:
            histories[metrics.parent.name.removeprefix("fold-")] = [json.loads(x) for x in lines]
    finished = [f for f, h in histories.items() if len(h) >= config.num_epochs]
    if not finished:
        progress = ", ".join(f"fold {f} at epoch {len(h)}/{config.num_epochs}" for f, h in histories.items())
        raise EscnetError(f"{path}: no finished fold yet ({progress or 'no epoch logged'})")
    classes = summary.get("classes")
    if classes is None:  # a run stopped before its first fold ended: the checkpoint knows them
        import torch

        ckpt = torch.load(path / f"fold-{finished[0]}" / "last.pt", map_location="cpu", weights_only=True)
        classes = ckpt["classes"]
    return RunInfo(path, config, summary, histories, finished, classes)


def _ensure_predictions(run: RunInfo) -> Predictions | None:
    """Predictions of the finished folds; computed from ``last.pt`` (needs the data) for runs
    made before escnet saved them."""
    preds = run.predictions()
    if preds is None and all((run.path / f"fold-{f}" / "last.pt").exists() for f in run.finished):
        from escnet.evaluation import evaluate_run

        try:
            evaluate_run(run.path, progress=False)
        except EscnetError as err:  # e.g. the data is not on this machine: report without them
            print(f"escnet: {run.path}: no held-out predictions ({err})", file=sys.stderr)
            return None
        preds = run.predictions()
    return preds


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = ("<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
         "text-align:left}img{max-width:100%;display:block;margin:1em 0}pre{background:#f6f6f6;"
         "padding:1em;overflow:auto;max-height:24em}</style>")


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"{STYLE}</head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n")


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUNDIR/report.html`` (figures embedded; the PNGs also in ``RUNDIR/report/``)."""
    from escnet.plots import save_confusion, save_curves, save_per_class

    run = read_run(run_dir)
    figures = run.path / "report"
    figures.mkdir(exist_ok=True)
    title = f"{run.config.model} — {run.name}"
    save_curves(run.histories, figures / "curves.png", run.config.model)
    data = run.summary.get("data", run.config.data_dir)
    parts = [f"<p>{html.escape(run.status)}; data {html.escape(data)}; "
             f"machine {html.escape(run.summary.get('machine', 'not recorded'))}</p>"]
    mean, std = run.mean_std()
    fold_rows = []
    for fold, hist in run.histories.items():
        metrics_path = run.path / f"fold-{fold}" / "metrics.json"
        f1 = json.loads(metrics_path.read_text())["macro_f1"] if metrics_path.exists() else None
        done = fold in run.finished
        fold_rows.append([fold, f"{len(hist)}/{run.config.num_epochs}", pct(hist[-1]["test_accuracy"]),
                          pct(f1), pct(max(h["test_accuracy"] for h in hist)),
                          f"{np.median([h['seconds'] for h in hist]):.1f}",
                          "finished" if done else "running"])
    parts.append("<h2>Held-out accuracy per fold</h2>" + _table(
        ["fold", "epochs", "accuracy (%)", "macro-F1 (%)", "best epoch (%, optimistic)", "s / epoch",
         "state"], fold_rows))
    parts.append(f"<p><b>Mean over {len(run.finished)} finished folds: {100 * mean:.1f} % ± "
                 f"{100 * std:.1f}</b> (population std over folds; last epoch of each fold).</p>")
    parts.append("<h2>Training curves</h2>" + _img(figures / "curves.png", "training curves"))
    preds = _ensure_predictions(run)
    if preds is not None:
        pooled = classification_metrics(preds.labels, preds.predicted, preds.classes)
        parts.append(f"<h2>Pooled over the finished folds ({pooled['clips']} clips)</h2>"
                     f"<p>accuracy {pct(pooled['accuracy'])} %, macro-F1 {pct(pooled['macro_f1'])} %</p>")
        save_confusion(np.asarray(pooled["confusion"]), preds.classes, figures / "confusion.png",
                       "confusion matrix, pooled")
        save_per_class(pooled["per_class_accuracy"], {c: major_category(c) for c in preds.classes},
                       figures / "per_class.png", "per-class accuracy, pooled (worst to best)")
        parts.append(_img(figures / "confusion.png", "confusion matrix"))
        parts.append(_img(figures / "per_class.png", "per-class accuracy"))
        pairs = confused_pairs(preds)
        parts.append("<h2>Most confused pairs</h2>" + _table(
            ["true", "predicted as", "clips", "examples"],
            [[p["true"], p["predicted"], str(p["count"]), ", ".join(p["files"])] for p in pairs]))
    evaluation = run.path / "evaluation.json"
    ev = json.loads(evaluation.read_text()) if evaluation.exists() else {}
    if ev.get("tta", 0) > 1:
        parts.append(f"<p>With test-time averaging over {ev['tta']} shifts (escnet evaluate --tta): "
                     f"{pct(ev['accuracy_tta_mean'])} % ± {pct(ev['accuracy_tta_std'])}</p>")
    parts.append("<h2>Config</h2><pre>" + html.escape(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
                 + "</pre>")
    out = run.path / "report.html"
    out.write_text(_page(title, "".join(parts)))
    return out


# --- comparison -------------------------------------------------------------------------------

COMPARE_COLUMNS = ["run", "model", "parameters", "GMACs/clip", "epochs"]


def format_accuracy(row: dict) -> str:
    """A compare row's mean ± std over folds (%), or its single fold."""
    if len(row["folds"]) == 1:
        return f"{100 * row['mean']:.1f} (1 fold)"
    return f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}"


def split_run_groups(runs: list[RunInfo]) -> list[list[RunInfo]]:
    """Group runs that are one experiment split over folds: the same settings apart from
    ``folds`` (and those that do not change the numbers) and no finished fold in common, as
    when fold 1 ran in one session and folds 2-5 in the next. Order is kept."""
    from escnet.training import RESUME_FREE

    def key(run: RunInfo) -> dict:
        return {k: v for k, v in run.config.to_dict().items() if k not in (*RESUME_FREE, "folds")}

    groups: list[list[RunInfo]] = []
    for run in runs:
        home = next((g for g in groups if key(g[0]) == key(run)
                     and not {f for r in g for f in r.finished} & set(run.finished)), None)
        if home is None:
            groups.append([run])
        else:
            home.append(run)
    return groups


def _common_start(texts: list[str]) -> str:
    """The longest start all ``texts`` share, character by character."""
    shortest = min(map(len, texts))
    return texts[0][:next((i for i in range(shortest) if len({t[i] for t in texts}) > 1), shortest)]


def joined_name(names: list[str]) -> str:
    """One row name for the runs of one experiment: what they share around the words that differ,
    as a shell would brace it (``kumar-{f1,f2345}-10ep``), else ``a + b``."""
    if len(names) == 1:
        return names[0]
    head = _common_start(names)
    head = head[:max((i + 1 for i, c in enumerate(head) if not c.isalnum()), default=0)]
    rests = [name[len(head):] for name in names]
    tail = _common_start([rest[::-1] for rest in rests])[::-1]
    tail = tail[next((i for i, c in enumerate(tail) if not c.isalnum()), len(tail)):]
    middles = [rest[:len(rest) - len(tail)] for rest in rests]
    if not (head or tail) or not all(middles):
        return " + ".join(names)
    return f"{head}{{{','.join(middles)}}}{tail}"


def _compare_row(parts: list[RunInfo]) -> dict:
    """One compare row (fractions, not %) from the runs of one experiment."""
    from escnet.models import count_macs, create_model

    config = parts[0].config
    model = create_model(config.model, config.replace(pretrained=""))
    folds = {f: run.accuracy(f) for run in parts for f in run.finished}
    preds = [_ensure_predictions(run) for run in parts]
    f1 = None
    if all(p is not None for p in preds):
        pooled = Predictions.concat(preds)
        f1 = classification_metrics(pooled.labels, pooled.predicted, pooled.classes)["macro_f1"]
    if len(parts) == 1:
        status = parts[0].status
    elif all(run.status == "complete" for run in parts):
        status = f"complete ({len(parts)} runs)"
    else:
        status = "; ".join(f"{run.name}: {run.status}" for run in parts)
    return {"run": joined_name([run.name for run in parts]), "model": config.model,
            "parameters": sum(p.numel() for p in model.parameters()),
            "gmacs": count_macs(model, config) / 1e9, "epochs": config.num_epochs,
            "folds": folds, "mean": float(np.mean(list(folds.values()))),
            "std": float(np.std(list(folds.values()))), "macro_f1": f1,
            "epoch_seconds": float(np.median([h["seconds"] for run in parts
                                              for hist in run.histories.values() for h in hist])),
            "status": status}


def compare(run_dirs: list[str | Path], out_dir: str | Path) -> list[dict]:
    """Compare runs: ``compare.md``, ``compare.csv``, ``compare.png`` and ``compare.html`` in
    ``out_dir``, sorted by mean accuracy. Runs that are one experiment split over folds
    (:func:`split_run_groups`) make one row, named by :func:`joined_name`. Returns the rows
    (fractions, not %). A run named twice (two paths to one folder too) is refused: it would
    show as two identical rows."""
    from escnet.plots import save_comparison

    first_named: dict[Path, str | Path] = {}
    for path in run_dirs:
        folder = Path(path).resolve()
        if folder in first_named:
            raise EscnetError(f"{path}: the same run as {first_named[folder]}, named twice; "
                              "name each run once")
        first_named[folder] = path
    runs = [read_run(p) for p in run_dirs]
    for run in runs[1:]:
        if run.classes != runs[0].classes:
            raise DataError(f"{run.path}: its classes differ from those of {runs[0].path}; compare runs "
                            "on the same dataset")
    folds = sorted({f for run in runs for f in run.finished}, key=lambda f: (len(f), f))
    rows = [_compare_row(group) for group in split_run_groups(runs)]
    rows.sort(key=lambda r: -r["mean"])
    out = make_output_dir(out_dir)
    header = [*COMPARE_COLUMNS, *[f"fold {f}" for f in folds], "mean ± std", "macro-F1 (pooled)",
              "s / epoch", "status"]
    table = [[r["run"], r["model"], f"{r['parameters']:,}", f"{r['gmacs']:.3f}", str(r["epochs"]),
              *[pct(r["folds"].get(f)) for f in folds], format_accuracy(r),
              pct(r["macro_f1"]), f"{r['epoch_seconds']:.1f}", r["status"]] for r in rows]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in table]
    (out / "compare.md").write_text("Accuracy and macro-F1 in %.\n\n" + "\n".join(md) + "\n")
    with (out / "compare.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "model", "parameters", "gmacs_per_clip", "epochs",
                         *[f"fold_{x}" for x in folds], "accuracy_mean", "accuracy_std", "macro_f1",
                         "epoch_seconds", "status"])
        for r in rows:
            writer.writerow([r["run"], r["model"], r["parameters"], f"{r['gmacs']:.4f}", r["epochs"],
                             *[("" if f not in r["folds"] else f"{r['folds'][f]:.4f}") for f in folds],
                             f"{r['mean']:.4f}", f"{r['std']:.4f}",
                             "" if r["macro_f1"] is None else f"{r['macro_f1']:.4f}",
                             f"{r['epoch_seconds']:.2f}", r["status"]])
    save_comparison([f"{r['run']} ({r['model']})" for r in rows], [r["mean"] for r in rows],
                    [r["std"] for r in rows], out / "compare.png")
    body = ("<p>Held-out accuracy (last epoch of each fold) and macro-F1 in %; ± is the std over "
            "folds.</p>" + _table(header, table) + _img(out / "compare.png", "mean accuracy per run"))
    (out / "compare.html").write_text(_page("escnet comparison", body))
    return rows


def benchmark(models: list[str], data_dir: str, out_dir: str | Path, overrides: dict,
              progress: bool = True) -> list[dict]:
    """Train each of ``models`` with the same settings into ``out_dir/MODEL``, then
    :func:`compare` them into ``out_dir``. A run already there is resumed (a finished one only
    re-reads its data), so an interrupted benchmark continues where it stopped."""
    from escnet.config import load_config
    from escnet.models import list_models
    from escnet.training import format_summary, train

    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise EscnetError(f"--models: unknown model {', '.join(unknown)}; choose from "
                          f"{', '.join(list_models())}")
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise EscnetError(f"--models: {', '.join(twice)} named twice; name each model once")
    out = Path(out_dir)
    dirs = []
    for name in models:
        config = load_config(None, {**overrides, "model": name, "data_dir": data_dir})
        run_dir = out / name
        summary = train(config, run_dir, resume=(run_dir / "config.yaml").exists(), progress=progress)
        print(format_summary(summary))
        dirs.append(run_dir)
    return compare(dirs, out)
