"""A model's events scored on a person's own annotated recordings: event-based and
segment-based F-score and error rate (:mod:`.event_metrics`, sed_eval's definitions) and PSDS
(:mod:`.psds`), per class and overall, with a plot per recording.

The recordings are every audio file under one folder; the annotations (CSV, Raven selection
tables, Audacity label tracks: :func:`~escnet.data.annotations.read_annotations`) name them as
:class:`~escnet.data.annotations.Recordings` finds them: by their path under it (or a longer
path ending in it), or by their name with or without the extension (an Audacity track is named
after its recording). A recording no annotation names holds no events. Every row is checked before
any audio is scored: a recording that is not there, a label the model does not know (labels
compare as class names do: :func:`~escnet.data.tables.label_key`), an event that starts after
its recording ends, and an event overlapping another of its label in its recording (one sound
annotated twice) are each a :class:`~escnet.errors.DataError` naming the row. A recording that
cannot be read (or whose header does not give its length) is listed and left out; one an
annotation names is an error naming the row.

Each recording goes through the same :class:`~escnet.deploy.events.Stream` as ``predict
--events``, ``listen`` and ``/v1/stream``: its events are scored by F-score, and its window
scores (what the tracker thresholded: its filtered probabilities, silence and a clip model's
"unknown" as zero, each held from half a hop before its window's centre to half a hop before
the next) by PSDS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from escnet.data.annotations import Annotation, Recordings
from escnet.data.audio import AudioFile, audio_files
from escnet.data.tables import label_key
from escnet.deploy.event_metrics import COLLAR, OFFSET_SHARE, SEGMENT, Scores, event_counts, segment_counts
from escnet.deploy.events import DEFAULTS, Event, EventSettings, events_of, stream_file
from escnet.deploy.predict import Model
from escnet.deploy.psds import SCENARIOS, PsdsSettings, ScoreTrack, psds
from escnet.deploy.windows import SILENCE_DB
from escnet.errors import AudioError, DataError
from escnet.figures import pyplot
from escnet.files import atomic_write


@dataclass(frozen=True)
class Reference:
    """Annotations matched to recordings and to the model's classes."""

    folder: Path
    files: dict[str, Path]
    """Every recording evaluated, by its path under ``folder``."""
    durations: dict[str, float]
    """Seconds of each recording, by its header."""
    events: dict[str, list[Annotation]]
    """Each recording's events (``file``: its path under ``folder``; ``label``: a class name)."""
    unreadable: dict[str, str]
    """Recordings no annotation names that cannot be read, and why: left out, and said."""


def match_annotations(annotations: list[Annotation], folder: str | Path, classes: list[str]) -> Reference:
    """``annotations`` checked against the recordings under ``folder`` and the model's
    ``classes`` (see the module's description)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: not a folder; give the folder that holds the annotated "
                        "recordings (the annotations name files in it)")
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of recordings")
    files = audio_files(folder)
    if not files:
        raise DataError(f"{folder}: holds no audio files")
    recordings = Recordings(files)
    known = {label_key(c): c for c in classes}
    durations, unreadable = {}, {}
    for rel, path in files.items():
        try:
            durations[rel] = _duration(path)
        except AudioError as err:
            unreadable[rel] = str(err)
    events: dict[str, list[Annotation]] = {rel: [] for rel in durations}
    for a in annotations:
        if a.kind != "positive":
            raise DataError(f"{a.where}: type {a.kind}: scoring events needs where sounds are; leave "
                            "out the negative and uncertain rows")
        rel = recordings.find(a)
        if rel is None:
            raise DataError(f"{a.where}: no recording {a.file!r} under {folder}")
        if rel in unreadable:
            raise DataError(f"{a.where}: {rel} cannot be read ({unreadable[rel]})")
        label = known.get(label_key(a.label))
        if label is None:
            shown = ", ".join(repr(c) for c in classes[:8]) + (", ..." if len(classes) > 8 else "")
            raise DataError(f"{a.where}: label {a.label!r} is none of the model's {len(classes)} "
                            f"classes ({shown})")
        if a.start >= durations[rel]:
            raise DataError(f"{a.where}: starts at {a.start:g} s, after {rel} ends "
                            f"({durations[rel]:.3f} s)")
        events[rel].append(replace(a, file=rel, label=label))
    for rows in events.values():
        _refuse_overlaps(rows)
    return Reference(folder, {rel: files[rel] for rel in durations}, durations, events, unreadable)


def _duration(path: Path) -> float:
    with AudioFile(path) as audio:
        if audio.duration is None:
            raise AudioError(f"{path}: its header does not say how long it is; convert it to a "
                             "seekable file (WAV, FLAC) to score events on it")
        return audio.duration


def _refuse_overlaps(rows: list[Annotation]) -> None:
    last: dict[str, Annotation] = {}
    for a in sorted(rows, key=lambda a: (a.start, a.end)):
        b = last.get(a.label)
        if b is not None and (a.start < b.end or (a.start, a.end) == (b.start, b.end)):
            raise DataError(f"{a.where}: {a.label!r} from {a.start:g} to {a.end:g} s overlaps "
                            f"{b.where} ({b.start:g} to {b.end:g} s) in {a.file}: one sound annotated "
                            "twice? merge the rows")
        if b is None or a.end >= b.end:
            last[a.label] = a


@dataclass(frozen=True)
class FileResult:
    """One recording's reference events, detected events and score track."""

    name: str
    duration: float
    reference: list[Annotation]
    detected: list[Event]
    track: ScoreTrack


