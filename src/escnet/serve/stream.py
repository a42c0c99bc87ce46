"""The live endpoint of ``escnet serve``: ``ws://HOST:PORT/v1/stream``.

Protocol. The client opens ``/v1/stream?sample_rate=SR&format=f32|s16`` (optional event
settings as further parameters: ``hop``, ``window``, ``on``, ``off``, ``smooth``,
``min_duration``, ``max_gap``, ``lookahead``) and sends binary frames of little-endian mono PCM at that rate.
The server sends text frames of JSON, each with a ``type``:

- ``"ready"``: once, first: the model's classes, whether it is a frame model (its events come
  from its frames), the event settings in force and the limits;
- ``"scores"``: per scored window (every hop, and a few more right after a sound begins):
  ``time`` (seconds of stream at the window's end), ``label`` (a class, ``"unknown"``, or null
  for silence), ``top`` (the best classes and their probabilities, the clip head's), ``heard``
  (what the event tracker read after this window, best first, at most 3 classes, none under
  0.1: a frame model's filtered frames, two sounds at once as two classes; a clip model's
  averaged windows);
- ``"event"``: ``label``, ``state`` (``"start"`` or ``"end"``), ``time`` (seconds of stream:
  the event's start or end), ``start``, ``confidence``, ``decided`` (seconds of stream received
  when it was decided);
- ``"end"``: after the client's text frame ``"end"``, once every open event has ended; the server
  then closes with code 1000.

Limits, each answered by closing with a code and a one-line reason: a bad parameter (1008),
a text frame other than ``"end"`` or a frame that is not whole samples (1003), NaN samples
(1007), a frame over 2 s of audio (1009), a stream longer than ``--stream-seconds`` or silent
for ``--idle-seconds`` (1008), more than ``--max-streams`` open (1013), the server stopping
(1001), a client that reads none of the server's messages for ``--idle-seconds`` (1008). A
client sending faster than ``MAX_SPEED`` times real time or more than ``FRAME_RATE`` frames a
second (after a ``BURST``) is slowed down, not refused. A stream's audio is added on the event
loop ``PIECE_SECONDS`` at a time (no model call: :meth:`~escnet.deploy.events.Stream.add`), and
the windows a piece completes are scored in one turn in its client address's fair share of the
inference threads (as the HTTP API's requests are), so streams cannot starve requests, and a
piece that completes no window costs no thread a turn.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, replace
from typing import Protocol

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from escnet.data.pcm import PcmFormat
from escnet.deploy.events import DEFAULTS, EventMessage, EventSettings, HopScore, Stream, Update
from escnet.deploy.predict import Model
from escnet.errors import AudioError, EscnetError, NonFiniteAudioError
from escnet.serve.admission import Busy, Limit

FORMATS = ("f32", "s16")
MAX_FRAME_SECONDS = 2.0
MAX_SPEED = 4.0
"""Times real time a stream may send at, on average, after its first ``BURST`` seconds."""
BURST = 10.0
FRAME_RATE = 100
"""Frames a second a stream may send, on average after its first ``BURST`` seconds' worth: a
frame costs a call whatever it holds, so a million one-sample frames must not cost a million."""
MIN_HOP = 0.1
"""Seconds: with ``MAX_SPEED``, at most 40 windows a second for one stream."""
FLOAT_SETTINGS = ("hop", "window", "on", "off", "min_duration", "max_gap")
INT_SETTINGS = ("smooth", "lookahead")


class Limits(Protocol):
    stream_seconds: float
    idle_seconds: float
    max_streams: int


class Stopping(Protocol):
    """That the server is stopping (``escnet.serve.app.Stopping``)."""

    def is_set(self) -> bool: ...

    async def wait(self) -> None: ...


class Admission(Protocol):
    """The inference slots, shared fairly among client addresses
    (``escnet.serve.admission.FairAdmission``)."""

    def slot(self, client: str) -> AbstractAsyncContextManager[None]: ...


class Service(Protocol):
    """What a stream needs of the server (``escnet.serve.app.Service``)."""

    settings: Limits
    model: Model
    pool: Executor
    admission: Admission
    streams: Limit
    stopping: Stopping


PIECE_SECONDS = 0.25
"""Seconds of a frame's audio scored in one turn on the inference threads."""
RETRY_SECONDS = 0.05
"""How long a stream waits to ask again for an inference slot the queue had no room for."""


