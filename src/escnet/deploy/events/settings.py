"""How scores over time become events: :class:`EventSettings` (each one a CLI option of
``predict --events`` and ``listen``, a query parameter of the stream endpoint), and the
defaults for clip models (:data:`CLIP_DEFAULTS`) and frame models (:data:`FRAME_DEFAULTS`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Protocol

from escnet.errors import EscnetError


class _Info(Protocol):
    frame_model: bool
    clip_seconds: float
    frame_window: float | None


@dataclass(frozen=True)
class EventSettings:
    """How scores over time become events (each one a CLI option of ``predict --events``,
    ``listen`` and a query parameter of the stream endpoint). A setting left ``None`` takes
    the model's kind's default (:meth:`for_model`): :data:`CLIP_DEFAULTS` for a clip
    classifier slid over the audio, :data:`FRAME_DEFAULTS` for a frame model. The defaults were
    chosen on soundscapes of ESC-50 fold 2 (training clips of the fold-1 models), never on the
    held-out fold the figures in docs/RESULTS.md come from."""

    hop: float = 0.25
    """Seconds between scored windows: the time resolution, and a quarter of the latency."""
    window: float | None = None
    """Seconds of audio in each scored window (at most the model's clip length; a frame model
    reads one of its newest frames, and its default is the length of the scenes it trained on:
    with more audio than that, its frames were found to do worse)."""
    smooth: int | None = None
    """Hops filtered before the thresholds apply: averaged (clip models) or their median
    (frame models)."""
    on: float | None = None
    """An event starts when its class's filtered probability reaches this (or the probability
    of a window that heard a new sound alone)..."""
    off: float | None = None
    """...and ends when it has stayed below this (at most ``on``) for longer than ``max_gap``."""
    min_duration: float | None = None
    """Seconds an event must last before it is announced; shorter ones are dropped."""
    max_gap: float | None = None
    """Seconds below ``off`` that still continue an event (barks of one dog are one event)."""
    lookahead: int | None = None
    """A frame model: how many of its frames (0.32 s each for the mn models) come after the one
    read each hop: more context for each decision, and that much later (0: the newest frame).
    A clip model has none: 0."""

    def resolved(self, frame_model: bool = False, frame_window: float = 5.0) -> EventSettings:
        """Every setting left ``None`` at the default of the model's kind (a frame model's window:
        ``frame_window``)."""
        base = FRAME_DEFAULTS if frame_model else CLIP_DEFAULTS
        given = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        out = replace(base, **given)
        return out if out.window is not None else replace(out, window=frame_window)

    def for_model(self, info: _Info) -> EventSettings:
        """:meth:`resolved` for the model ``info`` describes (a frame model's window: the scenes it
        trained on, :attr:`~escnet.deploy.onnx_model.ModelInfo.frame_window`, else its clip
        length), and checked (:meth:`check`)."""
        out = self.resolved(info.frame_model, min(info.frame_window or info.clip_seconds, info.clip_seconds))
        out.check(info.clip_seconds)
        if out.lookahead and not info.frame_model:
            raise EscnetError(f"event setting lookahead={out.lookahead}: reads a frame model's "
                              "frames; this model classifies whole windows (leave it 0)")
        return out

    def check(self, clip_seconds: float) -> None:
        """Raise :class:`EscnetError` naming the first setting that makes no sense (settings
        left ``None`` are checked at a clip model's defaults)."""
        s = self.resolved(False, clip_seconds)
        for name in ("hop", "window", "on", "off", "min_duration", "max_gap"):
            if not math.isfinite(getattr(s, name)):
                raise EscnetError(f"event setting {name}={getattr(s, name)}: must be a finite number")
        problems = [
            ("window", 0.1 <= s.window <= clip_seconds + 1e-9,
             f"must be 0.1 s to the model's clip length ({clip_seconds:g} s)"),
            ("hop", 0.01 <= s.hop <= s.window, f"must be 0.01 s to the window ({s.window:g} s)"),
            ("smooth", 1 <= s.smooth <= 100, "must be 1 to 100 hops"),
            ("on", 0 < s.on <= 1, "must be a probability above 0 and at most 1"),
            ("off", 0 <= s.off <= s.on, f"must be 0 to on ({s.on:g})"),
            ("min_duration", 0 <= s.min_duration <= 600, "must be 0 to 600 s"),
            ("max_gap", 0 <= s.max_gap <= 600, "must be 0 to 600 s"),
            ("lookahead", 0 <= s.lookahead <= 4, "must be 0 to 4 frames")]
        for name, ok, why in problems:
            if not ok:
                raise EscnetError(f"event setting {name}={getattr(s, name)}: {why}")


CLIP_DEFAULTS = EventSettings(hop=0.25, window=2.0, smooth=2, on=0.7, off=0.3, min_duration=0.5,
                              max_gap=1.0, lookahead=0)
"""A clip classifier slid over the audio: windows of 2 s, probabilities averaged over 2 hops."""
FRAME_DEFAULTS = EventSettings(hop=0.25, window=None, smooth=3, on=0.7, off=0.1, min_duration=0.5,
                               max_gap=1.0, lookahead=1)
"""A frame model: windows as long as the scenes it trained on (:meth:`EventSettings.for_model`),
the median of 3 hops of the frame before its newest
(docs/RESULTS.md, "Frame-level events": what each choice cost and bought)."""
DEFAULTS = EventSettings()
"""Every setting at its model's kind's default."""
