"""How well detected events match the true ones: the DCASE event-based and segment-based F1
(the definitions of ``sed_eval``, Mesaros et al. 2016, "Metrics for polyphonic sound event
detection"), micro-averaged over classes.

Written here rather than imported: ``sed_eval`` and ``sed_scores_eval`` both import
``dcase_util``, which needs ``pkg_resources`` (gone from setuptools 81), a heavy and breaking
dependency for two short definitions. Tests check these against hand-counted cases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class Timed(Protocol):
    label: str
    start: float
    end: float


@dataclass(frozen=True)
class F1:
    """Counts and their F-score (precision and recall too)."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 1.0

    def __add__(self, other: F1) -> F1:
        return F1(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict:
        return {"f1": round(self.f1, 4), "precision": round(self.precision, 4),
                "recall": round(self.recall, 4), "tp": self.tp, "fp": self.fp, "fn": self.fn}


def _max_matching(pairs: list[list[int]], n_right: int) -> int:
    """Size of a maximum matching of a bipartite graph (``pairs[i]``: the right nodes left node
    ``i`` may take), by augmenting paths."""
    owner = [-1] * n_right

    def augment(i: int, seen: set[int]) -> bool:
        for j in pairs[i]:
            if j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, set()) for i in range(len(pairs)))


def event_f1(reference: Sequence[Timed], estimated: Sequence[Timed], onset_collar: float = 0.5,
             offset_collar: float = 0.5, offset_share: float = 0.2) -> F1:
    """Event-based counts: an estimated event is a hit when a reference event of its label
    starts within ``onset_collar`` seconds of it and ends within ``max(offset_collar,
    offset_share × the reference's length)``; each event counts once (maximum matching)."""
    total = F1(0, 0, 0)
    for label in {e.label for e in reference} | {e.label for e in estimated}:
        ref = [e for e in reference if e.label == label]
        est = [e for e in estimated if e.label == label]
        pairs = [[j for j, r in enumerate(ref)
                  if abs(r.start - e.start) <= onset_collar
                  and abs(r.end - e.end) <= max(offset_collar, offset_share * (r.end - r.start))]
                 for e in est]
        hits = _max_matching(pairs, len(ref))
        total += F1(hits, len(est) - hits, len(ref) - hits)
    return total


def segment_f1(reference: Sequence[Timed], estimated: Sequence[Timed], duration: float,
               segment: float = 1.0) -> F1:
    """Segment-based counts: the recording cut into ``segment``-second pieces; a class is
    active in a piece when an event of it overlaps the piece; counts over (piece, class)."""
    n = max(1, math.ceil(duration / segment - 1e-9))

    def active(events: Sequence[Timed]) -> set[tuple[int, str]]:
        out = set()
        for e in events:
            first, last = int(e.start // segment), math.ceil(e.end / segment - 1e-9)
            out |= {(k, e.label) for k in range(max(first, 0), min(max(last, first + 1), n))}
        return out

    ref, est = active(reference), active(estimated)
    return F1(len(ref & est), len(est - ref), len(ref - est))
