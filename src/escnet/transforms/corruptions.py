"""Corruptions of real recordings, for measuring how a model holds up (``escnet robustness``).

Each corruption is a pure function of a mono waveform ``(samples,)`` float32 at ``sr`` Hz (the
recording's own rate, before it is resampled to the model's), a severity, and a seed: the same
inputs give the same output. :data:`CORRUPTIONS` lists them by family with their graded
severities; :func:`corrupt` applies one by name.

- ``band_limit``: resampled down to 16 or 8 kHz and back (a phone or a telephony pipeline): the
  band above half that rate is gone.
- ``mp3``, ``vorbis``: encoded and decoded by libsndfile (MP3 at 64 or 32 kbit/s constant bit
  rate; Ogg Vorbis at its lowest quality).
- ``white_noise``, ``pink_noise``, ``background``: noise added at 20, 10 or 0 dB SNR (relative to
  the clip's RMS over its non-silent part); ``background`` draws seeded excerpts of recordings
  from a folder.
- ``level``: -30 dB, or +20 dB with hard clipping at full scale.
- ``reverb``: convolved with a room impulse response from pyroomacoustics (a small room, RT60
  0.3 s; a hall, RT60 1.5 s), with the clip's own energy.
- ``truncate``: only the first 2 or 1 s (the model zero-pads, as ``predict`` does).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from escnet.data.audio import AUDIO_EXTENSIONS, AudioFile, load_audio, resample
from escnet.errors import ConfigError


@dataclass(frozen=True)
class Corruption:
    family: str
    severity: str

    @property
    def name(self) -> str:
        return f"{self.family}:{self.severity}" if self.severity else self.family


CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "band_limit": ("16000", "8000"),
    "mp3": ("64", "32"),
    "vorbis": ("low",),
    "white_noise": ("20", "10", "0"),
    "pink_noise": ("20", "10", "0"),
    "background": ("20", "10", "0"),
    "level": ("-30", "+20"),
    "reverb": ("small", "hall"),
    "truncate": ("2", "1"),
}
"""Family → severities, mildest first. ``background`` needs a folder of noise recordings."""

ROOMS = {"small": ((4.0, 3.0, 2.5), 0.3), "hall": ((20.0, 15.0, 8.0), 1.5)}
"""Room dimensions (m) and reverberation time RT60 (s)."""


def parse_corruptions(names: str | None, noise_dir: str | None) -> list[Corruption]:
    """``"band_limit,mp3:32"`` → the corruptions named (a family means all its severities);
    ``None`` → all of them (``background`` only with a noise folder)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else \
        [f for f in CORRUPTIONS if f != "background" or noise_dir]
    out = []
    for name in wanted:
        family, _, severity = name.partition(":")
        if family not in CORRUPTIONS:
            raise ConfigError(f"corruptions={name}: unknown corruption {family!r}; choose from "
                              f"{', '.join(CORRUPTIONS)}")
        if severity and severity not in CORRUPTIONS[family]:
            raise ConfigError(f"corruptions={name}: severity {severity!r} out of range; "
                              f"{family} has {', '.join(CORRUPTIONS[family])}")
        if family == "background" and not noise_dir:
            raise ConfigError("corruptions=background: needs noise recordings (noise_dir, a folder of them)")
        out += [Corruption(family, s) for s in ([severity] if severity else CORRUPTIONS[family])]
    if not out:
        raise ConfigError("corruptions=: names no corruption")
    return list(dict.fromkeys(out))


