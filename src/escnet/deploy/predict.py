"""Inference: classify audio files of any length with a trained run, checkpoint or ONNX export.

This module imports no PyTorch: an ``.onnx`` model runs on ONNX Runtime alone
(``pip install 'escnet[runtime]'``); run directories and ``.pt`` checkpoints load
:mod:`escnet.deploy.torch_model` when asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import Protocol, cast

import numpy as np

from escnet.data.audio import AudioFile
from escnet.deploy.onnx_model import ModelInfo, OnnxModel, Row, Scores
from escnet.deploy.windows import MAX_WINDOWS, SILENCE_DB, Window, WindowScorer
from escnet.errors import EscnetError

Source = str | Path | AudioFile
"""A recording to classify: a path, or an :class:`AudioFile` (e.g. an upload held in memory)."""

UNKNOWN = "unknown"
"""The answer for a sound that is none of the model's classes (its unknown score below the
model's threshold)."""
SOUNDS_LIKE = 3
"""AudioSet tags given beside an "unknown" answer, for models with an AudioSet head."""

class Model(Protocol):
    """What a :class:`Predictor` runs: ``(n, clip_samples)`` windows → :class:`Scores`
    (``(n, classes)`` probabilities, unknown scores, tags), and the :class:`ModelInfo` that
    says how to cut the windows and what the scores mean."""

    info: ModelInfo

    def score(self, windows: np.ndarray) -> Scores: ...

    def logmel(self, window: np.ndarray) -> np.ndarray | None:
        """``(samples,)`` → the model's input features ``(n_mels, frames)``, if it can say."""


def load_model_file(path: str | Path, device: str = "cpu", threads: int | None = None) -> Model:
    """An ``.onnx`` export (ONNX Runtime, ``threads`` windows at once; default one per core), or a
    run directory or ``.pt`` checkpoint (PyTorch on ``device``)."""
    if threads is not None and not 1 <= threads <= 1024:
        raise EscnetError(f"threads={threads}: must be 1 to 1024")
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxModel(path, threads)
    try:
        from escnet.deploy.torch_model import TorchModel
    except ImportError as err:
        raise EscnetError(f"{path}: running a run folder or .pt checkpoint needs PyTorch ({err.name} is "
                          "not installed); export it to ONNX, or pip install 'escnet[train]'") from None
    return TorchModel.from_path(path, device)


def opened(source: Source) -> AbstractContextManager[AudioFile]:
    """``source`` opened (and closed after use), or an :class:`AudioFile` the caller owns."""
    return nullcontext(source) if isinstance(source, AudioFile) else AudioFile(source)


def scorer(model: Model, batch_size: int = 16, silence_db: float | None = SILENCE_DB,
           max_windows: int = MAX_WINDOWS) -> WindowScorer[Row]:
    """A :class:`WindowScorer` of ``model``'s calibrated probabilities, unknown scores and tags."""
    info = model.info
    return WindowScorer(lambda windows: model.score(windows).rows(), info.sample_rate,
                        info.clip_samples, batch_size, silence_db, max_windows,
                        finite=lambda rows: all(np.isfinite(r.probabilities).all() for r in rows))


def answer(info: ModelInfo, probabilities: np.ndarray, known: float | None) -> str:
    """The class to answer for ``probabilities`` ``(classes,)``, or :data:`UNKNOWN` when the
    unknown score ``known`` is below the model's threshold."""
    if info.calibrated and info.calibration.is_unknown(known):
        return UNKNOWN
    return info.classes[int(np.argmax(probabilities))]


def sounds_like(info: ModelInfo, tags: np.ndarray | None, k: int = SOUNDS_LIKE) -> list[tuple[str, float]]:
    """The ``k`` strongest AudioSet tags ``(name, probability)``, or ``[]`` without a head."""
    if tags is None or not info.tag_names:
        return []
    return [(info.tag_names[i], float(tags[i])) for i in np.argsort(-tags)[:k]]


