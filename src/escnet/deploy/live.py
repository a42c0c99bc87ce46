"""``escnet listen``: sound events from a microphone, a pipe, a URL or a file, as they happen.

An input is mono ``float32`` chunks at its own rate (:class:`LiveInput`); :func:`listen` feeds
them to an :class:`~escnet.deploy.events.Stream` and hands each event message on as soon as it
is decided. A microphone and a pipe from ``arecord`` arrive in real time by nature; a file or
URL is read as fast as it decodes, or at real time with ``realtime``.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import queue
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from escnet.data.audio import AudioFile
from escnet.data.pcm import PcmFormat, read_wav_header
from escnet.deploy.events import EventMessage, Stream
from escnet.errors import AudioError, EscnetError
from escnet.files import new_output

PIPE_HINT = ("pipe audio in instead: arecord -q -f S16_LE -r 16000 -c 1 -t wav | "
             "escnet listen --model MODEL --input -")
CHUNK_SECONDS = 0.1
"""Audio per chunk read from an input: the latency a read adds."""


@dataclass
class LiveInput:
    """Where audio comes from: mono float32 ``chunks`` at ``sample_rate`` Hz."""

    name: str
    sample_rate: int
    chunks: Iterator[np.ndarray]


class _Prefixed:
    """A byte stream with bytes already read from it put back in front; a failed read (a
    stalled or dropped connection) is an :class:`AudioError` naming the stream."""

    def __init__(self, head: bytes, stream: BinaryIO, name: str) -> None:
        self.head, self.stream, self.name = head, stream, name

    def read(self, n: int) -> bytes:
        if self.head:
            out, self.head = self.head[:n], self.head[n:]
            return out
        # read1: what is there now (a pipe gives audio as it comes, not once n bytes are in)
        read1 = getattr(self.stream, "read1", None)
        try:
            return read1(n) if read1 is not None else self.stream.read(n)
        except (OSError, ValueError, http.client.HTTPException) as err:  # timeouts, resets, cut bodies
            why = str(err) or type(err).__name__
            raise AudioError(f"{self.name}: reading the stream failed ({why})") from None


def byte_stream(stream: BinaryIO, name: str, raw: PcmFormat | None) -> LiveInput:
    """A WAV stream (its header read, its sizes ignored), or raw PCM described by ``raw``."""
    reader = _Prefixed(b"", stream, name)
    head = reader.read(4)
    while 0 < len(head) < 4 and (more := reader.read(4 - len(head))):  # a pipe may give less
        head += more
    reader.head = head
    if head == b"RIFF":
        pcm = read_wav_header(reader.read, name)
    elif raw is not None:
        pcm = raw
    elif not head:
        raise AudioError(f"{name}: no audio arrived (the stream is empty)")
    else:
        raise AudioError(f"{name}: not a WAV stream; for raw PCM give --rate and --format "
                         "(e.g. --rate 16000 --format s16)")
    return LiveInput(name, pcm.sample_rate, pcm.chunks(reader.read, CHUNK_SECONDS))


def file_input(path: str | Path) -> LiveInput:
    """A recording in any format escnet decodes, at its own rate."""
    audio = AudioFile(path)

    def chunks() -> Iterator[np.ndarray]:
        with audio:
            yield from audio.blocks(audio.sample_rate, block_seconds=CHUNK_SECONDS)

    return LiveInput(audio.name, audio.sample_rate, chunks())


def url_input(url: str, raw: PcmFormat | None) -> LiveInput:
    """A WAV or raw PCM stream over HTTP(S) (a compressed file: download it and give the path)."""
    import urllib.error
    import urllib.request

    try:
        response = urllib.request.urlopen(url, timeout=10)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise EscnetError(f"--input {url}: cannot open it ({getattr(err, 'reason', err)})") from None
    return byte_stream(response, url, raw)


def microphone() -> LiveInput:
    """The default input device, through PortAudio (``sounddevice``)."""
    try:
        import sounddevice as sd
    except ImportError:
        raise EscnetError(f"listening to a microphone needs sounddevice (pip install 'escnet[live]'); "
                          f"or {PIPE_HINT}") from None
    except OSError as err:  # the package is there, the PortAudio library is not
        raise EscnetError(f"no microphone: {err}; {PIPE_HINT}") from None
    try:
        device = sd.query_devices(kind="input")
    except Exception:  # sounddevice raises PortAudioError or ValueError when there is none
        raise EscnetError(f"no microphone found on this machine; {PIPE_HINT}") from None
    rate = int(device["default_samplerate"])
    blocks: queue.Queue[np.ndarray] = queue.Queue()

    def chunks() -> Iterator[np.ndarray]:
        with sd.InputStream(samplerate=rate, channels=1, dtype="float32",
                            blocksize=int(rate * CHUNK_SECONDS),
                            callback=lambda data, *_: blocks.put(data[:, 0].copy())):
            while True:
                yield blocks.get()

    return LiveInput(f"microphone ({device['name']})", rate, chunks())


def open_input(spec: str | None, raw: PcmFormat | None = None, stdin: BinaryIO | None = None) -> LiveInput:
    """``None``: the microphone; ``-``: standard input; ``http(s)://...``: a URL; else a file."""
    if spec is None:
        return microphone()
    if spec == "-":
        stream = stdin or sys.stdin.buffer
        if stdin is None and sys.stdin.isatty():  # nothing piped in: reading would wait forever
            raise EscnetError(f"--input -: standard input is a terminal, not audio; {PIPE_HINT}")
        return byte_stream(stream, "standard input", raw)
    if spec.startswith(("http://", "https://")):
        return url_input(spec, raw)
    if raw is not None:
        raise EscnetError(f"--input {spec}: --rate and --format describe raw PCM on standard input "
                          "or a URL; a file says its own")
    return file_input(spec)


