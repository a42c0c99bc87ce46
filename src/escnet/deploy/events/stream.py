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

A frame model (``ModelInfo.frame_model``) is read differently: each hop's window holds the last
``window`` seconds (default the length of the scenes it trained on, ``ModelInfo.frame_window``),
given to the model at that length (a stream's first windows zero-padded before), and the
per-class probabilities of the frame ``lookahead`` before its newest (each class its own
yes/no, so two sounds at once are two events) go to the tracker, filtered by their median over
``smooth`` hops (a frame that holds the start of a sound that began after quiet may also start
its event on its own); no window is cut to a new sound, and no class is held back by the clip's
"unknown" answer (the frames say which classes sound, and that none does).

Times are seconds of audio from the stream's start. A window's score is placed at its centre,
so an event spans ``[first centre - hop/2, last centre + hop/2]`` of the windows above its
thresholds (or, with the level envelope, where the sound rose and fell); a start message is
sent as soon as the sound has lasted ``min_duration`` (from its start to where it was last
heard loud), an end message after ``max_gap`` has passed without it.

:func:`detect_events` feeds a file through the same :class:`Stream`: the same audio gives the
same events whether it arrives as a file or as a stream in chunks of any size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import soxr

from escnet.deploy.events.envelope import Envelope
from escnet.deploy.events.settings import DEFAULTS, EventSettings
from escnet.deploy.events.tracker import Event, EventMessage, EventTracker, events_of
from escnet.deploy.onnx_model import Row
from escnet.deploy.predict import UNKNOWN, Model, Source, answer, opened, scorer
from escnet.deploy.windows import SILENCE_DB, Window
from escnet.errors import EscnetError

HEARD_FLOOR = 0.1
"""Filtered probabilities under this are not listed as heard (:meth:`HopScore.heard`)."""


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
    centre: float
    """Seconds of stream at the middle of the audio the window held (where the tracker places
    its score; for a frame model, the middle of the part of the window its frame covers)."""
    track: np.ndarray
    """``(classes,)``: the filtered probabilities the tracker thresholded after this window
    (zero for silence and for an "unknown" window of a clip model)."""

    def top(self, classes: list[str], k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes and their probabilities (none for a silent window)."""
        if self.probabilities is None:
            return []
        return [(classes[i], float(self.probabilities[i])) for i in np.argsort(-self.probabilities)[:k]]

    def heard(self, classes: list[str], k: int = 3, floor: float = HEARD_FLOOR) -> list[tuple[str, float]]:
        """What the tracker read after this window, best first: the ``k`` classes with the
        highest filtered probabilities (``track``: a frame model's frames, several classes at
        once; a clip model's averaged windows), none under ``floor``."""
        best = np.argsort(-self.track, kind="stable")[:k]
        return [(classes[i], float(self.track[i])) for i in best if self.track[i] >= floor]


@dataclass
class Update:
    """What one :meth:`Stream.feed` decided: the windows it scored and the event messages."""

    scores: list[HopScore] = field(default_factory=list)
    events: list[EventMessage] = field(default_factory=list)

    def extend(self, other: Update) -> None:
        self.scores.extend(other.scores)
        self.events.extend(other.events)


ONSET_HOPS = 4
"""Windows scored after a sound begins, a hop apart from its start (:meth:`Stream._windows`;
clip models)."""


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
        self.settings = settings = settings.for_model(info)
        self.model, self.frames = model, info.frame_model
        self.scorer = scorer(model, batch_size, silence_db)
        self.rate = info.sample_rate
        self.resampler = (soxr.ResampleStream(input_rate, self.rate, 1, dtype="float32", quality="HQ")
                          if input_rate not in (None, self.rate) else None)
        self.hop = max(1, round(settings.hop * self.rate))
        self.window = min(info.clip_samples, round(settings.window * self.rate))
        if self.frames and info.frame_seconds:  # a bad setting said before any audio
            self._check_lookahead(math.ceil(self.window / self.rate / info.frame_seconds - 1e-9))
        self.envelope = Envelope(self.rate)
        self.tracker = EventTracker(info.classes, settings, self.envelope, median=self.frames)
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
        self.add(samples)
        return self.score_due()

    def add(self, samples: np.ndarray) -> bool:
        """The first half of :meth:`feed`, with no model call: append ``(n,)`` samples and say
        whether a window is now complete, to be scored by :meth:`score_due` before more are
        added (a server adds each frame at once and sends only due windows to its inference
        threads)."""
        if self.finished:
            raise EscnetError("this stream has ended")
        samples = np.asarray(samples, np.float32).reshape(-1)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        return self._append(samples)

    def score_due(self) -> Update:
        """The second half of :meth:`feed`: score every window that is now complete."""
        update = self._score(self._windows())
        self._forget()
        return update

    def _append(self, samples: np.ndarray) -> bool:
        """Append samples at the model's rate; whether a window is now due."""
        self.envelope.add(samples)
        self.buffer = np.concatenate([self.buffer, samples])
        self.received += samples.shape[0]
        due = self.next_end <= self.received or any(e <= self.received for e in self.onset_ends)
        if not due:
            self._forget()
        return due

    def _forget(self) -> None:
        """Drop audio no window to come needs: the next window's (or the last, at
        :meth:`finish`), and the level envelope an event's end looks back to (its last window,
        up to ``max_gap`` and a hop before the next)."""
        if self.buffer.shape[0] > self.window:
            self.buffer = self.buffer[-self.window:]
        self.envelope.forget((self.next_end - self.window - 2 * self.hop) / self.rate
                             - self.settings.max_gap)

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
            if began is not None and round(began * self.rate) > self.last_began and not self.frames:
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
                self._append(self.resampler.resample_chunk(np.zeros(0, np.float32), last=True))
                update = self.score_due()
            if self.received > self.next_end - self.hop:
                update.extend(self._score([(self.received, self._sound_start(self.received))]))
            update.events.extend(self.tracker.finish(self.seconds))
            self.finished = True
        return update

    def _window(self, end: int, began: float | None) -> tuple[np.ndarray, np.ndarray, bool]:
        """The audio of the window ending at sample ``end``: its last ``window`` samples, or
        fewer when a sound began in it after background (at ``began`` seconds; clip models), so
        the model hears the new sound alone, as soon as it starts; that audio as the model's
        input (a clip model's: a clip long, zero-padded after, as ESC-50 pads its short clips; a
        frame model's: a window long, zero-padded before, so its newest frame is the input's
        last); and whether it was cut so."""
        base = self.received - self.buffer.shape[0]
        lo = max(end - self.window, 0)
        cut = began is not None and not self.frames
        if cut:
            lo = max(lo, int(began * self.rate))
        audio = self.buffer[lo - base : end - base]
        clip = np.zeros(self.window if self.frames else self.model.info.clip_samples, np.float32)
        if self.frames:
            clip[clip.shape[0] - audio.shape[0]:] = audio
        else:
            clip[: audio.shape[0]] = audio
        return clip, audio, cut

    def _score(self, windows: list[tuple[int, float | None]]) -> Update:
        """Score ``windows`` (:meth:`_windows`) and track their events."""
        update = Update()
        cut = [self._window(end, began) for end, began in windows]
        items = [(Window.of(end - audio.shape[0], audio), clip) for (end, _), (clip, audio, _) in
                 zip(windows, cut, strict=True)]
        scored = self.scorer.score(items, self.name)
        for (end, began), (_, audio, alone), (window, row) in zip(windows, cut, scored, strict=True):
            probabilities = None if row is None else row.probabilities
            label = None if row is None else answer(self.model.info, row.probabilities, row.known)
            seconds = end / self.rate
            if self.frames:  # the frame ``lookahead`` before the newest, at the middle of its part
                heard, centre = self._frame(row, seconds)
                alone = self._fresh(began, centre)
            else:
                heard = None if label in (None, UNKNOWN) else probabilities
                centre = max(0.0, (end - audio.shape[0] / 2) / self.rate)
            update.events.extend(self.tracker.push(seconds, heard, centre, alone))
            update.scores.append(HopScore(seconds, window.level_db, probabilities, label, centre,
                                          self.tracker.filtered.copy()))
        return update

    def _fresh(self, began: float | None, centre: float) -> bool:
        """A frame model: whether the frame read at ``centre`` holds the start of a sound that
        began after quiet (at ``began``), and the filter still holds hops from before it: its
        own probabilities may then start an event, as a clip model's window that heard a new
        sound alone does (the median would wait for a second such hop)."""
        if began is None:
            return False
        half = (self.model.info.frame_seconds or self.settings.hop) / 2
        return centre - half - (self.settings.smooth - 1) * self.settings.hop <= began <= centre + half

    def _check_lookahead(self, frames: int) -> None:
        """Refuse a ``lookahead`` that reaches past the ``frames`` a window gives."""
        if self.settings.lookahead >= frames:
            raise EscnetError(f"event setting lookahead={self.settings.lookahead}: a window of "
                              f"{self.window / self.rate:g} s gives {frames} frame(s); use a "
                              f"lookahead under {frames} or a longer window")

    def _frame(self, row: Row | None, end: float) -> tuple[np.ndarray | None, float]:
        """A frame model's window ending at ``end`` seconds: the probabilities of its frame
        ``lookahead`` before the newest (``None`` for a silent window), and the stream time at
        the middle of the part of the window that frame covers."""
        back, window = self.settings.lookahead, self.window / self.rate
        if row is None or row.frames is None:
            return None, max(0.0, end - self.settings.hop / 2)
        count = row.frames.shape[0]
        self._check_lookahead(count)
        step = self.model.info.frame_seconds or window / count
        k = count - 1 - back
        middle = (k * step + min((k + 1) * step, window)) / 2  # the last frame may run past the end
        return row.frames[k], max(0.0, end - window + middle)


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
