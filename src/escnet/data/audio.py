"""Audio I/O: decode (soundfile), mix down to mono, resample (soxr), pad or crop.

All waveforms are ``float32`` NumPy arrays of shape ``(samples,)`` with values in [-1, 1].
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from escnet.errors import AudioError, AudioTooLongError, NonFiniteAudioError, UnreadableAudioError

RATES = (100, 768_000)
"""Sample rates (Hz) a recording may have; a header outside them is damaged."""
UNKNOWN_LENGTHS = ("4294967295", "0")
"""WAV data sizes that mean "unknown" (streaming writers: ``arecord``, ``ffmpeg -f wav -``)."""
UNKNOWN_FRAMES = 2**62
"""libsndfile reports ``2**63 - 1`` frames for a FLAC stream whose header gives no length."""
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")
"""Extensions escnet looks for, in order of preference when one stem has several files."""


def audio_files(folder: Path) -> dict[str, Path]:
    """Every audio file under ``folder`` (recursively, by extension), by its path relative to
    it (POSIX), sorted."""
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    return {p.relative_to(folder).as_posix(): p for p in found}


class AudioFile:
    """An audio file on disk, or one held in memory as ``bytes`` (an upload), opened for
    decoding after the checks every reader shares. Use it as a context manager.

    Args:
        source: a path, or the file's bytes.
        name: what messages call it (default: the path; give one for bytes).
        max_seconds: refuse audio longer than this, by its header and again while decoding
            (a header can understate the length): :class:`AudioTooLongError`.

    Raises:
        UnreadableAudioError: not audio in a format libsndfile decodes.
        AudioError: missing, a folder, empty, header-only or truncated.
    """

    def __init__(self, source: str | Path | bytes, name: str | None = None,
                 max_seconds: float | None = None) -> None:
        self.name = name or str(source if not isinstance(source, bytes) else "audio")
        self.max_seconds = max_seconds
        if isinstance(source, bytes):
            if not source:
                raise AudioError(f"{self.name}: empty file (0 bytes)")
            opened: bytes | io.BytesIO = io.BytesIO(source)
        else:
            path = Path(source)
            if path.is_dir():
                raise AudioError(f"{path}: is a folder; give audio files (e.g. {path}/*.wav)")
            if path.exists() and not path.is_file():  # a FIFO, a device, a socket: no end to seek to
                raise AudioError(f"{path}: not a regular file (a pipe or a device); save the audio "
                                 "to a file first, or stream it to escnet listen")
            if not path.is_file():
                raise AudioError(f"{path}: file not found")
            if path.stat().st_size == 0:
                raise AudioError(f"{path}: empty file (0 bytes)")
            opened = os.fsencode(path)  # bytes: soundfile would encode a name as UTF-8, and fail
        try:                            # on one that is not (a Latin-1 disk's)
            self.handle = sf.SoundFile(opened)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
            # libsndfile's own words, without "Error opening <_io.BytesIO object at 0x...>"
            reason = getattr(err, "error_string", None) or _reason(err)
            if "does not exist" in reason:  # what libsndfile says of a file it finds no audio in
                reason = "no audio stream libsndfile recognises in it, e.g. an MP3 holding only its tag"
            raise UnreadableAudioError(f"{self.name}: not a readable audio file ({reason})") from None
        self.sample_rate, self.channels = self.handle.samplerate, self.handle.channels
        if not RATES[0] <= self.sample_rate <= RATES[1]:
            self.close()
            raise UnreadableAudioError(f"{self.name}: its header says {self.sample_rate} Hz, not a rate "
                                       f"audio is recorded at ({RATES[0]}–{RATES[1]} Hz): a damaged "
                                       "header")
        # libsndfile decodes what is there of a cut-off file; for WAV it notes the shortfall as
        # "data : <declared> (should be <present>)" in its header dump. A declared size of
        # 0xFFFFFFFF (or 0) is how streaming writers mark a length they did not know: not a cut.
        truncated = [ln for ln in self.handle.extra_info.splitlines()
                     if ln.startswith("data") and "(should be" in ln
                     and ln.split(":", 1)[1].split("(")[0].strip() not in UNKNOWN_LENGTHS]
        if self.handle.frames == 0:
            self.close()
            raise AudioError(f"{self.name}: holds no audio samples (empty or header-only file)")
        if truncated:
            self.close()
            raise AudioError(f"{self.name}: truncated file ({truncated[0].strip()} bytes); "
                             "re-download it")
        self.decoded = 0  # samples read so far, at the file's rate
        # a stream written without knowing its length (FLAC from a pipe) says "2**63 - 1 frames":
        # read it to its end without seeking, which libsndfile cannot do there
        self.known_length = self.handle.frames < UNKNOWN_FRAMES
        if not self.known_length:
            self.handle.seekable = lambda: False  # soundfile then reads on without a seek
        else:
            self._check_length(self.handle.frames)
        if self.handle.format == "MP3":
            self._refuse_joined_mp3(source)

    @property
    def duration(self) -> float | None:
        """Seconds, by the header; ``None`` for a stream whose header does not say."""
        return self.handle.frames / self.sample_rate if self.known_length else None

    def _refuse_joined_mp3(self, source: str | Path | bytes) -> None:
        """``cat a.mp3 b.mp3 > c.mp3`` plays in most players, but libsndfile decodes only the
        first stream and says nothing: a second encoder header (LAME's ``Xing``/``Info`` frame)
        at an MPEG frame start is refused instead of a wrong duration and a wrong answer."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        starts = 0
        for tag in (b"Xing", b"Info"):
            at = data.find(tag)
            while at != -1:
                starts += any(at >= off and data[at - off] == 0xFF and data[at - off + 1] & 0xE0 == 0xE0
                              for off in (13, 21, 36))  # after the side information of each layout
                at = data.find(tag, at + 1)
        if starts > 1:
            self.close()
            raise UnreadableAudioError(f"{self.name}: {starts} MP3 streams one after another (files "
                                       "joined with cat?); only the first would be decoded: split it "
                                       "or re-encode it as one stream (ffmpeg -i in.mp3 out.wav)")

    def _check_length(self, frames: int) -> None:
        if self.max_seconds is not None and frames > self.max_seconds * self.sample_rate:
            self.close()
            raise AudioTooLongError(f"{self.name}: longer than the limit of {self.max_seconds:g} s")

    def read(self, frames: int = -1) -> np.ndarray:
        """The next ``frames`` samples (all that remain with -1; fewer at the end) as mono
        float32 ``(samples,)`` at the file's rate: channels averaged (keeps the level, unlike
        a sum), checked for NaN/inf."""
        if frames < 0 and not self.known_length:  # no length to read "all" of: block by block
            parts = [self.read(2**16)]
            while parts[-1].shape[0] == 2**16:
                parts.append(self.read(2**16))
            return np.concatenate(parts)
        try:
            if self.channels == 1:
                mono = self.handle.read(frames, dtype="float32")
            else:
                mono = self.handle.read(frames, dtype="float32", always_2d=True).mean(axis=1)
        except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
            raise UnreadableAudioError(f"{self.name}: not a readable audio file ({_reason(err)})") \
                from None
        if not np.isfinite(mono).all():
            raise NonFiniteAudioError(f"{self.name}: contains NaN or infinite samples")
        self.decoded += mono.shape[0]
        self._check_length(self.decoded)
        return mono

    def excerpt(self, sample_rate: int, start: float, seconds: float) -> np.ndarray:
        """``seconds`` of audio from ``start`` seconds (fewer at the end; none past it), mono
        float32 at ``sample_rate`` Hz: the file is sought where it can be, else read up to
        there block by block."""
        first = max(0, int(start * self.sample_rate))
        if self.known_length and self.handle.seekable():
            self.handle.seek(min(first, self.handle.frames))
            self.decoded = min(first, self.handle.frames)
        else:
            while self.decoded < first and self.read(min(2**16, first - self.decoded)).shape[0]:
                pass
        return resample(self.read(max(0, int(seconds * self.sample_rate))), self.sample_rate, sample_rate)

    def blocks(self, sample_rate: int, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
        """Decode block by block: mono ``float32`` blocks at ``sample_rate`` Hz whose
        concatenation equals :func:`load_audio`'s result (soxr's stream resampler gives the same
        samples as its one-shot call), holding about ``block_seconds`` of audio at a time.
        A NaN deep in a long file is found when its block is read."""
        rate = self.sample_rate
        frames = max(1, int(block_seconds * rate))
        if self.handle.frames <= frames:  # one block: the one-shot path, without a stream to set up
            yield resample(self._nonempty(self.read()), rate, sample_rate)
            return
        resampler = (soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
                     if rate != sample_rate else None)
        while True:
            block = self.read(frames)
            last = block.shape[0] < frames
            if self.decoded == 0:
                self._nonempty(block)
            if resampler is not None:
                block = resampler.resample_chunk(block, last=last)
            if block.shape[0]:
                yield block
            if last:
                return

    def _nonempty(self, mono: np.ndarray) -> np.ndarray:
        if mono.shape[0] == 0:
            raise AudioError(f"{self.name}: holds no audio samples (empty or header-only file)")
        return mono

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reason(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def resample(mono: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """``(n,)`` float32 at ``rate`` Hz → ``(m,)`` float32 at ``sample_rate`` Hz (soxr HQ), the
    resampling every decoded file takes."""
    if rate == sample_rate:
        return mono
    return soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path, sample_rate: int, num_samples: int | None = None) -> np.ndarray:
    """Decode ``path`` to a mono waveform at ``sample_rate`` Hz.

    Channels are averaged. With ``num_samples`` the result is padded with zeros at the end or
    cropped to exactly that many samples.

    Returns:
        ``(samples,)`` float32.

    Raises:
        AudioError: the file is missing, not audio, empty, truncated or holds NaN/inf.
    """
    with AudioFile(path) as audio:
        mono = resample(audio._nonempty(audio.read()), audio.sample_rate, sample_rate)
    return fix_length(mono, num_samples) if num_samples is not None else mono


def fix_length(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop the end so that ``wav`` has exactly ``num_samples`` samples."""
    if wav.shape[0] >= num_samples:
        return wav[:num_samples]
    return np.pad(wav, (0, num_samples - wav.shape[0]))


def windows(wav: np.ndarray, num_samples: int, hop: int | None = None) -> np.ndarray:
    """Cut ``wav`` into windows of ``num_samples`` for scoring audio of any length (the windows
    of :func:`stream_windows`, stacked).

    Returns:
        ``(windows, num_samples)`` float32.
    """
    return np.stack([w for _, w, _ in stream_windows([wav], num_samples, hop)])


def stream_windows(blocks: Iterable[np.ndarray], num_samples: int, hop: int | None = None
                   ) -> Iterator[tuple[int, np.ndarray, int]]:
    """Windows of ``num_samples`` over audio arriving in ``blocks`` (e.g. from
    :meth:`AudioFile.blocks`), holding at most one block and one window in memory.

    Windows start every ``hop`` samples (default half a window); the last one is aligned with
    the end so that nothing is dropped, unless the audio after the last regular window is
    under 1 % of a window (an ESC-50 clip decoded as 5.001 s is one window, not two). Audio
    no longer than one window gives one window, zero-padded at the end.

    Yields:
        ``(start, window, valid)``: the first sample's index, the ``(num_samples,)`` float32
        window, and how many of its samples are audio (the rest is padding).
    """
    hop = hop or max(1, num_samples // 2)
    buffer = np.zeros(0, np.float32)
    offset = 0  # index of buffer[0] in the whole recording
    start = 0  # next window's start
    last_start = None
    for block in blocks:
        buffer = np.concatenate([buffer, block.astype(np.float32, copy=False)])
        while start + num_samples <= offset + buffer.shape[0]:
            yield start, buffer[start - offset : start - offset + num_samples].copy(), num_samples
            last_start, start = start, start + hop
        # keep what the next window needs, and the last window's worth for the end
        drop = min(start, offset + buffer.shape[0] - num_samples) - offset
        if drop > 0:
            buffer, offset = buffer[drop:], offset + drop
    total = offset + buffer.shape[0]
    if last_start is None:  # shorter than one window (or exactly as long: already yielded)
        yield 0, fix_length(buffer[-total:] if total else buffer, num_samples), total
    elif last_start + num_samples < total - num_samples // 100:
        yield total - num_samples, buffer[buffer.shape[0] - num_samples :].copy(), num_samples
