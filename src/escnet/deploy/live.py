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
import math
import queue
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np

from escnet.data.audio import AudioFile
from escnet.data.pcm import PcmFormat, read_wav_header
from escnet.deploy.events import DEFAULTS, EventMessage, EventSettings, Stream
from escnet.deploy.predict import load_model_file
from escnet.deploy.windows import SILENCE_DB
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


COMPRESSED = {b"OggS": "OGG", b"fLaC": "FLAC", b"ID3": "MP3", b"\xff\xfb": "MP3", b"\xff\xf3": "MP3",
              b"\xff\xf2": "MP3"}
"""First bytes of compressed formats a byte stream is not decoded as (libsndfile needs to seek in
them): never read as raw PCM."""


def byte_stream(stream: BinaryIO, name: str, raw: PcmFormat | None) -> LiveInput:
    """A WAV stream (its header read, its sizes ignored), or raw PCM described by ``raw``."""
    reader = _Prefixed(b"", stream, name)
    head = reader.read(4)
    while 0 < len(head) < 4 and (more := reader.read(4 - len(head))):  # a pipe may give less
        head += more
    reader.head = head
    kind = next((k for magic, k in COMPRESSED.items() if head.startswith(magic)), None)
    if kind is not None:
        raise AudioError(f"{name}: {kind} audio; a stream must be WAV or raw PCM (compressed files: "
                         "save them and give the file, or convert: ffmpeg -i IN -f wav -)")
    if head == b"RIFF":
        pcm = read_wav_header(reader.read, name)
    elif raw is not None:
        pcm = raw
    elif not head:
        raise AudioError(f"{name}: no audio arrived (the stream is empty)")
    else:
        raise AudioError(f"{name}: not a WAV stream; for raw PCM give its rate and sample format "
                         "(rate=16000, format=s16)")
    return LiveInput(name, pcm.sample_rate, pcm.chunks(reader.read, CHUNK_SECONDS))


def file_input(path: str | Path) -> LiveInput:
    """A recording in any format escnet decodes, at its own rate."""
    audio = AudioFile(path)

    def chunks() -> Iterator[np.ndarray]:
        with audio:
            yield from audio.blocks(audio.sample_rate, block_seconds=CHUNK_SECONDS)

    return LiveInput(audio.name, audio.sample_rate, chunks())


class _Sized:
    """An HTTP response whose end before its ``Content-Length`` is an error, not the stream's
    end (a connection cut mid-body reads as a short body)."""

    def __init__(self, response, name: str) -> None:
        self.response, self.name = response, name

    def read1(self, n: int) -> bytes:
        data = self.response.read1(n)
        if not data and self.response.length:  # bytes the server promised and never sent
            raise AudioError(f"{self.name}: the stream was cut short ({self.response.length} bytes "
                             "of its body never arrived)")
        return data


URL_TIMEOUT = 10.0
"""Seconds a URL may send nothing (to connect, or at any read) before it is given up."""


def _check_timeout(timeout: float) -> None:
    if not (math.isfinite(timeout) and 0 < timeout <= 3600):
        raise EscnetError(f"timeout={timeout}: must be above 0 and at most 3600 seconds")


def url_input(url: str, raw: PcmFormat | None, timeout: float = URL_TIMEOUT) -> LiveInput:
    """A WAV or raw PCM stream over HTTP(S) (a compressed file: download it and give the path),
    given up after ``timeout`` seconds without data."""
    import urllib.error
    import urllib.request

    _check_timeout(timeout)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as err:
        if isinstance(err, urllib.error.HTTPError):
            err.close()  # it holds the answer's connection
        raise EscnetError(f"input={url}: cannot open it ({getattr(err, 'reason', err)})") from None
    try:
        return byte_stream(_Sized(response, url), url, raw)
    except BaseException:  # not audio escnet can stream: the connection is not kept open
        response.close()
        raise


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