@dataclass
class Timeline:
    """Per-window scores over a recording: window ``i`` spans ``starts[i]``–``ends[i]``
    seconds; ``probabilities[i]`` is ``(classes,)``, or NaN for a window gated as silence."""

    path: str
    classes: list[str]
    starts: np.ndarray
    ends: np.ndarray
    probabilities: np.ndarray
    levels: np.ndarray
    """RMS level of each window's audio in dBFS."""
    duration: float
    """Seconds of audio in the file (at the model's rate)."""
    silence_db: float
    info: ModelInfo
    known: np.ndarray | None = None
    """``(windows,)`` unknown scores (NaN for silence), if the model has them."""
    tags: np.ndarray | None = None
    """``(windows, tags)`` AudioSet tag probabilities (NaN for silence), if the model has them."""

    @property
    def silent(self) -> np.ndarray:
        return self.levels < self.silence_db

    def rows(self, top_k: int = 1) -> list[dict]:
        """One dict per window: ``start, end, label, probability, level_db`` (label and
        probability ``None`` for silence) and, with ``top_k`` > 1, the ``top`` classes. The
        label is :data:`UNKNOWN` for a window below the model's unknown threshold; ``guess``
        is then the best class, whose ``probability`` is given, and ``sounds_like`` the
        AudioSet tags when the model has them."""
        out = []
        for i in range(len(self.starts)):
            row = {"start": round(float(self.starts[i]), 3), "end": round(float(self.ends[i]), 3),
                   "label": None, "probability": None, "level_db": float(self.levels[i])}
            if not self.silent[i]:
                order = np.argsort(-self.probabilities[i])[:top_k]
                row["label"] = answer(self.info, self.probabilities[i],
                                      None if self.known is None else float(self.known[i]))
                if row["label"] == UNKNOWN:
                    row["guess"] = self.classes[order[0]]
                    row["sounds_like"] = [{"label": t, "probability": round(p, 6)} for t, p in
                                          sounds_like(self.info, None if self.tags is None else self.tags[i])]
                row["probability"] = round(float(self.probabilities[i, order[0]]), 6)
                if top_k > 1:
                    row["top"] = [{"label": self.classes[j],
                                   "probability": round(float(self.probabilities[i, j]), 6)}
                                  for j in order]
            out.append(row)
        return out


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]
    """``(class name, probability)`` pairs, most probable first; empty if the file is silent."""
    label: str | None
    """The answer: the best class, :data:`UNKNOWN` when the file's mean unknown score is below
    the model's threshold, ``None`` when the file is silent."""
    windows: int
    """How many clip-length windows were scored and averaged (silent ones left out)."""
    duration: float
    """Seconds of audio."""
    level_db: float
    """The loudest window's RMS level, dBFS."""
    notes: list[str] = field(default_factory=list)
    """What the user should know about this input (silence, a low sample rate, clipping)."""
    timeline: Timeline | None = None
    """Each window's scores, when asked for."""
    known: float | None = None
    """The mean unknown score of the non-silent windows, when the model has one."""
    sounds_like: list[tuple[str, float]] = field(default_factory=list)
    """For an "unknown" answer from a model with an AudioSet head: its strongest tags."""

    @property
    def silent(self) -> bool:
        return not self.top

    def to_dict(self) -> dict:
        out = {"file": self.path, "label": self.label, "windows": self.windows,
               "duration": round(self.duration, 3), "level_db": self.level_db,
               "silent": self.silent, "notes": self.notes,
               "top": [{"label": c, "probability": round(p, 6)} for c, p in self.top]}
        if self.known is not None:
            out["unknown_score"] = round(self.known, 6)
        if self.label == UNKNOWN:
            out["sounds_like"] = [{"label": t, "probability": round(p, 6)} for t, p in self.sounds_like]
        return out