class Closed(Exception):
    """Close the stream with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def stream_request(params: dict[str, str]) -> tuple[PcmFormat, EventSettings]:
    """The PCM format and event settings a client asked for (:class:`Closed` 1008 if bad)."""
    known = {"sample_rate", "format", *INT_SETTINGS, *FLOAT_SETTINGS}
    if extra := sorted(set(params) - known):
        raise Closed(1008, f"unknown parameter {extra[0]!r}; known: {', '.join(sorted(known))}")
    try:
        rate = int(params["sample_rate"])
    except KeyError:
        raise Closed(1008, "sample_rate: give the rate of the PCM you send, in Hz") from None
    except ValueError:
        raise Closed(1008, f"sample_rate={params['sample_rate'][:20]!r}: not a whole number of Hz") from None
    fmt = params.get("format", "f32")
    if fmt not in FORMATS:
        raise Closed(1008, f"format={fmt[:20]!r}: use f32 or s16")
    if not 8000 <= rate <= 192000:
        raise Closed(1008, f"sample_rate={rate}: must be 8000 to 192000 Hz")
    changes: dict[str, float | int] = {}
    for name in (*FLOAT_SETTINGS, *INT_SETTINGS):
        if name in params:
            try:
                changes[name] = int(params[name]) if name in INT_SETTINGS else float(params[name])
            except ValueError:
                raise Closed(1008, f"{name}={params[name][:20]!r}: not a number") from None
    if changes.get("hop", DEFAULTS.hop) < MIN_HOP:  # windows a second are what a stream costs
        raise Closed(1008, f"hop={changes['hop']:g}: a live stream's hop must be at least {MIN_HOP:g} s")
    return PcmFormat(rate, fmt), replace(DEFAULTS, **changes)


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes (the WebSocket limit)."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


async def run_stream(ws: WebSocket, service: Service) -> None:
    """Serve one live stream until the client ends it, leaves, or breaks a limit."""
    settings = service.settings
    await ws.accept()
    entered = False
    try:
        if service.stopping.is_set():
            raise Closed(1001, "the server is shutting down")
        pcm, events = stream_request(dict(ws.query_params))
        try:
            live = Stream(service.model, events, input_rate=pcm.sample_rate)
        except EscnetError as err:
            raise Closed(1008, str(err)) from None
        if settings.max_streams == 0:
            raise Closed(1008, "live streams are off on this server (max_streams=0)")
        if not service.streams.try_enter():
            raise Closed(1013, f"busy: {settings.max_streams} live streams open, the limit; retry later")
        entered = True
        info = service.model.info
        await ws.send_text(json.dumps({
            "type": "ready", "classes": info.classes, "model_rate": info.sample_rate,
            "frame_model": info.frame_model,
            "settings": asdict(live.settings), "limits": {
                "max_frame_bytes": int(MAX_FRAME_SECONDS * pcm.sample_rate) * pcm.frame_bytes,
                "stream_seconds": settings.stream_seconds, "idle_seconds": settings.idle_seconds,
                "max_speed": MAX_SPEED}}))
        await _follow(ws, service, live, pcm, ws.client.host if ws.client else "")
    except Closed as closed:
        await _close(ws, closed.code, closed.reason)
    except WebSocketDisconnect:
        pass
    finally:
        if entered:
            service.streams.leave()


async def _follow(ws: WebSocket, service: Service, live: Stream, pcm: PcmFormat, client: str) -> None:
    settings = service.settings
    max_bytes = int(MAX_FRAME_SECONDS * pcm.sample_rate) * pcm.frame_bytes
    piece = round(PIECE_SECONDS * pcm.sample_rate)
    start, received, frames, idle, silent = time.monotonic(), 0, 0, 0.0, 0.0
    stopping = asyncio.ensure_future(service.stopping.wait())
    receive: asyncio.Future | None = None
    try:
        while True:
            receive = receive or asyncio.ensure_future(ws.receive())
            wait = min(1.0, settings.idle_seconds)
            done, _ = await asyncio.wait({receive, stopping}, timeout=wait,
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopping in done or service.stopping.is_set():  # at once, before the server's own close
                raise Closed(1001, "the server is shutting down")
            if receive not in done:
                idle += wait
                if idle >= settings.idle_seconds:
                    raise Closed(1008, f"no audio for {settings.idle_seconds:g} s")
                continue
            message, receive, idle = receive.result(), None, 0.0
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                if message["text"].strip() != "end":
                    raise Closed(1003, 'text frames: only "end" (audio goes in binary frames)')
                await _send(ws, live, await _run(service, client, live.finish), settings.idle_seconds)
                await ws.send_text(json.dumps({"type": "end", "seconds": round(live.seconds, 3)}))
                await ws.close(1000)
                return
            samples = _samples(message.get("bytes") or b"", pcm, max_bytes)
            received += samples.shape[0]
            seconds = received / pcm.sample_rate
            if seconds > settings.stream_seconds:
                raise Closed(1008, f"the stream passed the limit of {settings.stream_seconds:g} s of audio")
            # digital silence is no sound: a sender of zeros holds a stream slot no longer than one
            # that sends nothing
            silent = silent + samples.shape[0] / pcm.sample_rate if not samples.any() else 0.0
            if silent >= settings.idle_seconds:
                raise Closed(1008, f"no sound for {settings.idle_seconds:g} s (digital silence)")
            # added a piece at a time, each piece's windows scored in their own turn for a thread:
            # a request waiting behind a stream waits for one piece, not a whole 2 s frame's windows
            for k in range(0, len(samples), piece):
                if live.add(samples[k:k + piece]):
                    await _send(ws, live, await _run(service, client, live.score_due), settings.idle_seconds)
            frames += 1
            elapsed = time.monotonic() - start
            ahead = max((seconds - BURST) / MAX_SPEED, (frames - BURST * FRAME_RATE) / FRAME_RATE) - elapsed
            if ahead > 0:  # faster than real time allows: wait, so one client cannot take every core
                await asyncio.sleep(ahead)
    finally:
        for task in (stopping, receive):
            if task is not None:
                task.cancel()


def _samples(data: bytes, pcm: PcmFormat, max_bytes: int) -> np.ndarray:
    """A binary frame's samples, or :class:`Closed` saying what is wrong with it."""
    if len(data) > max_bytes:
        raise Closed(1009, f"a frame of {len(data)} bytes: at most {max_bytes} "
                     f"({MAX_FRAME_SECONDS:g} s of audio)")
    try:
        return pcm.decode(data)
    except EscnetError as err:
        raise Closed(1007 if isinstance(err, NonFiniteAudioError) else 1003, str(err)) from None


