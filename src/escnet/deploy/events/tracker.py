"""Event messages from scores over time: per-class hysteresis over smoothed probabilities
(:class:`EventTracker`), placed where the level envelope says sounds rose and fell."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from escnet.deploy.events.envelope import Envelope
from escnet.deploy.events.settings import EventSettings


@dataclass(frozen=True)
class EventMessage:
    """An event starting or ending, said once each."""

    label: str
    state: str
    """``"start"`` or ``"end"``."""
    time: float
    """The event's start (for ``"start"``) or end (for ``"end"``), seconds of stream."""
    confidence: float
    """The event's highest smoothed probability so far."""
    start: float
    """The event's start (also on ``"end"`` messages)."""
    decided: float
    """Seconds of stream received when this was decided (``time`` is earlier: the latency)."""

    def to_dict(self) -> dict:
        return {"label": self.label, "state": self.state, "time": round(self.time, 3),
                "start": round(self.start, 3), "confidence": round(self.confidence, 4),
                "decided": round(self.decided, 3)}


@dataclass(frozen=True)
class Event:
    """A finished event: ``label`` from ``start`` to ``end`` seconds."""

    label: str
    start: float
    end: float
    confidence: float

    def to_dict(self) -> dict:
        return {"label": self.label, "start": round(self.start, 3), "end": round(self.end, 3),
                "confidence": round(self.confidence, 4)}


QUIET_BEFORE = 1.0
"""Seconds before a frame model's event (where its frames rose) that a sound beginning after
quiet is taken as its start."""
SOUNDING_BEFORE = 5.0
"""How far before a frame model's event (where its frames rose, with no sound beginning after
quiet up to :data:`QUIET_BEFORE` before) the sound that was already sounding there may have
begun, and be taken as its start, when no other event is open (the model may need a second or
two of a sound to know it; with another event open, the sound that began may be that one's)."""
LOOK_BACK = 2.0
"""How far back a frame model's event start is followed through its frames (while they stay at
or above ``off``): a faint lead-in and the filter put a sound's start up to about this much
before the frame that started its event."""


@dataclass
class _Open:
    start: float
    last: float
    """Centre of the last window at or above ``off``."""
    last_end: float
    """End of that window."""
    peak: float
    announced: bool = False


