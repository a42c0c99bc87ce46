"""How well detected events match annotated ones, as DCASE scores them: event-based and
segment-based F-score and error rate with the definitions and conventions of ``sed_eval``
(Mesaros et al. 2016, "Metrics for polyphonic sound event detection"; ``sed_eval`` 0.2.1).

- **Event-based**: an estimated event is a hit when a reference event of its label starts within
  ``collar`` seconds of it and ends within ``max(collar, offset_share × the reference's
  length)``; each event counts once (a maximum bipartite matching, sed_eval's "optimal").
  Leftover pairs that would match but for the label are substitutions, paired first come first
  served in the lists' order, as sed_eval pairs them. Overall: ``ER = (S + D + I) / N``; per
  class: ``ER = (D + I) / N``.
- **Segment-based**: each recording cut into ``segment``-second pieces over its whole duration
  (sed_eval's ``evaluated_length_seconds``); a class is active in the pieces from
  ``floor(onset / segment)`` up to, not including, ``ceil(offset / segment)``: a zero-length
  event on a piece boundary is in no piece, one inside a piece is in that piece, and whatever
  lies past the recording's end is not counted. Per piece ``S = min(N, sys) − tp``,
  ``D = max(0, N − sys)``, ``I = max(0, sys − N)``.
- **Undefined is undefined**: precision with no estimated event, recall and error rate with no
  reference event, and an F-score with either, are ``None`` (sed_eval: NaN), never 1.0 or 0.0;
  class averages leave undefined classes out (sed_eval's ``nanmean``). Where sed_eval divides by
  ``N + eps`` and reports an error rate of about 4.5e15 for a class with insertions and no
  reference, escnet says undefined.

Written here rather than imported: ``sed_eval`` imports ``dcase_util``, which needs
``pkg_resources`` (gone from setuptools 81); tests compare these counts with sed_eval's where it
is installed, and with hand-counted cases always.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass
from typing import Protocol

COLLAR = 0.2
"""Seconds of onset (and least offset) tolerance: sed_eval's default, DCASE task 4's."""
OFFSET_SHARE = 0.2
"""Share of a reference event's length its offset may miss by (DCASE task 4; sed_eval's
default is 0.5)."""
SEGMENT = 1.0
"""Seconds per segment of the segment-based scores (sed_eval's and DCASE's default)."""


class Timed(Protocol):
    label: str
    start: float
    end: float


@dataclass(frozen=True)
class Tally:
    """Counts of one class or of all, summed over recordings, and the scores they give."""

    ref: int = 0
    """Reference events (or active reference segments)."""
    sys: int = 0
    """Estimated events (or active estimated segments)."""
    tp: int = 0
    subs: int = 0
    """Substitutions (overall counts only)."""
    fn: int = 0
    """Deletions: reference events neither hit nor substituted."""
    fp: int = 0
    """Insertions: estimated events neither hits nor substitutions."""

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    @property
    def precision(self) -> float | None:
        return self.tp / self.sys if self.sys else None

    @property
    def recall(self) -> float | None:
        return self.tp / self.ref if self.ref else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 0.0 if p == 0 and r == 0 else 2 * p * r / (p + r)

    @property
    def error_rate(self) -> float | None:
        return (self.subs + self.fn + self.fp) / self.ref if self.ref else None

    def to_dict(self) -> dict:
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        rates = {} if not self.ref else {
            "substitution_rate": rounded(self.subs / self.ref), "deletion_rate": rounded(self.fn / self.ref),
            "insertion_rate": rounded(self.fp / self.ref)}
        return {"f1": rounded(self.f1), "precision": rounded(self.precision),
                "recall": rounded(self.recall), "error_rate": rounded(self.error_rate), **rates,
                "ref": self.ref, "sys": self.sys, "tp": self.tp, "subs": self.subs, "fn": self.fn,
                "fp": self.fp}


def _max_matching(pairs: list[list[int]], n_right: int) -> list[int]:
    """A maximum matching of a bipartite graph (``pairs[i]``: the right nodes left node ``i``
    may take), by augmenting paths: ``owner[j]``, the left node right node ``j`` went to, or -1."""
    owner = [-1] * n_right

    def augment(i: int, seen: set[int]) -> bool:
        for j in pairs[i]:
            if j not in seen:
                seen.add(j)
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(len(pairs)):
        augment(i, set())
    return owner


def _close(ref: Timed, est: Timed, collar: float, offset_share: float) -> bool:
    """sed_eval's onset and offset conditions (labels aside)."""
    return (abs(ref.start - est.start) <= collar
            and abs(ref.end - est.end) <= max(collar, offset_share * (ref.end - ref.start)))