def real_time(source: LiveInput) -> LiveInput:
    """``source`` delivered no faster than it would play."""

    def chunks() -> Iterator[np.ndarray]:
        start, played = time.monotonic(), 0
        for chunk in source.chunks:
            ahead = start + played / source.sample_rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            played += chunk.shape[0]
            yield chunk

    return LiveInput(source.name, source.sample_rate, chunks())


def listen(stream: Stream, source: LiveInput, emit: Callable[[EventMessage], None]) -> bool:
    """Follow ``source`` with ``stream`` (made with ``input_rate=source.sample_rate``) until it
    ends or Ctrl-C, calling ``emit`` for every event start and end as it is decided; every event
    still open at the end is ended. Returns whether it was interrupted."""
    interrupted = False
    try:
        for chunk in source.chunks:
            for message in stream.feed(chunk).events:
                emit(message)
    except KeyboardInterrupt:
        interrupted = True
    for message in stream.finish().events:
        emit(message)
    return interrupted


LOG_COLUMNS = ("wall_clock", "stream_seconds", "state", "label", "time", "start", "confidence")


class EventLog:
    """Event messages written to ``.csv`` or ``.jsonl`` as they happen (a line each, flushed);
    an existing file is never replaced."""

    def __init__(self, path: str | Path) -> None:
        self.path = new_output(path, "--out", (".csv", ".jsonl"))
        self.csv = self.path.suffix.lower() == ".csv"
        try:
            self.file: IO[str] = self.path.open("x", encoding="utf-8", newline="")
        except OSError as err:
            raise EscnetError(f"--out {self.path}: cannot write it ({err.strerror})") from None
        if self.csv:
            self.file.write(",".join(LOG_COLUMNS) + "\n")

    def write(self, message: EventMessage, wall_clock: str) -> None:
        row = {"wall_clock": wall_clock, "stream_seconds": round(message.decided, 3),
               **{k: v for k, v in message.to_dict().items() if k not in ("type", "decided")}}
        if self.csv:
            line = io.StringIO()
            csv.writer(line, lineterminator="\n").writerow([row[c] for c in LOG_COLUMNS])
            self.file.write(line.getvalue())
        else:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
