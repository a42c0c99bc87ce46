"""Classification metrics of held-out predictions (scikit-learn), per fold and pooled.

Each finished fold of a run holds ``fold-K/predictions.csv`` (:class:`escnet.runs.Predictions`).
Everything else (accuracy, macro-F1, per-class accuracy, the confusion matrix, the most confused
pairs) is computed from those files, so a report can always be rebuilt from a run directory.
"""

from __future__ import annotations

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


def confused_pairs(labels: np.ndarray, predicted: np.ndarray, paths: list[str], classes: list[str],
                   top: int = 10, examples: int = 3) -> list[dict]:
    """The ``top`` most frequent (true, predicted) mistakes among clips ``(clips,)`` of class
    indices, each with up to ``examples`` file names."""
    wrong = np.flatnonzero(labels != predicted)
    pairs: dict[tuple[int, int], list[int]] = {}
    for i in wrong:
        pairs.setdefault((int(labels[i]), int(predicted[i])), []).append(int(i))
    ranked = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:top]
    return [{"true": classes[t], "predicted": classes[p], "count": len(rows),
             "files": [Path(paths[i]).name for i in rows[:examples]]}
            for (t, p), rows in ranked]