async def _run(service: Service, client: str, work, *args) -> Update:
    """``work(*args)`` on the inference pool, in a slot of ``client``'s fair share (a stream
    takes no more of the threads than a client of the HTTP API; with no room it waits, it is
    never dropped); audio the model cannot score closes the stream (1007), a model that fails
    on it too (1011)."""
    while True:
        try:
            async with service.admission.slot(client):
                return await asyncio.get_running_loop().run_in_executor(service.pool, work, *args)
        except Busy:
            await asyncio.sleep(RETRY_SECONDS)
        except AudioError as err:
            raise Closed(1007, str(err)) from None
        except EscnetError as err:
            raise Closed(1011, str(err)) from None


def scores_message(score: HopScore, classes: list[str]) -> dict:
    """A ``"scores"`` message: a scored window's end, level, answer, best classes and what the
    event tracker read."""
    def listed(pairs: list[tuple[str, float]]) -> list[dict]:
        return [{"label": c, "probability": round(p, 4)} for c, p in pairs]

    return {"type": "scores", "time": round(score.end, 3), "level_db": score.level_db,
            "label": score.label, "top": listed(score.top(classes)),
            "heard": listed(score.heard(classes))}


def event_message(event: EventMessage) -> dict:
    """An ``"event"`` message: an event's start or end."""
    return {"type": "event", **event.to_dict()}


async def _send(ws: WebSocket, live: Stream, update: Update, timeout: float) -> None:
    """Scores and event messages in stream order (an event after the window that decided it);
    a client that reads none of them for ``timeout`` seconds is closed."""
    classes = live.model.info.classes
    messages = [(s.end, 0, scores_message(s, classes)) for s in update.scores]
    messages += [(e.decided, 1, event_message(e)) for e in update.events]
    for *_, message in sorted(messages, key=lambda m: m[:2]):
        try:
            await asyncio.wait_for(ws.send_text(json.dumps(message)), timeout)
        except TimeoutError:
            raise Closed(1008, f"the client read no message for {timeout:g} s") from None


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Say why in a message and in the close frame; a client that reads neither within a
    second is left to the server's connection handling."""
    try:
        await asyncio.wait_for(ws.send_text(json.dumps({"type": "error", "code": code, "error": reason})), 1)
        await asyncio.wait_for(ws.close(code, _reason(reason)), 1)
    except (WebSocketDisconnect, RuntimeError, TimeoutError):  # the client is gone or not reading
        pass