class EventTracker:
    """Per-class hysteresis over filtered probabilities (see the module's description).

    Args:
        classes: the model's class names, in the order of its probabilities.
        settings: thresholds and durations (those left ``None`` at the defaults of the kind
            ``median`` says: :meth:`EventSettings.resolved`).
        envelope: the stream's level, where starts and ends are placed.
        median: a frame model's frames: filtered by the median of the last ``smooth`` hops
            (one stray frame neither starts nor ends an event), else by their mean; an
            event's start followed back through them (:meth:`_start`).
    """

    def __init__(self, classes: list[str], settings: EventSettings,
                 envelope: Envelope | None = None, median: bool = False) -> None:
        settings = settings.resolved(frame_model=median)
        self.classes, self.settings, self.envelope = classes, settings, envelope
        self.recent: deque[np.ndarray] = deque(maxlen=settings.smooth)
        self.open: dict[int, _Open] = {}
        self.median = median
        self.filter = np.median if median else np.mean
        self.history: deque[tuple[float, np.ndarray]] = deque(
            maxlen=math.ceil(LOOK_BACK / settings.hop) if median else 1)
        """``(centre, probabilities)`` of the last hops (a frame model's start looks back)."""
        self.filtered = np.zeros(len(classes))
        """The filtered probabilities the last :meth:`push` thresholded ``(classes,)``."""

    def push(self, end: float, probabilities: np.ndarray | None, centre: float | None = None,
             alone: bool = False) -> list[EventMessage]:
        """The window ending at ``end`` seconds scored ``probabilities`` ``(classes,)``
        (``None``: silent or unknown); ``centre``: the middle of the audio it held (default
        ``end - window / 2``); ``alone``: it held only a sound that began after quiet (a frame
        model: its frame holds that sound's start), so its own probability may start an event.
        Returns the messages this decides."""
        s = self.settings
        centre = max(0.0, end - s.window / 2) if centre is None else centre
        self.recent.append(np.zeros(len(self.classes)) if probabilities is None
                           else probabilities.astype(np.float64))
        self.history.append((centre, self.recent[-1]))
        smoothed = self.filtered = self.filter(self.recent, axis=0)
        out = []
        # a window that heard a new sound alone starts its event on its own: averaging it with
        # the background before would only make the start late
        if not alone:
            starting = smoothed >= s.on
        elif self.median:  # a frame, and the filter (which still holds frames from before)
            starting = (self.recent[-1] >= s.on) | (smoothed >= s.on)
        else:
            starting = self.recent[-1] >= s.on
        for k in np.flatnonzero(starting):
            if k not in self.open:
                self.open[k] = _Open(self._start(k, end, centre), centre, end, 0.0)
        for k, event in sorted(self.open.items()):
            p = float(smoothed[k])
            if p >= s.off:
                event.last, event.last_end, event.peak = centre, end, max(event.peak, p)
            elif centre - event.last > s.max_gap:
                out.extend(self._close(k, end))
                continue
            if not event.announced and self._lasted(event) >= s.min_duration - 1e-9:
                event.announced = True
                out.append(EventMessage(self.classes[k], "start", event.start, event.peak,
                                        event.start, end))
        return out

    def _start(self, k: int, end: float, centre: float) -> float:
        """Where class ``k``'s event that the window ending at ``end`` started began. A clip
        model, at most the window's ``centre``: where the last sound that began after quiet
        within its window began, else the first loud frame there, else half a hop before the
        window's centre. A frame model: back through its frames while they stay at or above
        ``off`` (hysteresis, backwards; at most :data:`LOOK_BACK`), then the sound that began
        after quiet up to :data:`QUIET_BEFORE` before that, if one did (a sound that begins
        while another sounds has no quiet before it: its frames say where), else, with no other
        event open, where the sound already sounding there began after quiet, up to
        :data:`SOUNDING_BEFORE` before; at most half a hop past the frame's ``centre`` (the
        first frame that hears a sound may hold its start past its middle)."""
        s, envelope = self.settings, self.envelope
        if self.median:
            first = len(self.history) - 1
            while first > 0 and self.history[first - 1][1][k] >= s.off:
                first -= 1
            heard = self.history[first][0] - s.hop / 2
            onset = None
            if envelope is not None:
                onset = envelope.sound_start(heard - QUIET_BEFORE, end)
                if onset is None and not self.open:  # heard late, no other sound's event open
                    onset = envelope.sound_start(heard - SOUNDING_BEFORE, heard)
            return max(0.0, min(heard if onset is None else onset, centre + s.hop / 2))
        onset = None
        if envelope is not None:
            onset = envelope.sound_start(end - s.window, end)
            onset = envelope.onset(end - s.window, end) if onset is None else onset
        return max(0.0, centre - s.hop / 2) if onset is None else min(onset, centre)

    def _heard_until(self, event: _Open) -> float | None:
        """End of the last loud frame of the event's sound in its last window at or above
        ``off`` (before any sound that began after it), if the envelope has one. A frame
        model's sound may pause and begin again (a dog's next bark): a sound that began after
        quiet at least a hop before the last hop its class was heard in is the event's own, so
        only a sound beginning after that one ends the search."""
        if self.envelope is None:
            return None
        after = None
        if self.median:
            after = self.envelope.sound_start(event.start + 2 * Envelope.FRAME_SECONDS,
                                              event.last - self.settings.hop)
        return self.envelope.offset(max(event.start, event.last_end - self.settings.window),
                                    event.last_end, event.start if after is None else after)

    def _lasted(self, event: _Open) -> float:
        """How long the event's sound has lasted: from its start to where it was last heard
        loud, or, without a level envelope, to half a hop past its last window's centre (a
        window that heard only the new sound has its centre halfway through it, so the centre
        alone would count half of what was heard)."""
        heard = self._heard_until(event)
        return (event.last + self.settings.hop / 2 if heard is None else heard) - event.start

    def _close(self, k: int, now: float) -> list[EventMessage]:
        event = self.open.pop(k)
        if not event.announced:  # shorter than min_duration: never said, never ended
            return []
        s = self.settings
        offset = self._heard_until(event)
        end = event.last + s.hop / 2 if offset is None else max(offset, event.start + s.hop / 2)
        return [EventMessage(self.classes[k], "end", end, event.peak, event.start, now)]

    def finish(self, end: float) -> list[EventMessage]:
        """The stream ended at ``end`` seconds: every open event ends (short ones are dropped
        unless they reach ``min_duration`` by their last window)."""
        out = []
        for k in sorted(self.open):
            event = self.open[k]
            if not event.announced and self._lasted(event) >= self.settings.min_duration - 1e-9:
                event.announced = True
                out.append(EventMessage(self.classes[k], "start", event.start, event.peak,
                                        event.start, end))
            out.extend(self._close(k, end))
        return out


def events_of(messages: Iterable[EventMessage]) -> list[Event]:
    """Finished events from a stream's messages (each end paired with its start), by start."""
    return sorted((Event(m.label, m.start, m.time, m.confidence) for m in messages if m.state == "end"),
                  key=lambda e: (e.start, e.label))
