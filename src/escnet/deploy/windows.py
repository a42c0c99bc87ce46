"""Scoring windows of audio: the one owner of windows, the silence gate, batching, the bound
on the work and the finite check, for ``predict``, events, ``embed``, ``tag`` and ``index``.

A :class:`WindowScorer` wraps any function that maps a batch of clip-length windows
``(n, clip_samples)`` to one row per window (class probabilities, an embedding, AudioSet tags)
and scores a recording's windows with it, a batch at a time, so memory stays bounded however
long the recording. No PyTorch here: the function may run an ONNX graph or a PyTorch model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from threading import Event
from typing import Generic, TypeVar

import numpy as np

from escnet.data.audio import AudioFile, stream_windows
from escnet.errors import AudioError, EscnetError

R = TypeVar("R")

SILENCE_DB = -60.0
"""Windows quieter than this (RMS, dB relative to full scale) are not scored. Every ESC-50 clip
is louder than -57 dBFS; digital silence and a quiet room's hiss are below it."""
MAX_WINDOWS = 100_000
"""The most windows one recording may cost by default (a day of audio at a 1 s hop): a hop of
1e-9 s would otherwise ask for a window per sample."""
MAX_HOP = 86_400.0
"""Seconds between windows at most: a day (a longer hop scores a recording's first window
alone, as a day does; 1e308 s would be no number of samples)."""


class Stopped(EscnetError):
    """Scoring ended early because its ``stop`` event was set (a server shutting down)."""


