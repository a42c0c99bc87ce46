"""Comparing runs: one row per experiment (runs split over folds joined), written as Markdown,
CSV, a bar chart and an HTML page."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from escnet.config import RESULT_FREE
from escnet.errors import DataError, EscnetError
from escnet.files import atomic_write_text, command_folder
from escnet.models import SoundClassifier, count_macs, count_parameters
from escnet.reports.html import held_out_predictions, img, page, pct, table
from escnet.reports.plots import save_comparison
from escnet.runs import Predictions, RunDir, mean_std
from escnet.runs.metrics import classification_metrics, held_out_figures

COMPARE_COLUMNS = ["run", "model", "parameters", "GMACs/clip", "epochs"]


def format_accuracy(row: dict) -> str:
    """A compare row's mean ± std over folds (%), or its single fold."""
    if len(row["folds"]) == 1:
        return f"{100 * row['mean']:.1f} (1 fold)"
    return f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}"


def split_run_groups(runs: list[RunDir]) -> list[list[RunDir]]:
    """Group runs that are one experiment split over folds: the same settings apart from
    ``folds`` (and those that do not change the numbers) and no finished fold in common, as
    when fold 1 ran in one session and folds 2-5 in the next. Order is kept."""
    def key(run: RunDir) -> dict:
        return {k: v for k, v in run.config.flat().items() if k not in (*RESULT_FREE, "data.folds")}

    groups: list[list[RunDir]] = []
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


def _compare_row(parts: list[RunDir]) -> dict:
    """One compare row (fractions, not %) from the runs of one experiment."""
    config = parts[0].config
    backbone = SoundClassifier.from_config(config, pretrained=False).backbone
    folds = {f: run.accuracy(f) for run in parts for f in run.finished}
    mean, std = mean_std(list(folds.values()))
    preds = [held_out_predictions(run) for run in parts]
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
    return {"run": joined_name([run.name for run in parts]), "model": config.model.name,
            "parameters": count_parameters(backbone),
            "gmacs": count_macs(backbone, config.features.n_mels, config.length) / 1e9,
            "epochs": config.train.num_epochs, "folds": folds, "mean": mean, "std": std,
            "macro_f1": f1,
            "epoch_seconds": float(np.median([h["seconds"] for run in parts
                                              for hist in run.histories.values() for h in hist])),
            "robustness": _robustness(parts), "ece": _ece(parts), "status": status}


def _ece(parts: list[RunDir]) -> float | None:
    """Held-out expected calibration error after calibration, pooled over the experiment's
    finished folds; ``None`` for runs made before escnet calibrated."""
    scores = [run.fold_scores(run.finished) for run in parts]
    if any(s is None for s in scores):
        return None
    return held_out_figures([f for s in scores for f in s])["calibration"]["ece_after"]


def _robustness(parts: list[RunDir]) -> float | None:
    """Mean accuracy over corruptions (``escnet robustness``) of the experiment's finished
    folds, weighted by clips; ``None`` unless every part has one covering its finished folds."""
    results = [run.read_robustness() for run in parts]
    if not all(r and set(r["folds"]) == set(run.finished) for r, run in zip(results, parts, strict=True)):
        return None
    return sum(r["mean_corrupted"] * r["clips"] for r in results) / sum(r["clips"] for r in results)


def compare(run_dirs: list[str | Path], out_dir: str | Path, command: str = "compare") -> list[dict]:
    """Compare runs: ``compare.md``, ``compare.csv``, ``compare.png`` and ``compare.html`` in
    ``out_dir``, sorted by mean accuracy. Runs that are one experiment split over folds
    (:func:`split_run_groups`) make one row, named by :func:`joined_name`. Returns the rows
    (fractions, not %). ``command``: whose folder ``out_dir`` is (:func:`write_comparison`)."""
    rows = compare_rows(run_dirs)
    write_comparison(rows, out_dir, command)
    return rows


