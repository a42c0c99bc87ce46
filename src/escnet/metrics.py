"""Classification metrics of held-out predictions (scikit-learn), per fold and pooled.

Each finished fold of a run holds ``fold-K/predictions.csv`` (one row per held-out clip:
``path,label,predicted,confidence``, class names). Everything else — accuracy, macro-F1,
per-class accuracy, the confusion matrix, the most confused pairs — is computed from those
files, so a report can always be rebuilt from a run directory.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score

# ESC-50's classes in target order; target // 10 is the major category.
ESC50_CLASSES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops", "wind",
    "pouring_water", "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps", "laughing",
    "brushing_teeth", "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks", "can_opening",
    "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick", "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells", "airplane",
    "fireworks", "hand_saw",
)
ESC50_CATEGORIES = ("Animals", "Natural soundscapes & water", "Human, non-speech",
                    "Interior/domestic", "Exterior/urban")


def major_category(name: str) -> str | None:
    """ESC-50 major category of a class name, or ``None`` for a class not in ESC-50."""
    return ESC50_CATEGORIES[ESC50_CLASSES.index(name) // 10] if name in ESC50_CLASSES else None


@dataclass
class Predictions:
    """Held-out predictions: ``labels`` and ``predicted`` ``(clips,)`` class indices into ``classes``."""

    paths: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    classes: list[str]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "predicted", "confidence"])
            for p, y, q, c in zip(self.paths, self.labels, self.predicted, self.confidence, strict=True):
                writer.writerow([p, self.classes[y], self.classes[q], f"{c:.6f}"])
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, classes: list[str]) -> Predictions:
        index = {c: i for i, c in enumerate(classes)}
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return cls([r["path"] for r in rows], np.array([index[r["label"]] for r in rows], dtype=int),
                   np.array([index[r["predicted"]] for r in rows], dtype=int),
                   np.array([float(r["confidence"]) for r in rows]), classes)

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        return cls([p for part in parts for p in part.paths],
                   np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.predicted for p in parts]),
                   np.concatenate([p.confidence for p in parts]), parts[0].classes)


def classification_metrics(labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, macro-F1, per-class accuracy (recall) and the confusion matrix.

    Every class counts in macro-F1, including one never predicted (its F1 is 0) — scikit-learn's
    ``zero_division=0``. A class absent from ``labels`` has per-class accuracy ``None``.

    Returns:
        ``{"accuracy", "macro_f1", "per_class_accuracy": {name: acc|None},
        "confusion": [[count]] (rows true, columns predicted), "clips"}``.
    """
    k = np.arange(len(classes))
    cm = confusion_matrix(labels, predicted, labels=k)
    support = cm.sum(axis=1)
    per_class = {c: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, c in enumerate(classes)}
    present = np.unique(labels)  # F1 over the classes this split holds
    return {
        "accuracy": float(np.mean(labels == predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro",
                                   zero_division=0)),
        "per_class_accuracy": per_class,
        "confusion": cm.tolist(),
        "clips": len(labels),
    }


def confused_pairs(preds: Predictions, top: int = 10, examples: int = 3) -> list[dict]:
    """The ``top`` most frequent (true, predicted) mistakes, each with up to ``examples`` files."""
    wrong = np.flatnonzero(preds.labels != preds.predicted)
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in wrong:
        pairs.setdefault((int(preds.labels[i]), int(preds.predicted[i])), []).append(int(i))
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    return [{"true": preds.classes[t], "predicted": preds.classes[p], "count": len(rows),
             "files": [Path(preds.paths[i]).name for i in rows[:examples]]}
            for (t, p), rows in ranked]


def write_metrics(folder: Path, preds: Predictions) -> dict:
    """``metrics.json`` and ``per_class.csv``/``confusion.csv`` for ``preds`` into ``folder``."""
    result = classification_metrics(preds.labels, preds.predicted, preds.classes)
    (folder / "metrics.json").write_text(json.dumps(result, indent=1))
    with (folder / "per_class.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "category", "accuracy", "clips"])
        support = np.asarray(result["confusion"]).sum(axis=1)
        for i, (name, acc) in enumerate(result["per_class_accuracy"].items()):
            writer.writerow([name, major_category(name) or "", "" if acc is None else f"{acc:.4f}",
                             int(support[i])])
    with (folder / "confusion.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *preds.classes])
        for name, row in zip(preds.classes, result["confusion"], strict=True):
            writer.writerow([name, *row])
    return result
