"""The Polyphonic Sound Detection Score (PSDS; Bilen et al. 2020, "A Framework for the Robust
Evaluation of Sound Event Detection"): DCASE's threshold-free score of event detection.

Detections are read off each class's score over time at every threshold (where the score is at
or above it), not from one operating point. At each threshold, per class:

- a detection is **true** when at least ``dtc`` of its length lies in reference events of its
  class (the detection tolerance criterion), else it is a false positive; a false one with at
  least ``cttc`` of its length in events of another class is also a cross-trigger on that class;
- a reference event is **found** when the true detections of its class cover at least ``gtc``
  of it (the ground-truth intersection criterion).

Each class gives a ROC: the share of its events found against its effective false positive
rate per hour (``FP / hours + alpha_ct × mean over the other classes of cross-triggers per hour
of their events``), a staircase (at each rate, the best share reached at or below it). The
PSD-ROC is the mean of the class ROCs less ``alpha_st`` times their standard deviation; PSDS is
its area up to ``max_efpr`` per hour, divided by ``max_efpr`` (0 to 1).

Thresholds: every distinct score of the class (its lowest included: there the whole recording
is one detection, as sed_scores_eval counts it), or :data:`MAX_THRESHOLDS` spread over them by
quantile where there are more; with no more, the score agrees with sed_scores_eval's exact PSDS
(a test compares them where it is installed). Classes: those of the reference (a class no one annotated has no
ROC). Zero-length annotations are left out: intersection criteria need a length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from escnet.deploy.event_metrics import Timed

MAX_THRESHOLDS = 200
"""Most thresholds per class (operating points of its ROC)."""
_CELLS = 1 << 22
"""Threshold × piece cells worked on at once (a few tens of MB), however long a recording."""


@dataclass(frozen=True)
class PsdsSettings:
    """The criteria and weights of PSDS; :data:`SCENARIOS` holds DCASE's two."""

    dtc: float
    gtc: float
    cttc: float | None = None
    alpha_ct: float = 0.0
    alpha_st: float = 1.0
    max_efpr: float = 100.0


SCENARIOS = {1: PsdsSettings(0.7, 0.7, None, 0.0, 1.0, 100.0),
             2: PsdsSettings(0.1, 0.1, 0.3, 0.5, 1.0, 100.0)}
"""DCASE 2021-2023 task 4: scenario 1 rewards exact boundaries, scenario 2 finding each sound and
not confusing classes."""


@dataclass(frozen=True)
class ScoreTrack:
    """One recording's class scores over time: ``scores[i]`` ``(classes,)`` holds from
    ``edges[i]`` to ``edges[i + 1]`` seconds (``edges`` ``(n + 1,)``, ascending)."""

    edges: np.ndarray
    scores: np.ndarray