def score_recording(model: Model, path: Path, duration: float, settings: EventSettings = DEFAULTS,
                    silence_db: float = SILENCE_DB) -> tuple[list[Event], ScoreTrack]:
    """A recording's events and its score track (see the module's description)."""
    messages, centres, scores = [], [], []
    n = len(model.info.classes)
    for update in stream_file(model, path, settings, silence_db):
        messages.extend(update.events)
        for hop in update.scores:
            centres.append(hop.centre)
            scores.append(hop.track)
    order = np.argsort(centres, kind="stable")
    starts = np.clip(np.asarray(centres)[order] - settings.hop / 2, 0.0, duration)  # hop: never None
    edges = np.r_[0.0, starts, duration] if len(starts) else np.array([0.0, duration])
    values = np.vstack([np.zeros((1, n)), np.asarray(scores).reshape(-1, n)[order]])
    return events_of(messages), ScoreTrack(edges, values)


@dataclass
class EventEvaluation:
    """What :func:`evaluate_events` found."""

    files: list[FileResult]
    unreadable: list[tuple[str, str]]
    event_based: Scores
    segment_based: Scores
    psds: dict
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"files": len(self.files), "events": sum(len(f.reference) for f in self.files),
                "detected": sum(len(f.detected) for f in self.files),
                "hours": round(sum(f.duration for f in self.files) / 3600, 4),
                "unreadable": [{"file": f, "error": e} for f, e in self.unreadable],
                "event_based": self.event_based.to_dict(), "segment_based": self.segment_based.to_dict(),
                "psds": self.psds, "settings": self.settings}


def check_scoring(collar: float, offset_share: float, segment: float) -> None:
    """Raise :class:`DataError` naming the first scoring setting that makes no sense."""
    for name, value in (("collar", collar), ("segment", segment)):
        if not (np.isfinite(value) and value > 0):
            raise DataError(f"{name}={value}: must be a positive number of seconds")
    if not (np.isfinite(offset_share) and 0 <= offset_share <= 1):
        raise DataError(f"offset_share={offset_share}: must be 0 to 1")


def evaluate_events(model: Model, reference: Reference, settings: EventSettings = DEFAULTS,
                    silence_db: float = SILENCE_DB, collar: float = COLLAR,
                    offset_share: float = OFFSET_SHARE, segment: float = SEGMENT,
                    scenario: PsdsSettings = SCENARIOS[1],
                    each: Callable[[str, float], None] | None = None) -> EventEvaluation:
    """Score ``model``'s events on the ``reference`` recordings; ``each(name, seconds)`` is
    called after each recording. An unreadable recording is listed, not scored."""
    settings = settings.for_model(model.info)
    check_scoring(collar, offset_share, segment)
    results, unreadable = [], list(reference.unreadable.items())
    for name, path in reference.files.items():
        duration = reference.durations[name]
        try:
            detected, track = score_recording(model, path, duration, settings, silence_db)
        except AudioError as err:
            unreadable.append((name, str(err)))
            continue
        results.append(FileResult(name, duration, reference.events[name], detected, track))
        if each is not None:
            each(name, duration)
    event_based, segment_based = Scores.empty(), Scores.empty()
    for r in results:
        event_based.add(event_counts(r.reference, r.detected, collar, offset_share))
        segment_based.add(segment_counts(r.reference, r.detected, r.duration, segment))
    score = psds({r.name: r.track for r in results}, {r.name: r.reference for r in results},
                 {r.name: r.duration for r in results}, model.info.classes, scenario)
    used = {"events": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
            "silence_db": silence_db, "collar": collar, "offset_share": offset_share, "segment": segment}
    return EventEvaluation(results, unreadable, event_based, segment_based, score, used)


def plot_file(result: FileResult, path: str | Path) -> Path:
    """Reference events above, detected ones below, one row per class, as a PNG."""
    plt = pyplot(f"{path}: drawing")
    labels = sorted({e.label for e in result.reference} | {e.label for e in result.detected})
    fig, ax = plt.subplots(figsize=(10, 0.45 * max(len(labels), 1) + 1.4), layout="constrained")
    for y, label in enumerate(labels):
        ref = [(e.start, max(e.end - e.start, 0.02)) for e in result.reference if e.label == label]
        est = [(e.start, max(e.end - e.start, 0.02)) for e in result.detected if e.label == label]
        ax.broken_barh(ref, (y + 0.05, 0.4), color="#2a7ab9")
        ax.broken_barh(est, (y + 0.5, 0.4), color="#e07b39")
    ax.set_yticks(np.arange(len(labels)) + 0.5, labels)
    ax.set_ylim(0, max(len(labels), 1))
    ax.set_xlim(0, result.duration)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{result.name}: annotated (blue, lower) and detected (orange, upper) events",
                 fontsize=10)
    written = atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return written