def compare_rows(run_dirs: list[str | Path]) -> list[dict]:
    """One row per experiment, best mean accuracy first. A run named twice (two paths to one
    folder too) is refused: it would show as two identical rows."""
    first_named: dict[Path, str | Path] = {}
    for path in run_dirs:
        folder = Path(path).resolve()
        if folder in first_named:
            raise EscnetError(f"{path}: the same run as {first_named[folder]}, named twice; "
                              "name each run once")
        first_named[folder] = path
    runs = [RunDir(p) for p in run_dirs]
    for run in runs:
        run.require_finished()
    for run in runs[1:]:
        if run.classes != runs[0].classes:
            raise DataError(f"{run.path}: its classes differ from those of {runs[0].path}; compare runs "
                            "on the same dataset")
    rows = [_compare_row(group) for group in split_run_groups(runs)]
    return sorted(rows, key=lambda r: -r["mean"])


def _fold_names(rows: list[dict]) -> list[str]:
    return sorted({f for r in rows for f in r["folds"]}, key=lambda f: (len(f), f))


def write_comparison(rows: list[dict], out_dir: str | Path, command: str = "compare") -> None:
    """The rows of :func:`compare_rows` as ``compare.md``, ``.csv``, ``.png`` and ``.html`` in
    ``out_dir``: new, empty, or one ``command`` wrote to before (``compare``, or ``benchmark``
    beside its runs: :func:`~escnet.files.command_folder`)."""
    out = command_folder(out_dir, "out", command)
    header, cells = _table_cells(rows)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    atomic_write_text(out / "compare.md", "Accuracy, macro-F1 and robustness (mean accuracy over "
                      "corruptions, escnet robustness) in %; ECE: held-out expected calibration "
                      "error after calibration (15 bins).\n\n" + "\n".join(md) + "\n")
    atomic_write_text(out / "compare.csv", _csv(rows))
    save_comparison([f"{r['run']} ({r['model']})" for r in rows], [r["mean"] for r in rows],
                    [r["std"] for r in rows], out / "compare.png")
    body = ("<p>Held-out accuracy (last epoch of each fold) and macro-F1 in %; ± is the std over "
            "folds; robustness is the mean accuracy over corruptions (escnet robustness); ECE "
            "the held-out expected calibration error after calibration (15 bins).</p>"
            + table(header, cells) + img(out / "compare.png", "mean accuracy per run"))
    atomic_write_text(out / "compare.html", page("escnet comparison", body))


def _table_cells(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and cells (%, formatted) of the comparison table."""
    folds = _fold_names(rows)
    header = [*COMPARE_COLUMNS, *[f"fold {f}" for f in folds], "mean ± std", "macro-F1 (pooled)",
              "robustness", "ECE", "s / epoch", "status"]
    cells = [[r["run"], r["model"], f"{r['parameters']:,}", f"{r['gmacs']:.3f}", str(r["epochs"]),
              *[pct(r["folds"].get(f)) for f in folds], format_accuracy(r),
              pct(r["macro_f1"]), pct(r["robustness"]),
              "–" if r["ece"] is None else f"{r['ece']:.3f}", f"{r['epoch_seconds']:.1f}", r["status"]]
             for r in rows]
    return header, cells


def _csv(rows: list[dict]) -> str:
    """The comparison as CSV, fractions with 4 decimals."""
    folds = _fold_names(rows)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", "model", "parameters", "gmacs_per_clip", "epochs",
                     *[f"fold_{x}" for x in folds], "accuracy_mean", "accuracy_std", "macro_f1",
                     "robustness", "ece", "epoch_seconds", "status"])
    for r in rows:
        writer.writerow([r["run"], r["model"], r["parameters"], f"{r['gmacs']:.4f}", r["epochs"],
                         *[("" if f not in r["folds"] else f"{r['folds'][f]:.4f}") for f in folds],
                         f"{r['mean']:.4f}", f"{r['std']:.4f}",
                         "" if r["macro_f1"] is None else f"{r['macro_f1']:.4f}",
                         "" if r["robustness"] is None else f"{r['robustness']:.4f}",
                         "" if r["ece"] is None else f"{r['ece']:.4f}",
                         f"{r['epoch_seconds']:.2f}", r["status"]])
    return out.getvalue()
