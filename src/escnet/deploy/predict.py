"""Inference: classify audio files of any length with a trained run, checkpoint or ONNX export.

This module imports no PyTorch: an ``.onnx`` model runs on ONNX Runtime alone
(``pip install 'escnet[runtime]'``); run directories and ``.pt`` checkpoints load
:mod:`escnet.deploy.torch_model` when asked for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import NamedTuple, Protocol, cast

import numpy as np

from escnet.data.audio import AudioFile, stream_windows
from escnet.deploy.onnx_model import ModelInfo, OnnxModel, Scores
from escnet.errors import AudioError, EscnetError

Source = str | Path | AudioFile
"""A recording to classify: a path, or an :class:`AudioFile` (e.g. an upload held in memory)."""

UNKNOWN = "unknown"
"""The answer for a sound that is none of the model's classes (its unknown score below the
model's threshold)."""
SOUNDS_LIKE = 3
"""AudioSet tags given beside an "unknown" answer, for models with an AudioSet head."""

class Stopped(EscnetError):
    """Scoring ended early because its ``stop`` event was set (a server shutting down)."""


SILENCE_DB = -60.0
"""Windows quieter than this (RMS, dB relative to full scale) get no label. Every ESC-50 clip is
louder than -57 dBFS; digital silence and a quiet room's hiss are below it."""


class Model(Protocol):
    """What a :class:`Predictor` runs: ``(n, clip_samples)`` windows → :class:`Scores`
    (``(n, classes)`` probabilities, unknown scores, tags), and the :class:`ModelInfo` that
    says how to cut the windows and what the scores mean."""

    info: ModelInfo

    def score(self, windows: np.ndarray) -> Scores: ...

    def logmel(self, window: np.ndarray) -> np.ndarray | None:
        """``(samples,)`` → the model's input features ``(n_mels, frames)``, if it can say."""


def load_model_file(path: str | Path, device: str = "cpu", threads: int | None = None) -> Model:
    """An ``.onnx`` export (ONNX Runtime), or a run directory or ``.pt`` checkpoint (PyTorch)."""
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


def level_db(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS); -120 for silence."""
    # einsum, not np.dot: OpenBLAS's dot wakes threads that then spin, taking a core from the
    # model (escnet serve on 2 cores: 234 requests a second at concurrency 4 with it, 295 without)
    power = float(np.einsum("i,i->", samples, samples)) / samples.size if samples.size else 0.0
    if not math.isfinite(power):  # float32 overflows for samples beyond about 1e19
        power = float(np.mean(np.square(samples, dtype=np.float64)))
    return round(10 * math.log10(max(power, 1e-12)), 2)


class WindowScore(NamedTuple):
    start: int
    """First sample, at the model's rate."""
    valid: int
    """Samples of audio in the window (the rest is zero padding)."""
    level_db: float
    peak: float
    """Largest absolute sample value (above 1: clipped or wrongly scaled input)."""
    probabilities: np.ndarray | None
    """``(classes,)``, or ``None`` for a window quieter than the silence gate."""
    known: float | None = None
    """The window's unknown score (higher: more like the model's classes), if the model has one."""
    tags: np.ndarray | None = None
    """``(tags,)``: the AudioSet head's probabilities, if the model has one."""


def check_silence_db(silence_db: float) -> None:
    """Refuse a silence gate that is not a level (NaN would gate everything, silently)."""
    if not math.isfinite(silence_db):
        raise EscnetError(f"silence_db={silence_db}: must be a finite level in dBFS")


def check_finite(probabilities: np.ndarray, peak: float, name: str) -> None:
    """Refuse non-finite ``probabilities``: the input's fault (:class:`AudioError`) when its
    samples reached ``peak`` far beyond full scale, else the model's."""
    if np.isfinite(probabilities).all():
        return
    if peak > 1e3:  # the input, not the model: far beyond any scale audio comes in
        raise AudioError(f"{name}: samples reach {peak:.3g}, far beyond full scale (±1): "
                         "not audio the model can score (wrongly scaled?)")
    raise EscnetError(f"{name}: the model gave non-finite probabilities (are its weights damaged?)")