def rms(wav: np.ndarray, floor_db: float = -60.0) -> float:
    """RMS over the 512-sample frames louder than ``floor_db`` dBFS (the sound, not the digital
    silence around it, which ESC-50 clips often have); the whole clip's RMS when none is."""
    frame = 512
    usable = wav[: len(wav) // frame * frame].astype(np.float64)
    if usable.size:
        power = (usable.reshape(-1, frame) ** 2).mean(axis=1)
        loud = power[power > 10 ** (floor_db / 10)]
        if loud.size:
            return float(np.sqrt(loud.mean()))
    return float(np.sqrt(np.mean(wav.astype(np.float64) ** 2))) if wav.size else 0.0


def add_at_snr(wav: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``wav`` plus ``noise`` scaled so that ``rms(wav) / rms(noise)`` is ``snr_db``."""
    level = rms(wav)
    if level == 0.0:
        return wav.copy()
    noise_rms = float(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
    scale = level / (10 ** (snr_db / 20)) / max(noise_rms, 1e-12)
    return (wav + scale * noise).astype(np.float32)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    return np.fft.irfft(spectrum, n).astype(np.float32)


def band_limit(wav: np.ndarray, sr: int, rate: int) -> np.ndarray:
    """Down to ``rate`` Hz and back to ``sr``, resampled as every decoded file is."""
    if rate >= sr:
        return wav.copy()
    back = resample(resample(wav, sr, rate), rate, sr)
    return np.pad(back, (0, max(0, len(wav) - len(back))))[: len(wav)].astype(np.float32)  # rounding


def codec(wav: np.ndarray, sr: int, fmt: str, level: float) -> np.ndarray:
    """Encoded and decoded by libsndfile (``fmt`` MP3 or OGG; ``level`` its compression level)."""
    buffer = io.BytesIO()
    if fmt == "MP3":
        sf.write(buffer, wav, sr, format="MP3", subtype="MPEG_LAYER_III", compression_level=level,
                 bitrate_mode="CONSTANT")
    else:
        sf.write(buffer, wav, sr, format="OGG", subtype="VORBIS", compression_level=level)
    buffer.seek(0)
    out, _ = sf.read(buffer, dtype="float32")
    out = out if out.ndim == 1 else out.mean(axis=1)
    return np.pad(out, (0, max(0, len(wav) - len(out))))[: len(wav)]  # encoders pad a little


def mp3_level(kbps: int) -> float:
    """libsndfile's MP3 compression level for a constant bit rate: levels 0..1 span 320..32
    kbit/s, and LAME takes the nearest standard rate."""
    return min((320 - kbps) / 288, 0.999)


@lru_cache(maxsize=64)
def room_impulse_response(dims: tuple[float, float, float], rt60: float, sr: int) -> np.ndarray:
    """The impulse response of a shoebox room of ``dims`` metres with reverberation time
    ``rt60`` seconds (pyroomacoustics' image-source model; source and microphone at fixed
    fractions of the room)."""
    import pyroomacoustics as pra

    absorption, max_order = pra.inverse_sabine(rt60, list(dims))
    shoebox = pra.ShoeBox(list(dims), fs=sr, materials=pra.Material(absorption),
                          max_order=min(max_order, 40))
    shoebox.add_source([dims[0] * 0.3, dims[1] * 0.4, min(1.5, dims[2] * 0.6)])
    shoebox.add_microphone([dims[0] * 0.7, dims[1] * 0.6, min(1.2, dims[2] * 0.5)])
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], dtype=np.float64)


def room_response(room: str, sr: int) -> np.ndarray:
    """The impulse response of one of :data:`ROOMS`."""
    dims, rt60 = ROOMS[room]
    return room_impulse_response(dims, rt60, sr)


def convolve(wav: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``wav`` through ``rir``, cut to its length, with its energy kept (reverberation, not a
    level change)."""
    from scipy.signal import fftconvolve

    wet = fftconvolve(wav.astype(np.float64), rir)[: len(wav)]
    level, wet_level = np.sqrt(np.mean(wav.astype(np.float64) ** 2)), np.sqrt(np.mean(wet ** 2))
    return (wet * (level / wet_level if wet_level > 0 else 1.0)).astype(np.float32)


class NoiseBank:
    """Background recordings from a folder, each at least ``seconds`` long (checked on their
    headers), decoded at the rate asked for when first needed."""

    def __init__(self, folder: str | Path | None, seconds: float) -> None:
        folder = Path(folder or "")
        if not folder.is_dir():
            raise ConfigError(f"noise_dir={folder}: not a folder")
        self.paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not self.paths:
            raise ConfigError(f"noise_dir={folder}: no audio files in it")
        for path in self.paths:
            with AudioFile(path) as audio:
                if audio.duration < seconds:
                    raise ConfigError(f"noise_dir={folder}: {path} is {audio.duration:.2f} s long, shorter "
                                      f"than a clip ({seconds:g} s)")

    @lru_cache(maxsize=64)  # noqa: B019  (a few recordings, kept for the bank's life)
    def decoded(self, index: int, sr: int) -> np.ndarray:
        return load_audio(self.paths[index], sr)

    def excerpt(self, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples at ``sr`` Hz from a recording and offset drawn from ``rng``."""
        noise = self.decoded(int(rng.integers(len(self.paths))), sr)
        if len(noise) < n:  # a truncated clip is shorter than the clip length checked above
            noise = np.tile(noise, -(-n // len(noise)))
        start = int(rng.integers(len(noise) - n + 1))
        return noise[start : start + n]


def corrupt(wav: np.ndarray, sr: int, corruption: Corruption, seed: int,
            noise: NoiseBank | None = None) -> np.ndarray:
    """``wav`` ``(samples,)`` at ``sr`` Hz under ``corruption``; the same seed, the same output.
    The length stays the same, except for ``truncate``."""
    rng = np.random.default_rng(seed)
    family, severity = corruption.family, corruption.severity
    makers: dict[str, Callable[[], np.ndarray]] = {
        "band_limit": lambda: band_limit(wav, sr, int(severity)),
        "mp3": lambda: codec(wav, sr, "MP3", mp3_level(int(severity))),
        "vorbis": lambda: codec(wav, sr, "OGG", 1.0),
        "white_noise": lambda: add_at_snr(wav, rng.standard_normal(len(wav)).astype(np.float32),
                                          float(severity)),
        "pink_noise": lambda: add_at_snr(wav, pink(len(wav), rng), float(severity)),
        "background": lambda: add_at_snr(wav, noise.excerpt(len(wav), sr, rng), float(severity)),
        "level": lambda: np.clip(wav * 10 ** (float(severity) / 20), -1.0, 1.0).astype(np.float32),
        "reverb": lambda: convolve(wav, room_response(severity, sr)),
        "truncate": lambda: wav[: int(float(severity) * sr)].copy(),
    }
    out = makers[family]()
    if not np.isfinite(out).all() or (family != "truncate" and len(out) != len(wav)):
        raise RuntimeError(f"corruption {corruption.name} gave a bad waveform")  # a bug, not the user's
    return out


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """The SNR of ``noisy`` against ``clean`` as :func:`add_at_snr` defines it."""
    noise = (noisy.astype(np.float64) - clean)
    return 20 * math.log10(rms(clean) / float(np.sqrt(np.mean(noise ** 2))))
