"""Raw PCM as it arrives live (a WebSocket frame, a pipe from ``arecord`` or ``ffmpeg``):
bytes → mono ``float32`` samples in [-1, 1], and the header of a WAV stream read from a pipe
(no seeking; its data size may say "unknown")."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from escnet.data.audio import RATES
from escnet.errors import AudioError, NonFiniteAudioError

FORMATS = {"u8": 1, "s16": 2, "s24": 3, "s32": 4, "f32": 4}
"""Sample formats and their bytes: 8-bit unsigned, 16-, 24- and 32-bit signed little-endian
integers, 32-bit little-endian float (what ``arecord -f U8|S16_LE|S24_3LE|S32_LE|FLOAT_LE``
and WAV files hold)."""


@dataclass(frozen=True)
class PcmFormat:
    """How to read a PCM byte stream."""

    sample_rate: int
    """Hz."""
    format: str = "s16"
    """A key of :data:`FORMATS`."""
    channels: int = 1

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise AudioError(f"sample format {self.format!r}: use one of {', '.join(FORMATS)}")
        if not RATES[0] <= self.sample_rate <= RATES[1]:
            raise AudioError(f"sample rate {self.sample_rate} Hz: must be {RATES[0]} to {RATES[1]} Hz")
        if not 1 <= self.channels <= 64:
            raise AudioError(f"{self.channels} channels: must be 1 to 64")

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (all channels)."""
        return FORMATS[self.format] * self.channels

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` → ``(frames,)`` mono float32 (channels averaged)."""
        if len(data) % self.frame_bytes:
            raise AudioError(f"{len(data)} bytes is not a whole number of {self.format} frames of "
                             f"{self.channels} channel(s) ({self.frame_bytes} bytes each)")
        if self.format == "f32":
            samples = np.frombuffer(data, "<f4").astype(np.float32)
            if not np.isfinite(samples).all():
                raise NonFiniteAudioError("float samples include NaN or infinity")
        elif self.format == "u8":  # unsigned, 128 is zero
            samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128) / 128
        elif self.format == "s24":  # three bytes each: put them in the top of an int32
            bytes3 = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.uint32)
            packed = (bytes3[:, 0] << 8) | (bytes3[:, 1] << 16) | (bytes3[:, 2] << 24)
            samples = packed.view(np.int32).astype(np.float32) / 2**31
        else:
            raw = np.frombuffer(data, "<i2" if self.format == "s16" else "<i4")
            samples = raw.astype(np.float32) / float(2 ** (8 * raw.itemsize - 1))
        return samples.reshape(-1, self.channels).mean(axis=1) if self.channels > 1 else samples

    def chunks(self, read: Callable[[int], bytes], seconds: float = 0.1) -> Iterator[np.ndarray]:
        """Decode a byte stream (``read(n)`` returning ``b""`` at its end) about ``seconds`` at a
        time; a trailing part-frame is dropped."""
        size = max(1, int(seconds * self.sample_rate)) * self.frame_bytes
        pending = b""
        while True:
            data = read(size)
            if not data:
                return
            pending += data
            whole = len(pending) - len(pending) % self.frame_bytes
            if whole:
                yield self.decode(pending[:whole])
                pending = pending[whole:]


MAX_HEADER = 1 << 20
"""Bytes of WAV header before the audio a stream may send (RIFF chunks of metadata)."""


def read_wav_header(read: Callable[[int], bytes], name: str) -> PcmFormat:
    """Read a WAV header from a stream, leaving it at the first sample. Its sizes are not
    trusted (a live writer does not know them), so the stream is read to its end."""

    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = read(n - len(data))
            if not part:
                raise AudioError(f"{name}: the WAV header ends early ({len(data)} of {n} bytes)")
            data += part
        return data

    if exactly(12)[8:12] != b"WAVE":
        raise AudioError(f"{name}: not a WAV stream (no RIFF/WAVE header)")
    fmt, header = None, 12
    while True:
        chunk, size = struct.unpack("<4sI", exactly(8))
        header += 8
        if chunk == b"data":
            break
        if size > 1 << 20 or header + size > MAX_HEADER:  # zeros or junk after a header: no audio
            raise AudioError(f"{name}: no WAV data chunk within the first {MAX_HEADER >> 20} MB "
                             f"(a {chunk!r} chunk of {size} bytes at byte {header - 8})")
        body = exactly(size + size % 2)
        header += size + size % 2
        if chunk == b"fmt ":
            fmt = body
    if fmt is None or len(fmt) < 16:
        raise AudioError(f"{name}: the WAV stream has no format chunk before its data")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag is the sub-format's
        tag = struct.unpack("<H", fmt[24:26])[0]
    kinds = {(1, 8): "u8", (1, 16): "s16", (1, 24): "s24", (1, 32): "s32", (3, 32): "f32"}
    if (tag, bits) not in kinds:
        raise AudioError(f"{name}: WAV of {bits}-bit {'float' if tag == 3 else 'format ' + str(tag)} "
                         "samples; stream 8-, 16-, 24- or 32-bit integer, or 32-bit float PCM")
    try:
        return PcmFormat(rate, kinds[tag, bits], channels)
    except AudioError as err:  # a damaged header: say whose
        raise AudioError(f"{name}: {err}") from None