def open_input(spec: str | None, raw: PcmFormat | None = None, stdin: BinaryIO | None = None,
               timeout: float = URL_TIMEOUT) -> LiveInput:
    """``None``: the microphone; ``-``: standard input; ``http(s)://...``: a URL (given up after
    ``timeout`` seconds without data); else a file."""
    if spec is None:
        return microphone()
    if spec == "-":
        if stdin is None and (sys.stdin is None or sys.stdin.closed):  # started with stdin closed
            raise EscnetError(f"input=-: standard input is closed; {PIPE_HINT}")
        if stdin is None and sys.stdin.isatty():  # nothing piped in: reading would wait forever
            raise EscnetError(f"input=-: standard input is a terminal, not audio; {PIPE_HINT}")
        return byte_stream(stdin or sys.stdin.buffer, "standard input", raw)
    if spec.startswith(("http://", "https://")):
        return url_input(spec, raw, timeout)
    path = Path(spec)
    if path.exists() and (path.is_fifo() or path.is_char_device()):  # a stream with a name
        return byte_stream(path.open("rb", buffering=0), spec, raw)
    if raw is not None:
        raise EscnetError(f"input={spec}: a rate and a sample format describe raw PCM on standard "
                          "input or a URL; a file says its own")
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
LOG_SUFFIXES = (".csv", ".jsonl")


class EventLog:
    """Event messages written to ``.csv`` or ``.jsonl`` as they happen (a line each, flushed);
    an existing file is never replaced."""

    def __init__(self, path: str | Path) -> None:
        self.path = new_output(path, "out", LOG_SUFFIXES)
        self.csv = self.path.suffix.lower() == ".csv"
        try:
            self.file: IO[str] = self.path.open("x", encoding="utf-8", newline="")
        except OSError as err:
            raise EscnetError(f"out={self.path}: cannot write it ({err.strerror})") from None
        if self.csv:
            self.file.write(",".join(LOG_COLUMNS) + "\n")

    def write(self, message: EventMessage, wall_clock: str) -> None:
        row = {"wall_clock": wall_clock, "stream_seconds": round(message.decided, 3),
               **{k: v for k, v in message.to_dict().items() if k != "decided"}}
        if self.csv:
            line = io.StringIO()
            csv.writer(line, lineterminator="\n").writerow([row[c] for c in LOG_COLUMNS])
            self.file.write(line.getvalue())
        else:
            self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def raw_format(rate: int | None, sample_format: str | None, channels: int = 1) -> PcmFormat | None:
    """How raw PCM input is laid out (``None``: the input says, a WAV header or a file)."""
    if rate is None:
        if sample_format is not None:
            raise EscnetError(f"format={sample_format}: describes raw PCM: give its rate too")
        return None
    return PcmFormat(rate, sample_format or "s16", channels)


class Listening:
    """``escnet listen`` put together, every part checked before the input is opened (the
    model, the event settings, the log file), then the input and the :class:`Stream` that
    follows it.

    Args:
        model: an ``.onnx`` export, a run folder or a ``.pt`` checkpoint.
        input_spec: :func:`open_input`'s ``spec``.
        raw: raw PCM input's layout (:func:`raw_format`).
        settings: how scores become events.
        silence_db: windows quieter than this are not scored.
        out: also write each event start and end here (``.csv`` or ``.jsonl``) as it happens.
        realtime: deliver a file or URL no faster than it plays.
        device, threads: where the model runs.
        timeout: a URL: seconds without data before it is given up.
    """

    def __init__(self, model: str | Path, input_spec: str | None = None, raw: PcmFormat | None = None,
                 settings: EventSettings = DEFAULTS, silence_db: float = SILENCE_DB,
                 out: str | Path | None = None, realtime: bool = False, device: str = "cpu",
                 threads: int | None = None, timeout: float = URL_TIMEOUT) -> None:
        _check_timeout(timeout)
        loaded = load_model_file(model, device, threads)
        settings.for_model(loaded.info)
        if out is not None:
            new_output(out, "out", LOG_SUFFIXES)
        source = open_input(input_spec, raw, timeout=timeout)
        self.stream = Stream(loaded, settings, silence_db, input_rate=source.sample_rate, name=source.name)
        self.log = EventLog(out) if out is not None else None  # made once all else is in order
        self.source = real_time(source) if realtime else source

    def run(self, emit: Callable[[EventMessage, str], None]) -> bool:
        """Follow the input until it ends or Ctrl-C, calling ``emit(message, wall_clock)`` for
        every event start and end as it is decided (and logging it); returns whether it was
        interrupted."""
        def each(message: EventMessage) -> None:
            wall = datetime.now().astimezone().isoformat(timespec="milliseconds")
            if self.log is not None:
                self.log.write(message, wall)
            emit(message, wall)

        try:
            return listen(self.stream, self.source, each)
        finally:
            if self.log is not None:
                self.log.close()