def event_counts(reference: Sequence[Timed], estimated: Sequence[Timed], collar: float = COLLAR,
                 offset_share: float = OFFSET_SHARE) -> tuple[Tally, dict[str, Tally]]:
    """Event-based counts of one recording: overall (with substitutions) and per label."""
    matched_ref, matched_est, per_class = set(), set(), {}
    for label in sorted({e.label for e in reference} | {e.label for e in estimated}):
        ref = [i for i, e in enumerate(reference) if e.label == label]
        est = [i for i, e in enumerate(estimated) if e.label == label]
        pairs = [[j for j, r in enumerate(ref) if _close(reference[r], estimated[e], collar, offset_share)]
                 for e in est]
        owner = _max_matching(pairs, len(ref))
        hits = sum(o >= 0 for o in owner)
        matched_ref |= {ref[j] for j, o in enumerate(owner) if o >= 0}
        matched_est |= {est[o] for o in owner if o >= 0}
        per_class[label] = Tally(len(ref), len(est), hits, 0, len(ref) - hits, len(est) - hits)
    subs, taken = 0, set()
    for r in (i for i in range(len(reference)) if i not in matched_ref):
        for e in (i for i in range(len(estimated)) if i not in matched_est and i not in taken):
            if _close(reference[r], estimated[e], collar, offset_share):
                taken.add(e)
                subs += 1
                break
    tp = len(matched_ref)
    overall = Tally(len(reference), len(estimated), tp, subs, len(reference) - tp - subs,
                    len(estimated) - tp - subs)
    return overall, per_class


def _active(events: Iterable[Timed], n: int, segment: float) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for e in events:
        first, last = math.floor(e.start / segment), math.ceil(e.end / segment)
        out.setdefault(e.label, set()).update(range(max(first, 0), min(last, n)))
    return out


def segment_counts(reference: Sequence[Timed], estimated: Sequence[Timed], duration: float,
                   segment: float = SEGMENT) -> tuple[Tally, dict[str, Tally]]:
    """Segment-based counts of one recording ``duration`` seconds long: overall and per label."""
    n = math.ceil(duration / segment)
    ref, est = _active(reference, n, segment), _active(estimated, n, segment)
    per_class = {}
    for label in sorted(ref.keys() | est.keys()):
        r, e = ref.get(label, set()), est.get(label, set())
        per_class[label] = Tally(len(r), len(e), len(r & e), 0, len(r - e), len(e - r))
    subs = deletions = insertions = 0
    for k in range(n):
        n_ref = sum(k in s for s in ref.values())
        n_sys = sum(k in s for s in est.values())
        tp = sum(k in s and k in est.get(label, ()) for label, s in ref.items())
        subs += min(n_ref, n_sys) - tp
        deletions += max(0, n_ref - n_sys)
        insertions += max(0, n_sys - n_ref)
    overall = Tally(sum(len(s) for s in ref.values()), sum(len(s) for s in est.values()),
                    sum(t.tp for t in per_class.values()), subs, deletions, insertions)
    return overall, per_class


@dataclass
class Scores:
    """Event-based or segment-based counts summed over recordings."""

    overall: Tally
    per_class: dict[str, Tally]

    @classmethod
    def empty(cls) -> Scores:
        return cls(Tally(), {})

    def add(self, counts: tuple[Tally, dict[str, Tally]]) -> None:
        self.overall = self.overall + counts[0]
        for label, tally in counts[1].items():
            self.per_class[label] = self.per_class.get(label, Tally()) + tally

    def class_average(self) -> dict:
        """Scores averaged over the classes where each is defined (sed_eval's class-wise
        average); a score no class defines is ``None``."""
        def mean(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return round(sum(known) / len(known), 4) if known else None

        tallies = list(self.per_class.values())  # per class subs is 0: ER = (D + I) / N
        return {name: mean([getattr(t, name) for t in tallies])
                for name in ("f1", "precision", "recall", "error_rate")}

    def to_dict(self) -> dict:
        def per_class(t: Tally) -> dict:
            return {k: v for k, v in t.to_dict().items() if k not in ("subs", "substitution_rate")}

        return {"overall": self.overall.to_dict(), "class_average": self.class_average(),
                "per_class": {label: per_class(t) for label, t in sorted(self.per_class.items())}}