def level_db(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (a full-scale sine is -3 dBFS); -120 for silence."""
    # einsum, not np.dot: OpenBLAS's dot wakes threads that then spin, taking a core from the
    # model (docs/RESULTS.md, "Serving under load")
    power = float(np.einsum("i,i->", samples, samples)) / samples.size if samples.size else 0.0
    if not math.isfinite(power):  # float32 overflows for samples beyond about 1e19
        power = float(np.mean(np.square(samples, dtype=np.float64)))
    return round(10 * math.log10(max(power, 1e-12)), 2)


def check_silence_db(silence_db: float | None) -> None:
    """Refuse a silence gate that is not a level (NaN would gate everything, silently), or at
    or above full scale (every window would be silent)."""
    if silence_db is not None and not math.isfinite(silence_db):
        raise EscnetError(f"silence_db={silence_db}: must be a finite level in dBFS")
    if silence_db is not None and silence_db >= 0:
        raise EscnetError(f"silence_db={silence_db:g}: must be below 0 dBFS (full scale): every "
                          "window would be silent")


@dataclass(frozen=True)
class Window:
    """Where a window is and how loud: its audio is ``valid`` samples from sample ``start`` (at
    the model's rate); the model sees them zero-padded to its clip length."""

    start: int
    valid: int
    level_db: float
    peak: float
    """Largest absolute sample value (above 1: clipped or wrongly scaled input)."""

    @classmethod
    def of(cls, start: int, audio: np.ndarray) -> Window:
        """The window holding ``audio`` ``(samples,)`` from ``start``."""
        peak = float(max(audio.max(), -audio.min())) if audio.size else 0.0
        return cls(start, int(audio.shape[0]), level_db(audio), peak)

    def seconds(self, rate: int) -> tuple[float, float]:
        """Start and end of its audio, seconds."""
        return self.start / rate, (self.start + self.valid) / rate


def _finite_rows(rows: object) -> bool:
    return bool(np.isfinite(np.asarray(rows, np.float64)).all())


class WindowScorer(Generic[R]):
    """Scores windows with ``score``: ``(n, clip_samples)`` float32 → ``n`` rows.

    Args:
        score: the model, as a function of a batch of windows.
        sample_rate: Hz of the windows.
        clip_samples: samples of a window.
        batch_size: windows per call of ``score``.
        silence_db: windows quieter than this are not scored (their row is ``None``); ``None``
            scores every window.
        max_windows: refuse a recording that would cost more windows than this (a server's
            bound on the work one request may ask for, or :data:`MAX_WINDOWS`).
        finite: whether a batch's rows are finite (a model that gives NaN is an error, never a
            silent answer); default: every number in them.
        trim: score a recording shorter than a window at its own length (at least a second)
            instead of zero-padded to one, as a model published for any length is run on a clip
            (AudioSet's, on 10 s windows: a 5 s clip is not half silence); a model trained on
            padded clips is run on padded windows (the default).
    """

    def __init__(self, score: Callable[[np.ndarray], Sequence[R]], sample_rate: int, clip_samples: int,
                 batch_size: int = 16, silence_db: float | None = SILENCE_DB,
                 max_windows: int = MAX_WINDOWS, finite: Callable[[Sequence[R]], bool] = _finite_rows,
                 trim: bool = False) -> None:
        if batch_size < 1:
            raise EscnetError(f"batch_size={batch_size}: must be >= 1")
        if max_windows < 2:
            raise EscnetError(f"max_windows={max_windows}: must be 2 or more")
        check_silence_db(silence_db)
        self.score_fn, self.rate, self.clip_samples = score, sample_rate, clip_samples
        self.batch_size, self.silence_db, self.max_windows = batch_size, silence_db, max_windows
        self.finite, self.trim = finite, trim

    def hop(self, hop_seconds: float | None) -> int:
        """Samples between window starts: ``hop_seconds`` (default half a window)."""
        if hop_seconds is None:
            return max(1, self.clip_samples // 2)
        if not (math.isfinite(hop_seconds) and 0 < hop_seconds <= MAX_HOP):
            raise EscnetError(f"hop {hop_seconds:g}: must be a positive number of seconds, at most "
                              f"{MAX_HOP:g} (a day)")
        return max(1, round(hop_seconds * self.rate))

    def check_cost(self, audio: AudioFile, hop: int) -> None:
        """Refuse, before decoding, a recording whose windows at ``hop`` samples would number
        more than :attr:`max_windows` by its header's length: work bounded by the audio, never
        by a parameter. A recording of unknown length is counted while it is scored."""
        if audio.duration is None:
            return
        samples = math.ceil(audio.duration * self.rate)
        windows = 1 + max(0, math.ceil((samples - self.clip_samples) / hop))
        if windows > self.max_windows:
            least = (samples - self.clip_samples) / (self.max_windows - 1) / self.rate
            raise EscnetError(f"hop {hop / self.rate:g} s: would score {windows} windows of this "
                              f"{audio.duration:.1f} s recording, over the limit of {self.max_windows}; "
                              f"use a hop of at least {least:.3g} s")

    def windows(self, audio: AudioFile, hop: int) -> Iterator[tuple[Window, np.ndarray]]:
        """Clip-length windows of an opened recording every ``hop`` samples (the last aligned
        with its end; :func:`~escnet.data.audio.stream_windows`), decoded block by block."""
        self.check_cost(audio, hop)
        blocks = audio.blocks(self.rate)
        for n, (start, clip, valid) in enumerate(stream_windows(blocks, self.clip_samples, hop)):
            if n >= self.max_windows:
                raise EscnetError(f"hop {hop / self.rate:g} s: {audio.name} needs more than "
                                  f"{self.max_windows} windows, the limit; use a longer hop")
            yield Window.of(start, clip[:valid]), clip

    def recording(self, audio: AudioFile, hop_seconds: float | None = None,
                  stop: Event | None = None) -> Iterator[tuple[Window, R | None]]:
        """Every window of an opened recording (:meth:`windows`), scored (:meth:`score`)."""
        return self.score(self.windows(audio, self.hop(hop_seconds)), audio.name, stop)

    def score(self, windows: Iterable[tuple[Window, np.ndarray]], name: str,
              stop: Event | None = None) -> Iterator[tuple[Window, R | None]]:
        """Each window with its row (``None`` below the silence gate), in order, scored
        ``batch_size`` at a time; ``stop`` set ends the work between batches (:class:`Stopped`).
        ``name`` is what errors call the recording."""
        pending: list[tuple[Window, np.ndarray]] = []
        for item in windows:
            pending.append(item)
            if len(pending) == self.batch_size:
                yield from self._flush(pending, name, stop)
                pending = []
        yield from self._flush(pending, name, stop)

    def _flush(self, pending: list[tuple[Window, np.ndarray]], name: str, stop: Event | None
               ) -> Iterator[tuple[Window, R | None]]:
        if stop is not None and stop.is_set():
            raise Stopped(f"{name}: not scored: the server is shutting down")
        loud = [i for i, (w, _) in enumerate(pending)
                if self.silence_db is None or w.level_db >= self.silence_db]
        whole = [i for i in loud if not (self.trim and pending[i][0].valid < self.clip_samples)]
        rows: dict[int, R] = {}
        if whole:
            rows.update(zip(whole, self.score_fn(np.stack([pending[i][1] for i in whole])), strict=True))
        shortest = min(self.clip_samples, self.rate)  # a second: the least audio a model is run on
        for i in sorted(set(loud) - set(whole)):  # alone at its own length: a batch has one length
            window, clip = pending[i]
            rows[i] = self.score_fn(clip[None, : max(window.valid, shortest)])[0]
        if rows and not self.finite(list(rows.values())):
            peak = max(pending[i][0].peak for i in rows)
            if peak > 1e3:  # the input, not the model: far beyond any scale audio comes in
                raise AudioError(f"{name}: samples reach {peak:.3g}, far beyond full scale (±1): "
                                 "not audio the model can score (wrongly scaled?)")
            raise EscnetError(f"{name}: the model gave non-finite outputs (are its weights damaged?)")
        for i, (window, _) in enumerate(pending):
            yield window, rows.get(i)