class Predictor:
    """Scores clip-length windows of a recording with a :class:`Model` (through a
    :class:`~escnet.deploy.windows.WindowScorer`: decoded block by block, gated, batched) and
    either averages them (:meth:`predict_file`) or lists them over time (:meth:`timeline`).

    Args:
        model: see :func:`load_model_file`.
        batch_size: windows per model call.
        silence_db: windows quieter than this (RMS, dBFS) get no label.
        max_windows: refuse a recording that would cost more windows than this (a server sets
            its own bound on the work one request may ask for).
    """

    def __init__(self, model: Model, batch_size: int = 16, silence_db: float = SILENCE_DB,
                 max_windows: int = MAX_WINDOWS) -> None:
        self.model, self.silence_db, self.info = model, silence_db, model.info
        self.scorer = scorer(model, batch_size, silence_db, max_windows)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
                  **kwargs) -> Predictor:
        return cls(load_model_file(path, device, threads), **kwargs)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def timeline(self, source: Source, hop_seconds: float | None = None) -> Timeline:
        """Per-window probabilities over the whole recording (windows every ``hop_seconds``,
        default half a clip; the last aligned with the end)."""
        return cast(Timeline, self.predict_file(source, hop_seconds=hop_seconds,
                                                keep_timeline=True).timeline)

    def predict_file(self, source: Source, top_k: int = 5, hop_seconds: float | None = None,
                     keep_timeline: bool = False, stop: Event | None = None) -> Prediction:
        """Class probabilities averaged over the file's non-silent windows (and with
        ``keep_timeline`` each window's, as :attr:`Prediction.timeline`); ``stop`` set ends the
        work between batches. Only running sums are kept otherwise, however long the file."""
        with opened(source) as audio:
            return self._predict(audio, self.scorer.recording(audio, hop_seconds, stop), top_k,
                                 keep_timeline)

    def _predict(self, audio: AudioFile, scored: Iterator[tuple[Window, Row | None]], top_k: int,
                 keep_timeline: bool) -> Prediction:
        total, known, tags, count, duration, loudest, peak = None, 0.0, None, 0, 0.0, -120.0, 0.0
        rows = []
        for window, row in scored:
            duration = max(duration, window.seconds(self.info.sample_rate)[1])
            loudest, peak = max(loudest, window.level_db), max(peak, window.peak)
            if row is not None:
                p = row.probabilities.astype(np.float64)
                total, count = (p if total is None else total + p), count + 1
                known += row.known or 0.0
                if row.tags is not None:
                    tags = row.tags.astype(np.float64) + (0 if tags is None else tags)
            if keep_timeline:
                rows.append((window, row))
        top: list[tuple[str, float]] = []
        label, mean_known, heard = None, None, []
        if total is not None:
            mean = total / count
            top = [(self.classes[i], float(mean[i])) for i in np.argsort(-mean)[:top_k]]
            mean_known = known / count if self.info.unknown_threshold is not None else None
            label = answer(self.info, mean, mean_known)
            if label == UNKNOWN:
                heard = sounds_like(self.info, None if tags is None else tags / count)
        return Prediction(audio.name, top, label, count, duration, loudest,
                          self._notes(audio.sample_rate, duration, loudest, peak),
                          self._timeline(audio.name, rows, duration) if keep_timeline else None,
                          mean_known, heard)

    def _timeline(self, path: str, rows: list[tuple[Window, Row | None]], duration: float) -> Timeline:
        rate = self.info.sample_rate
        nan = np.full(len(self.classes), np.nan, np.float32)
        tagged = [r.tags for _, r in rows if r is not None and r.tags is not None]
        no_tags = np.full(len(tagged[0]), np.nan, np.float32) if tagged else None
        return Timeline(path, self.classes, np.array([w.start for w, _ in rows]) / rate,
                        np.array([w.start + w.valid for w, _ in rows]) / rate,
                        np.stack([nan if r is None else r.probabilities for _, r in rows]),
                        np.array([w.level_db for w, _ in rows]), duration, self.silence_db, self.info,
                        np.array([np.nan if r is None or r.known is None else r.known for _, r in rows]),
                        np.stack([no_tags if r is None or r.tags is None else r.tags for _, r in rows])
                        if tagged else None)

    def _notes(self, rate: int, duration: float, loudest: float, peak: float) -> list[str]:
        notes = []
        if loudest < self.silence_db:
            notes.append(f"silent (loudest window {loudest:.0f} dBFS, below {self.silence_db:g}): "
                         "no label")
        if rate < self.info.sample_rate:
            notes.append(f"recorded at {rate} Hz, below the model's {self.info.sample_rate} Hz: "
                         f"sounds above {rate // 2} Hz are missing, so expect lower accuracy")
        if duration < 0.5 * self.info.clip_seconds:
            notes.append(f"only {duration:.2f} s of audio; the model was trained on "
                         f"{self.info.clip_seconds:g} s clips (zero-padded to one)")
        if peak > 1.0:
            notes.append(f"samples reach {peak:.3g}, beyond full scale (±1): clipped or wrongly "
                         "scaled audio")
        return notes
