"""How scores over time become events: :class:`EventSettings` (each one a CLI option of
``predict --events`` and ``listen``, a query parameter of the stream endpoint), and
:data:`DEFAULTS`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from escnet.errors import EscnetError


@dataclass(frozen=True)
class EventSettings:
    """How scores over time become events (each one a CLI option of ``predict --events``,
    ``listen`` and a query parameter of the stream endpoint). The defaults were chosen on
    soundscapes of ESC-50 fold 2 (training clips of the fold-1 models), never on the held-out
    fold the figures in docs/RESULTS.md come from."""

    hop: float = 0.25
    """Seconds between scored windows: the time resolution, and a quarter of the latency."""
    window: float = 2.0
    """Seconds of audio in each scored window (at most the model's clip length)."""
    smooth: int = 2
    """Hops whose probabilities are averaged before the thresholds apply."""
    on: float = 0.7
    """An event starts when its class's smoothed probability reaches this (or the probability
    of a window that heard a new sound alone)..."""
    off: float = 0.3
    """...and ends when it has stayed below this (at most ``on``) for longer than ``max_gap``."""
    min_duration: float = 0.5
    """Seconds an event must last before it is announced; shorter ones are dropped."""
    max_gap: float = 1.0
    """Seconds below ``off`` that still continue an event (barks of one dog are one event)."""

    def check(self, clip_seconds: float) -> None:
        """Raise :class:`EscnetError` naming the first setting that makes no sense."""
        for name in ("hop", "window", "on", "off", "min_duration", "max_gap"):
            if not math.isfinite(getattr(self, name)):
                raise EscnetError(f"event setting {name}={getattr(self, name)}: must be a finite number")
        problems = [
            ("window", 0.1 <= self.window <= clip_seconds + 1e-9,
             f"must be 0.1 s to the model's clip length ({clip_seconds:g} s)"),
            ("hop", 0.01 <= self.hop <= self.window, f"must be 0.01 s to the window "
             f"({self.window:g} s)"),
            ("smooth", 1 <= self.smooth <= 100, "must be 1 to 100 hops"),
            ("on", 0 < self.on <= 1, "must be a probability above 0 and at most 1"),
            ("off", 0 <= self.off <= self.on, f"must be 0 to on ({self.on:g})"),
            ("min_duration", 0 <= self.min_duration <= 600, "must be 0 to 600 s"),
            ("max_gap", 0 <= self.max_gap <= 600, "must be 0 to 600 s")]
        for name, ok, why in problems:
            if not ok:
                raise EscnetError(f"event setting {name}={getattr(self, name)}: {why}")


DEFAULTS = EventSettings()