def _overlap(edges: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """``(pieces, spans)``: seconds of each piece inside each span."""
    if not spans:
        return np.zeros((len(edges) - 1, 0))
    a, b = np.asarray(spans, dtype=np.float64).T
    return np.clip(np.minimum(edges[1:, None], b) - np.maximum(edges[:-1, None], a), 0, None)


def _union(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _thresholds(values: np.ndarray) -> np.ndarray:
    levels = np.unique(values)
    if len(levels) > MAX_THRESHOLDS:
        levels = np.unique(np.quantile(levels, np.linspace(0, 1, MAX_THRESHOLDS), method="nearest"))
    return levels


@dataclass
class _Counts:
    tp: np.ndarray
    fp: np.ndarray
    ct: dict[str, np.ndarray]


def _count_file(track: ScoreTrack, k: int, label: str, spans: dict[str, list[tuple[float, float]]],
                thresholds: np.ndarray, s: PsdsSettings, counts: _Counts) -> None:
    """Add one recording's detections of class ``k`` (named ``label``) at each threshold."""
    edges, score = track.edges, track.scores[:, k]
    width = np.diff(edges)
    own = spans.get(label, [])
    inside_own = _overlap(edges, _union(own)).sum(axis=1)
    per_event = _overlap(edges, own)
    need = s.gtc * np.array([b - a for a, b in own]) - 1e-9
    others = ({c: _overlap(edges, _union(v)).sum(axis=1) for c, v in spans.items() if c != label}
              if s.alpha_ct else {})
    step = max(1, _CELLS // max(len(score), 1))
    for lo in range(0, len(thresholds), step):
        theta = thresholds[lo:lo + step]
        on = score[None, :] >= theta[:, None]  # (thresholds, pieces)
        starts = on & ~np.pad(on[:, :-1], ((0, 0), (1, 0)))
        row, piece = np.nonzero(on)  # the detected cells, row by row
        run = np.cumsum(starts[row, piece]) - 1  # each cell's detection
        n_runs = int(starts.sum())
        if not n_runs:
            continue
        first = np.nonzero(starts)[0]  # each detection's threshold
        length = np.bincount(run, width[piece], n_runs)  # seconds of each detection
        real = length > 1e-9
        true = np.bincount(run, inside_own[piece], n_runs) >= s.dtc * length - 1e-9
        counts.fp[lo:lo + step] += np.bincount(first[real & ~true], minlength=len(theta))
        if own:
            kept = np.zeros(on.shape)
            kept[row, piece] = true[run]
            counts.tp[lo:lo + step] += (kept @ per_event >= need).sum(axis=1)
        for c, inside in others.items():
            crossed = real & ~true & (np.bincount(run, inside[piece], n_runs) >= s.cttc * length - 1e-9)
            counts.ct[c][lo:lo + step] += np.bincount(first[crossed], minlength=len(theta))


def _staircase(tpr: np.ndarray, efpr: np.ndarray, max_efpr: float) -> tuple[np.ndarray, np.ndarray]:
    """A class's ROC as a staircase: at each rate, the best share at or below it."""
    order = np.lexsort((tpr, efpr))
    tpr, efpr = np.maximum.accumulate(tpr[order]), efpr[order]
    last = np.r_[efpr[1:] != efpr[:-1], True]  # per distinct rate, its best share
    keep = last & (efpr <= max_efpr)
    return tpr[keep], efpr[keep]


def psds(tracks: dict[str, ScoreTrack], reference: dict[str, Sequence[Timed]],
         durations: dict[str, float], classes: list[str], settings: PsdsSettings) -> dict:
    """PSDS of the score ``tracks`` (by recording; ``classes`` name their columns) against the
    ``reference`` events, over recordings of ``durations`` seconds (see the module's
    description). Returns ``{"psds", "settings", "classes", "per_class": {class: {"events",
    "auc"}}}``; ``psds`` is ``None`` when the reference holds no event with a length."""
    if (s := settings).alpha_ct and s.cttc is None:
        raise ValueError("PSDS: alpha_ct > 0 needs a cross-trigger criterion (cttc)")
    spans = {f: _spans(events) for f, events in reference.items()}
    labels = sorted({c for per_file in spans.values() for c in per_file} & set(classes))
    hours = sum(durations.values()) / 3600
    event_hours = {c: sum(b - a for f in spans.values() for a, b in f.get(c, [])) / 3600 for c in labels}
    rocs = {}
    for label in labels:
        k = classes.index(label)
        thresholds = _thresholds(np.concatenate([t.scores[:, k] for t in tracks.values()]))
        counts = _Counts(np.zeros(len(thresholds)), np.zeros(len(thresholds)),
                         {c: np.zeros(len(thresholds)) for c in labels if c != label})
        for f, track in tracks.items():
            _count_file(track, k, label, spans.get(f, {}), thresholds, s, counts)
        events = sum(len(f.get(label, [])) for f in spans.values())
        efpr = counts.fp / hours
        if s.alpha_ct and counts.ct:
            efpr = efpr + s.alpha_ct * np.mean([counts.ct[c] / event_hours[c] for c in counts.ct], axis=0)
        rocs[label] = (events, *_staircase(np.r_[0.0, counts.tp / events], np.r_[0.0, efpr], s.max_efpr))
    if not rocs:
        return {"psds": None, "settings": asdict(s), "classes": [], "per_class": {}}
    grid = np.unique(np.concatenate([efpr for _, _, efpr in rocs.values()]))
    curves = np.array([tpr[np.searchsorted(efpr, grid, side="right") - 1] for _, tpr, efpr in rocs.values()])
    effective = np.maximum(curves.mean(axis=0) - s.alpha_st * curves.std(axis=0), 0.0)
    return {"psds": round(_area(effective, grid, s.max_efpr), 4), "settings": asdict(s), "classes": labels,
            "per_class": {c: {"events": n, "auc": round(_area(tpr, efpr, s.max_efpr), 4)}
                          for c, (n, tpr, efpr) in rocs.items()}}


def _area(tpr: np.ndarray, efpr: np.ndarray, max_efpr: float) -> float:
    """Area under a staircase starting at rate 0, up to ``max_efpr``, over ``max_efpr``."""
    x = np.r_[efpr, max_efpr]
    return float(np.sum(tpr * np.diff(x)) / max_efpr)


def _spans(events: Sequence[Timed]) -> dict[str, list[tuple[float, float]]]:
    """Each label's spans, zero-length ones left out."""
    out: dict[str, list[tuple[float, float]]] = {}
    for e in events:
        if e.end > e.start:
            out.setdefault(e.label, []).append((float(e.start), float(e.end)))
    return out
