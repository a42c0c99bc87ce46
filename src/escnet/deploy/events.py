"""Sound events, for finished files and live streams alike: a label, a start, an end and a
confidence, once each, however long the sound lasts.

A :class:`Stream` takes audio at the model's rate in chunks of any size and, every ``hop``
seconds, scores a window holding the last ``window`` seconds (zero-padded at its end to the
model's clip length: ESC-50 pads its short clips the same way); when a sound begins after
quiet, also a hop, two, … (``ONSET_HOPS``) after its start, so that it is judged as soon as it
has lasted each of them. An :class:`EventTracker`
turns those scores into event messages: per class, the calibrated probability is averaged over
the last ``smooth`` hops; an event starts when that rises to ``on`` and ends when it has stayed
below ``off`` (hysteresis) for longer than ``max_gap`` (a shorter dip continues it). A window
answered "unknown" (its unknown score below the model's threshold) and a silent window count as
zero for every class, so neither is ever an event.

Times are seconds of audio from the stream's start. A window's score is placed at its centre,
so an event spans ``[first centre - hop/2, last centre + hop/2]`` of the windows above its
thresholds (or, with the level envelope, where the sound rose and fell); a start message is
sent as soon as the sound has lasted ``min_duration`` (from its start to where it was last
heard loud), an end message after ``max_gap`` has passed without it.

:func:`detect_events` feeds a file through the same :class:`Stream`: the same audio gives the
same events whether it arrives as a file or as a stream in chunks of any size.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr

from escnet.deploy.predict import (
    SILENCE_DB,
    UNKNOWN,
    Model,
    Source,
    answer,
    check_finite,
    check_silence_db,
    level_db,
    opened,
)
from escnet.errors import EscnetError
from escnet.files import atomic_write_text, new_output


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
            ("off", 0 <= self.off <= self.on, f"must be 0 to --on ({self.on:g})"),
            ("min_duration", 0 <= self.min_duration <= 600, "must be 0 to 600 s"),
            ("max_gap", 0 <= self.max_gap <= 600, "must be 0 to 600 s")]
        for name, ok, why in problems:
            if not ok:
                raise EscnetError(f"event setting {name}={getattr(self, name)}: {why}")


DEFAULTS = EventSettings()


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
        return {"type": "event", "label": self.label, "state": self.state,
                "time": round(self.time, 3), "start": round(self.start, 3),
                "confidence": round(self.confidence, 4), "decided": round(self.decided, 3)}


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


@dataclass
class _Open:
    start: float
    last: float
    """Centre of the last window at or above ``off``."""
    last_end: float
    """End of that window."""
    peak: float
    announced: bool = False


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


class EventTracker:
    """Per-class hysteresis over smoothed probabilities (see the module's description).

    Args:
        classes: the model's class names, in the order of its probabilities.
        settings: thresholds and durations.
    """

    def __init__(self, classes: list[str], settings: EventSettings,
                 envelope: Envelope | None = None) -> None:
        self.classes, self.settings, self.envelope = classes, settings, envelope
        self.recent: deque[np.ndarray] = deque(maxlen=settings.smooth)
        self.open: dict[int, _Open] = {}

    def push(self, end: float, probabilities: np.ndarray | None, centre: float | None = None,
             alone: bool = False) -> list[EventMessage]:
        """The window ending at ``end`` seconds scored ``probabilities`` ``(classes,)``
        (``None``: silent or unknown); ``centre``: the middle of the audio it held (default
        ``end - window / 2``); ``alone``: it held only a sound that began after quiet, so its
        own probability may start an event. Returns the messages this decides."""
        s = self.settings
        self.recent.append(np.zeros(len(self.classes)) if probabilities is None
                           else probabilities.astype(np.float64))
        smoothed = np.mean(self.recent, axis=0)
        centre = max(0.0, end - s.window / 2) if centre is None else centre
        out = []
        # a window that heard a new sound alone starts its event on its own: averaging it with
        # the background before would only make the start late
        for k in np.flatnonzero((self.recent[-1] if alone else smoothed) >= s.on):
            if k not in self.open:
                onset = None
                if self.envelope is not None:  # the sound that began after quiet, else the first loud frame
                    onset = self.envelope.sound_start(end - s.window, end)
                    onset = self.envelope.onset(end - s.window, end) if onset is None else onset
                start = max(0.0, centre - s.hop / 2) if onset is None else onset
                self.open[k] = _Open(min(start, centre), centre, end, 0.0)
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

    def _heard_until(self, event: _Open) -> float | None:
        """End of the last loud frame of the event's sound in its last window at or above
        ``off`` (before any sound that began after it), if the envelope has one."""
        if self.envelope is None:
            return None
        return self.envelope.offset(max(event.start, event.last_end - self.settings.window),
                                    event.last_end, event.start)

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


@dataclass(frozen=True)
class HopScore:
    """One scored window of a stream."""

    end: float
    """Seconds of stream at the window's end."""
    level_db: float
    probabilities: np.ndarray | None
    """``(classes,)`` calibrated, or ``None`` for a silent window."""
    label: str | None
    """The answer: a class, :data:`~escnet.deploy.predict.UNKNOWN`, or ``None`` (silent)."""

    def to_dict(self, classes: list[str], top_k: int = 3) -> dict:
        out: dict = {"type": "scores", "time": round(self.end, 3), "level_db": self.level_db,
                     "label": self.label, "top": []}
        if self.probabilities is not None:
            out["top"] = [{"label": classes[i], "probability": round(float(self.probabilities[i]), 4)}
                          for i in np.argsort(-self.probabilities)[:top_k]]
        return out


@dataclass
class Update:
    """What one :meth:`Stream.feed` decided: the windows it scored and the event messages."""

    scores: list[HopScore] = field(default_factory=list)
    events: list[EventMessage] = field(default_factory=list)

    def extend(self, other: Update) -> None:
        self.scores.extend(other.scores)
        self.events.extend(other.events)


ONSET_HOPS = 4
"""Windows scored after a sound begins, a hop apart from its start (:meth:`Stream._windows`)."""


class Stream:
    """Live scoring of one stream of mono audio.

    Args:
        model: what scores the windows (:func:`~escnet.deploy.predict.load_model_file`).
        settings: hop, window and the event thresholds.
        silence_db: windows quieter than this (RMS of their audio, dBFS) are not scored.
        batch_size: most windows per model call (a large chunk is scored in batches).
        input_rate: Hz of the audio given to :meth:`feed`, resampled (soxr, streaming) to the
            model's; default the model's.
        name: what errors call the stream.
    """

    def __init__(self, model: Model, settings: EventSettings = DEFAULTS,
                 silence_db: float = SILENCE_DB, batch_size: int = 32,
                 input_rate: int | None = None, name: str = "the stream") -> None:
        self.name = name
        info = model.info
        settings.check(info.clip_seconds)
        check_silence_db(silence_db)
        self.model, self.settings, self.silence_db, self.batch_size = model, settings, silence_db, batch_size
        self.rate = info.sample_rate
        self.resampler = (soxr.ResampleStream(input_rate, self.rate, 1, dtype="float32", quality="HQ")
                          if input_rate not in (None, self.rate) else None)
        self.hop = max(1, round(settings.hop * self.rate))
        self.window = min(info.clip_samples, round(settings.window * self.rate))
        self.envelope = Envelope(self.rate)
        self.tracker = EventTracker(info.classes, settings, self.envelope)
        self.received = 0
        """Samples received so far."""
        self.next_end = self.hop
        """Where the next window on the hop grid ends, in samples of stream."""
        self.onset_ends: list[int] = []
        """Ends of the windows due after a sound began (:meth:`_windows`), in samples of stream."""
        self.last_began = -1
        """Sample where the last sound that began after quiet began."""
        self.buffer = np.zeros(0, np.float32)
        """Samples from ``self.received - len(buffer)`` on: what the next window needs."""
        self.finished = False

    @property
    def seconds(self) -> float:
        """Seconds of audio received."""
        return self.received / self.rate

    def feed(self, samples: np.ndarray) -> Update:
        """Append ``(n,)`` samples (float, ±1 full scale, at the input rate) and score every
        window that is now complete."""
        if self.finished:
            raise EscnetError("this stream has ended")
        samples = np.asarray(samples, np.float32).reshape(-1)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        return self._append(samples)

    def _append(self, samples: np.ndarray) -> Update:
        self.envelope.add(samples)
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += samples.shape[0]
        update = self._score(self._windows())
        if self.buffer.shape[0] > self.window:  # the next window, or the last at finish()
            self.buffer = self.buffer[-self.window:]
        # an event's end looks back to its last window, up to max_gap and a hop before the next
        self.envelope.forget((self.next_end - self.window - 2 * self.hop) / self.rate
                             - self.settings.max_gap)
        return update

    def _sound_start(self, end: int) -> float | None:
        """Where a sound began after quiet in the window ending at sample ``end``, seconds
        (:meth:`Envelope.sound_start`), if one did."""
        return self.envelope.sound_start(max(end - self.window, 0) / self.rate, end / self.rate)

    def _windows(self) -> list[tuple[int, float | None]]:
        """Every window now complete, in order, as its end and :meth:`_sound_start`: the hop
        grid's windows, and up to
        ``ONSET_HOPS`` more after a sound that began after quiet, a hop, two, … after its start
        (found by the grid window that first holds it), so a sound is judged as soon as it has
        lasted each multiple of the hop, not up to a hop later where the grid happens to fall.
        A newer sound's windows replace those still to come of the last one (so at most one
        more window a hop). What is due depends only on the audio up to each grid end: any
        chunking gives the same."""
        grid, due = [], []
        while self.next_end <= self.received:
            end = self.next_end
            began = self._sound_start(end)
            grid.append((end, began))
            self.next_end += self.hop
            if began is not None and round(began * self.rate) > self.last_began:
                self.last_began = round(began * self.rate)
                due += [e for e in self.onset_ends if e < end]  # the last sound's, already due
                self.onset_ends = [e for e in (self.last_began + k * self.hop
                                               for k in range(1, ONSET_HOPS + 1))
                                   if e > end and e % self.hop]  # not on the grid
        due += [e for e in self.onset_ends if e <= self.received]
        self.onset_ends = [e for e in self.onset_ends if e > self.received]
        return sorted(grid + [(e, self._sound_start(e)) for e in due], key=lambda w: w[0])

    def finish(self) -> Update:
        """The stream has ended: score the audio after the last full hop, end every event."""
        update = Update()
        if not self.finished:
            if self.resampler is not None:  # the resampler's last samples
                update = self._append(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
            if self.received > self.next_end - self.hop:
                update.extend(self._score([(self.received, self._sound_start(self.received))]))
            update.events.extend(self.tracker.finish(self.seconds))
            self.finished = True
        return update

    def _window(self, end: int, began: float | None) -> tuple[np.ndarray, np.ndarray, bool]:
        """The audio of the window ending at sample ``end``: its last ``window`` samples, or
        fewer when a sound began in it after background (at ``began`` seconds), so the model
        hears the new sound alone, as soon as it starts; that audio as a clip-length model
        input (zero-padded after, as ESC-50 pads its short clips); and whether it was cut so."""
        base = self.received - self.buffer.shape[0]
        lo = max(end - self.window, 0)
        if began is not None:
            lo = max(lo, int(began * self.rate))
        audio = self.buffer[lo - base : end - base]
        clip = np.zeros(self.model.info.clip_samples, np.float32)
        clip[: audio.shape[0]] = audio
        return clip, audio, began is not None

    def _score(self, windows: list[tuple[int, float | None]]) -> Update:
        """Score ``windows`` (:meth:`_windows`) in batches and track their events."""
        update = Update()
        for first in range(0, len(windows), self.batch_size):
            batch = windows[first : first + self.batch_size]
            clips, levels, centres, alone = [], [], [], []
            for end, began in batch:
                clip, audio, cut = self._window(end, began)
                alone.append(cut)
                clips.append(clip)
                levels.append(level_db(audio))
                centres.append(max(0.0, (end - audio.shape[0] / 2) / self.rate))
            loud = [i for i, level in enumerate(levels) if level >= self.silence_db]
            scores = self.model.score(np.stack([clips[i] for i in loud])) if loud else None
            row = dict(zip(loud, range(len(loud)), strict=True))
            for i, (end, _) in enumerate(batch):
                probabilities, label = None, None
                if scores is not None and i in row:
                    probabilities = scores.probabilities[row[i]]
                    check_finite(probabilities, float(np.abs(clips[i]).max()), self.name)
                    known = None if scores.known is None else float(scores.known[row[i]])
                    label = answer(self.model.info, probabilities, known)
                seconds = end / self.rate
                update.scores.append(HopScore(seconds, levels[i], probabilities, label))
                update.events.extend(self.tracker.push(
                    seconds, None if label in (None, UNKNOWN) else probabilities, centres[i], alone[i]))
        return update


def events_of(messages: Iterable[EventMessage]) -> list[Event]:
    """Finished events from a stream's messages (each end paired with its start), by start."""
    return sorted((Event(m.label, m.start, m.time, m.confidence) for m in messages if m.state == "end"),
                  key=lambda e: (e.start, e.label))


def stream_file(model: Model, source: Source, settings: EventSettings = DEFAULTS,
                silence_db: float = SILENCE_DB) -> Iterator[Update]:
    """A recording fed through a :class:`Stream` block by block, as fast as it decodes."""
    with opened(source) as audio:
        stream = Stream(model, settings, silence_db, name=audio.name)
        for block in audio.blocks(model.info.sample_rate, block_seconds=10.0):
            yield stream.feed(block)
    yield stream.finish()


def detect_events(model: Model, source: Source, settings: EventSettings = DEFAULTS,
                  silence_db: float = SILENCE_DB) -> list[Event]:
    """The events in a recording (see the module's description)."""
    return events_of(m for update in stream_file(model, source, settings, silence_db)
                     for m in update.events)


EVENT_COLUMNS = ("file", "label", "start", "end", "confidence")


def events_csv(results: list[tuple[str | Path, list[Event]]]) -> str:
    """``file,label,start,end,confidence``: a row per event (seconds from the file's start)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EVENT_COLUMNS)
    for path, events in results:
        for e in events:
            writer.writerow([str(path), *e.to_dict().values()])
    return out.getvalue()


def write_events(results: list[tuple[str | Path, list[Event]]], path: str | Path) -> Path:
    """``.csv`` (:func:`events_csv`) or ``.json`` (``[{"file", "events": [...]}]``); an
    existing file is never replaced."""
    path = new_output(path, "--out", (".csv", ".json"))
    text = events_csv(results) if path.suffix.lower() == ".csv" else json.dumps(
        [{"file": str(p), "events": [e.to_dict() for e in events]} for p, events in results], indent=1)
    return atomic_write_text(path, text)