def answer(info: ModelInfo, probabilities: np.ndarray, known: float | None) -> str:
    """The class to answer for ``probabilities`` ``(classes,)``, or :data:`UNKNOWN` when the
    unknown score ``known`` is below the model's threshold."""
    if info.unknown_threshold is not None and known is not None and known < info.unknown_threshold:
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
    """Scores clip-length windows of a recording with a :class:`Model` and either averages
    them (:meth:`predict_file`) or lists them over time (:meth:`timeline`). Audio is decoded
    and resampled block by block and scored ``batch_size`` windows at a time, so memory stays
    bounded however long the file.

    Args:
        model: see :func:`load_model_file`.
        batch_size: windows per model call.
        silence_db: windows quieter than this (RMS, dBFS) get no label.
        max_windows: refuse a recording that would cost more windows than this (a server's
            bound on the work one request may ask for); ``None``: no bound.
    """

    def __init__(self, model: Model, batch_size: int = 16, silence_db: float = SILENCE_DB,
                 max_windows: int | None = None) -> None:
        if batch_size < 1:
            raise EscnetError(f"batch_size={batch_size}: must be >= 1")
        check_silence_db(silence_db)
        if max_windows is not None and max_windows < 2:
            raise EscnetError(f"max_windows={max_windows}: must be 2 or more")
        self.model, self.batch_size, self.silence_db = model, batch_size, silence_db
        self.max_windows = max_windows
        self.info = model.info

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
                  **kwargs) -> Predictor:
        return cls(load_model_file(path, device, threads), **kwargs)

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def _hop(self, hop_seconds: float | None) -> int:
        if hop_seconds is None:
            return max(1, self.info.clip_samples // 2)
        if not (math.isfinite(hop_seconds) and hop_seconds > 0):
            raise EscnetError(f"hop {hop_seconds}: must be a positive, finite number of seconds")
        return max(1, round(hop_seconds * self.info.sample_rate))

    def _check_cost(self, audio: AudioFile, hop: int) -> None:
        """Refuse, before decoding, a recording whose windows at ``hop`` samples would number
        more than :attr:`max_windows` (by its header's length): work bounded by the audio,
        never by a parameter (``hop=1e-9`` would score every sample)."""
        if self.max_windows is None or audio.duration is None:  # no length: counted while scored
            return
        samples = math.ceil(audio.duration * self.info.sample_rate)
        windows = 1 + max(0, math.ceil((samples - self.info.clip_samples) / hop))
        if windows > self.max_windows:
            least = (samples - self.info.clip_samples) / (self.max_windows - 1) / self.info.sample_rate
            raise EscnetError(f"hop {hop / self.info.sample_rate:g} s: would score {windows} windows of "
                              f"this {audio.duration:.1f} s recording, over the limit of "
                              f"{self.max_windows}; use a hop of at least {least:.3g} s")

    def scores(self, audio: AudioFile, hop_seconds: float | None = None,
               stop: Event | None = None) -> Iterator[WindowScore]:
        """Every window of an opened recording, scored unless it is silent; ``stop`` set ends
        the work between batches (:class:`Stopped`)."""
        pending: list[tuple[WindowScore, np.ndarray]] = []
        hop = self._hop(hop_seconds)
        self._check_cost(audio, hop)

        def flush() -> Iterator[WindowScore]:
            if stop is not None and stop.is_set():
                raise Stopped(f"{audio.name}: not scored: the server is shutting down")
            loud = [w for score, w in pending if score.level_db >= self.silence_db]
            out = self.model.score(np.stack(loud)) if loud else None
            k = 0
            for score, _ in pending:
                if score.level_db >= self.silence_db and out is not None:
                    yield score._replace(
                        probabilities=out.probabilities[k],
                        known=None if out.known is None else float(out.known[k]),
                        tags=None if out.tags is None else out.tags[k])
                    k += 1
                else:
                    yield score
            pending.clear()

        blocks = audio.blocks(self.info.sample_rate)
        for n, (start, window, valid) in enumerate(stream_windows(blocks, self.info.clip_samples, hop)):
            if self.max_windows is not None and n >= self.max_windows:
                raise EscnetError(f"hop {hop / self.info.sample_rate:g} s: {audio.name} needs more than "
                                  f"{self.max_windows} windows, the limit; use a longer hop")
            audio_part = window[:valid]
            pending.append((WindowScore(start, valid, level_db(audio_part),
                                        float(max(audio_part.max(), -audio_part.min())), None),
                            window))
            if len(pending) == self.batch_size:
                yield from flush()
        yield from flush()

    def timeline(self, source: Source, hop_seconds: float | None = None) -> Timeline:
        """Per-window probabilities over the whole recording (windows every ``hop_seconds``,
        default half a clip; the last aligned with the end)."""
        return cast(Timeline, self.predict_file(source, hop_seconds=hop_seconds,
                                                keep_timeline=True).timeline)

    def predict_file(self, source: Source, top_k: int = 5, hop_seconds: float | None = None,
                     keep_timeline: bool = False, stop: Event | None = None) -> Prediction:
        """Class probabilities averaged over the file's non-silent windows (and with
        ``keep_timeline`` each window's, as :attr:`Prediction.timeline`)."""
        with opened(source) as audio:
            return self._predict(audio, top_k, hop_seconds, keep_timeline, stop)

    def _predict(self, audio: AudioFile, top_k: int, hop_seconds: float | None,
                 keep_timeline: bool, stop: Event | None = None) -> Prediction:
        path = audio.name
        total, known, tags, count, duration, loudest, peak = None, 0.0, None, 0, 0.0, -120.0, 0.0
        rows = []
        for r in self.scores(audio, hop_seconds, stop):
            duration = max(duration, (r.start + r.valid) / self.info.sample_rate)
            loudest, peak = max(loudest, r.level_db), max(peak, r.peak)
            if r.probabilities is not None:
                p = r.probabilities.astype(np.float64)
                total, count = (p if total is None else total + p), count + 1
                known += r.known or 0.0
                if r.tags is not None:
                    tags = r.tags.astype(np.float64) + (0 if tags is None else tags)
            if keep_timeline:
                rows.append(r)
        top: list[tuple[str, float]] = []
        label, mean_known, heard = None, None, []
        if total is not None:
            mean = total / count
            check_finite(mean, peak, path)
            top = [(self.classes[i], float(mean[i])) for i in np.argsort(-mean)[:top_k]]
            mean_known = known / count if self.info.unknown_threshold is not None else None
            label = answer(self.info, mean, mean_known)
            if label == UNKNOWN:
                heard = sounds_like(self.info, None if tags is None else tags / count)
        return Prediction(path, top, label, count, duration, loudest,
                          self._notes(audio.sample_rate, duration, loudest, peak),
                          self._timeline(path, rows, duration) if keep_timeline else None,
                          mean_known, heard)

    def _timeline(self, path: str, rows: list[WindowScore], duration: float) -> Timeline:
        rate = self.info.sample_rate
        nan = np.full(len(self.classes), np.nan, np.float32)
        tagged = [r.tags for r in rows if r.tags is not None]
        no_tags = np.full(len(tagged[0]), np.nan, np.float32) if tagged else None
        return Timeline(path, self.classes, np.array([r.start for r in rows]) / rate,
                        np.array([r.start + r.valid for r in rows]) / rate,
                        np.stack([nan if r.probabilities is None else r.probabilities for r in rows]),
                        np.array([r.level_db for r in rows]), duration, self.silence_db, self.info,
                        np.array([np.nan if r.known is None else r.known for r in rows]),
                        np.stack([no_tags if r.tags is None else r.tags for r in rows]) if tagged else None)

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
