"""The short-time level of a stream: where sounds rise out of the background and fall back."""

from __future__ import annotations

import numpy as np


class Envelope:
    """The short-time level of a stream (20 ms frames), to put event boundaries where the sound
    rises out of the background and falls back into it, rather than at window centres (a
    window says *that* a sound is in it, not *where*).

    The background is the 10th percentile of the frame levels of the 10 s before the end of the
    span asked about; a frame is loud ``RISE_DB`` above it. Only audio up to that end is used,
    so the answer does not depend on how the stream was chunked."""

    FRAME_SECONDS = 0.02
    RISE_DB = 10.0
    FLOOR_SECONDS = 10.0
    QUIET_SECONDS = 0.3

    def __init__(self, rate: int) -> None:
        self.rate, self.frame = rate, max(1, round(rate * self.FRAME_SECONDS))
        self.levels = np.zeros(0)
        self.first = 0
        """Stream index of ``levels[0]``."""
        self.pending = np.zeros(0, np.float32)

    def add(self, samples: np.ndarray) -> None:
        self.pending = np.concatenate([self.pending, samples])
        n = self.pending.shape[0] // self.frame
        if n:
            block = self.pending[: n * self.frame].reshape(n, self.frame).astype(np.float64)
            self.levels = np.concatenate([self.levels, 10 * np.log10(np.mean(block * block, axis=1) + 1e-12)])
            self.pending = self.pending[n * self.frame :]

    def forget(self, before: float) -> None:
        """Drop what no question about times from ``before`` seconds on needs."""
        drop = int((before - self.FLOOR_SECONDS) * self.rate / self.frame) - self.first
        if drop > 0:
            self.levels, self.first = self.levels[drop:], self.first + drop

    def _mask(self, lo: float, hi: float) -> tuple[int, np.ndarray]:
        """The stream index of the first frame within ``[lo, hi)`` seconds, and which of the
        frames from there are loud."""
        seconds = self.frame / self.rate
        b = min(self.first + self.levels.shape[0], int(hi / seconds))
        a = max(self.first, int(lo / seconds))
        if b <= a:
            return a, np.zeros(0, bool)
        history = self.levels[max(0, b - self.first - int(self.FLOOR_SECONDS / seconds)) : b - self.first]
        floor = np.percentile(history, 10)
        return a, self.levels[a - self.first : b - self.first] > floor + self.RISE_DB

    def onset(self, lo: float, hi: float) -> float | None:
        """Start of the first loud frame in ``[lo, hi)`` seconds, if any."""
        a, loud = self._mask(lo, hi)
        return float((a + np.argmax(loud)) * self.frame / self.rate) if loud.any() else None

    def _rising(self, lo: float, hi: float) -> tuple[int, np.ndarray, np.ndarray]:
        """:meth:`_mask` of ``[lo - QUIET_SECONDS, hi)``, and the stream indices of its loud
        frames whose ``QUIET_SECONDS`` before were all quiet (where sounds began)."""
        quiet = round(self.QUIET_SECONDS / self.FRAME_SECONDS)
        a, loud = self._mask(lo - self.QUIET_SECONDS, hi)
        if loud.size <= quiet:
            return a, loud, np.zeros(0, int)
        quiet_runs = np.convolve(~loud, np.ones(quiet, int), "valid")[:-1] == quiet
        return a, loud, a + quiet + np.flatnonzero(loud[quiet:] & quiet_runs)

    def offset(self, lo: float, hi: float, after: float) -> float | None:
        """End of the last loud frame in ``[lo, hi)`` seconds, if any, before the first sound
        that began after quiet later than ``after`` (the next sound is not this one's tail)."""
        a, loud, rising = self._rising(lo, hi)
        frames = a + np.flatnonzero(loud)
        later = rising[rising * self.frame / self.rate > after + self.FRAME_SECONDS]
        end = later[0] if later.size else np.inf
        frames = frames[(frames >= int(lo * self.rate / self.frame)) & (frames < end)]
        return float((frames[-1] + 1) * self.frame / self.rate) if frames.size else None

    def sound_start(self, lo: float, hi: float) -> float | None:
        """Where the last sound in ``[lo, hi)`` seconds began after at least ``QUIET_SECONDS``
        of background (a loud frame after quiet ones), if one did."""
        _, _, rising = self._rising(lo, hi)
        return float(rising[-1] * self.frame / self.rate) if rising.size else None
