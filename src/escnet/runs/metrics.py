"""Classification metrics of held-out predictions (scikit-learn), per fold and pooled; the
calibration and open-set (unknown sounds) figures of held-out logits.

Each finished fold of a run holds ``fold-K/predictions.csv`` (:class:`escnet.runs.Predictions`).
Everything else (accuracy, macro-F1, per-class accuracy, the confusion matrix, the most confused
pairs) is computed from those files, so a report can always be rebuilt from a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, log_loss, roc_auc_score

from escnet.models.calibration import Calibration, softmax

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


# --- calibration and unknown sounds --------------------------------------------------------

def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE (Guo et al., 2017): clips binned by confidence into ``bins`` equal-width
    bins of [0, 1]; the mean over clips of |accuracy − mean confidence| of their bin.

    Written here (a few lines) rather than imported: scikit-learn's ``calibration_curve`` is
    binary only, and torchmetrics would be a dependency for this one function.
    """
    confidence, correct = np.asarray(confidence, np.float64), np.asarray(correct, np.float64)
    if not len(confidence):
        return float("nan")
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # bin k holds (k/bins, (k+1)/bins]
    total = 0.0
    for k in np.unique(which):
        inside = which == k
        total += abs(correct[inside].mean() - confidence[inside].mean()) * inside.sum()
    return float(total / len(confidence))


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean confidence, accuracy (NaN where empty) and clip count."""
    which = np.minimum((np.asarray(confidence) * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        conf = np.bincount(which, confidence, bins) / count
        acc = np.bincount(which, np.asarray(correct, np.float64), bins) / count
    return conf, acc, count


def negative_log_likelihood(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p(true class)`` (scikit-learn's ``log_loss``, clipped at 1e-15)."""
    return float(log_loss(labels, probabilities, labels=np.arange(probabilities.shape[1])))


@dataclass
class FoldScores:
    """A fold model's held-out clips: ``logits (clips, classes)``, ``labels (clips,)`` (-1 for
    a clip of a class left out of training) and unknown ``scores`` (``{name: (clips,)}``,
    :mod:`escnet.models.unknown`), with the model's :class:`Calibration`."""

    logits: np.ndarray
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    calibration: Calibration


UNCALIBRATED = ("not calibrated: no fold had validation clips to fit on (too few clips per class "
                "for train.validation_share); probabilities are the model's own and it never "
                "answers \"unknown\"")
"""What a run's end, ``calibrate`` and its report say when ``held_out_figures``' calibration
has ``validation_clips`` 0 (its ECE before and after are then the same figure)."""


def calibrated(figures: dict) -> bool:
    """Whether ``held_out_figures``' ``calibration`` was fit on any validation clip (figures
    written before they counted them are taken as calibrated)."""
    return figures.get("validation_clips", 1) > 0


def held_out_figures(folds: list[FoldScores], operating: str | None = None) -> dict:
    """Calibration and open-set figures of held-out clips, pooled over ``folds`` (each clip
    scored by its own fold's model, temperature and threshold).

    Returns ``{"calibration": {ece_before, ece_after, nll_before, nll_after, temperature, fit,
    clips, validation_clips}}`` (``validation_clips``: what the temperatures were fit on, 0 when
    no fold had any)
    and, when some clips are of unknown classes, ``"open_set"``: the AUROC of telling known from
    unknown clips, and at each model's threshold: the share of known clips kept, the false
    acceptance rate of unknown clips, the known clips' accuracy counting a rejection as an error
    (``known_accuracy_at_threshold``) and among the kept ones, against ``known_accuracy``: at
    the top level for the ``operating`` score, under ``by_score`` for every score all folds have.
    """
    known = [f.labels >= 0 for f in folds]
    if not any(k.any() for k in known):  # nothing held out of the known classes: no figures
        return {}
    pairs = list(zip(folds, known, strict=True))
    raw = np.concatenate([softmax(f.logits[k]) for f, k in pairs])
    cal = np.concatenate([f.calibration.probabilities(f.logits[k]) for f, k in pairs])
    labels = np.concatenate([f.labels[k] for f, k in zip(folds, known, strict=True)])
    result: dict = {"calibration": {
        "ece_before": expected_calibration_error(raw.max(1), raw.argmax(1) == labels),
        "ece_after": expected_calibration_error(cal.max(1), cal.argmax(1) == labels),
        "nll_before": negative_log_likelihood(raw, labels),
        "nll_after": negative_log_likelihood(cal, labels),
        "temperature": ([f.calibration.temperature for f in folds] if len(folds) > 1
                        else folds[0].calibration.temperature),
        "fit": [f.calibration.fit for f in folds] if len(folds) > 1 else folds[0].calibration.fit,
        "clips": len(labels),
        "validation_clips": sum(f.calibration.validation_clips for f in folds)}}
    if all(k.all() for k in known):
        return result
    is_known = np.concatenate(known)
    right = cal.argmax(1) == labels
    names = [n for n in folds[0].scores if all(n in f.scores for f in folds)]
    if not names:
        return result
    by_score = {}
    for name in names:
        pooled = np.concatenate([f.scores[name] for f in folds])
        entry: dict = {"auroc": float(roc_auc_score(is_known, pooled))}
        if all(name in f.calibration.thresholds for f in folds):
            accepted = np.concatenate([f.scores[name] >= f.calibration.thresholds[name] for f in folds])
            kept = accepted[is_known]
            entry |= {"known_kept": float(kept.mean()),
                      "false_acceptance": float(accepted[~is_known].mean()),
                      "known_accuracy_at_threshold": float(np.mean(right & kept)),
                      "accuracy_of_kept": float(right[kept].mean()) if kept.any() else None}
        by_score[name] = entry
    operating = operating if operating in by_score else names[0]
    result["open_set"] = {"score": operating, **by_score[operating],
                          "known_clips": int(is_known.sum()), "unknown_clips": int((~is_known).sum()),
                          "known_accuracy": float(right.mean()), "by_score": by_score}
    return result
