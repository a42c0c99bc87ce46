"""Synthetic soundscapes with known events: labelled clips placed one after another, with gaps,
over pink background noise; what event detection is measured on (``benchmarks/events.py``).

Each clip is cut to its active part (where its short-time level is within ``top_db`` of its
loudest), so the reference event starts and ends where the sound does, not where the clip's
silent padding does. Scaper (the field's tool) was not used: it needs the SoX binary and mixes
through files, while this is a few lines of NumPy over clips already decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from escnet.data.audio import load_audio


@dataclass(frozen=True)
class SceneEvent:
    """A reference event: ``label`` sounds from ``start`` to ``end`` seconds."""

    label: str
    start: float
    end: float
    source: str
    """The clip it was cut from."""

    def to_dict(self) -> dict:
        return {"label": self.label, "start": round(self.start, 4), "end": round(self.end, 4),
                "source": self.source}


TOP_DB, FRAME_SECONDS = 30.0, 0.02
"""A clip's active part: its ``FRAME_SECONDS`` frames within ``TOP_DB`` of its loudest (here
and in the training scenes, :mod:`escnet.transforms.scenes`)."""


def active_span(wav: np.ndarray, rate: int, top_db: float = TOP_DB, frame_seconds: float = FRAME_SECONDS
                ) -> tuple[int, int]:
    """First and one-past-last sample of the frames of ``wav`` ``(samples,)`` whose RMS is
    within ``top_db`` dB of the loudest frame's."""
    frame = max(1, int(frame_seconds * rate))
    n = max(1, wav.shape[0] // frame)
    rms = np.sqrt(np.mean(np.square(wav[: n * frame].reshape(n, frame), dtype=np.float64), axis=1) + 1e-20)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) >= -top_db)
    return int(loud[0] * frame), int(min(wav.shape[0], (loud[-1] + 1) * frame))


def pink_noise(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise ``(samples,)`` of unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.shape[0]))
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, samples)
    return noise / np.sqrt(np.mean(noise**2))


def _rms_db(wav: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(wav, dtype=np.float64)) + 1e-20)


def soundscape(clips: Sequence[tuple[str | Path, str]], rate: int, seconds: float,
               rng: np.random.Generator, background_db: float = -50.0,
               event_db: tuple[float, float] = (-30.0, -20.0), gap: tuple[float, float] = (1.0, 3.0),
               overlap: bool = False) -> tuple[np.ndarray, list[SceneEvent]]:
    """A ``seconds``-long scene ``(samples,)`` at ``rate`` Hz and its reference events.

    Clips ``(path, label)`` are taken in order, cut to their active part, set to an RMS level
    drawn from ``event_db`` (dBFS) and placed one after another with gaps drawn from ``gap``
    seconds, over pink noise at ``background_db`` dBFS, until the next would not fit. With
    ``overlap``, they come in pairs of two classes: the second of a pair starts 20–60 % into
    the first (two sounds at once), and the next pair after a gap from the later end."""
    total = int(seconds * rate)
    scene = pink_noise(total, rng) * 10 ** (background_db / 20)
    placed: list[tuple[SceneEvent, np.ndarray]] = []
    t = rng.uniform(*gap)
    for path, label in clips:
        wav = load_audio(path, rate)
        lo, hi = active_span(wav, rate)
        part = wav[lo:hi]
        first = placed[-1][0] if overlap and len(placed) % 2 else None
        if first is not None and first.label == label:
            continue  # a pair is two classes
        if first is not None:
            t = first.start + rng.uniform(0.2, 0.6) * (first.end - first.start)
        start = int(t * rate)
        if start + part.shape[0] > total - int(0.5 * rate):
            if first is not None:  # no half pairs
                placed.pop()
            break
        part = part * 10 ** ((rng.uniform(*event_db) - _rms_db(part)) / 20)
        placed.append((SceneEvent(label, start / rate, (start + part.shape[0]) / rate, str(path)), part))
        t = max(e.end for e, _ in placed) + rng.uniform(*gap)
    for event, part in placed:
        start = round(event.start * rate)
        scene[start : start + part.shape[0]] += part
    events = [e for e, _ in placed]
    return np.clip(scene, -1, 1).astype(np.float32), events
