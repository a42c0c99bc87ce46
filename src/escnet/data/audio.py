"""Audio I/O: decode (soundfile), mix down to mono, resample (soxr), pad or crop.

All waveforms are ``float32`` NumPy arrays of shape ``(samples,)`` with values in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from escnet.errors import AudioError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".mp3")
"""Extensions escnet looks for, in order of preference when one stem has several files."""


def load_audio(path: str | Path, sample_rate: int, num_samples: int | None = None) -> np.ndarray:
    """Decode ``path`` to a mono waveform at ``sample_rate`` Hz.

    Channels are averaged (keeps the level, unlike a sum). With ``num_samples`` the result is
    padded with zeros at the end or cropped to exactly that many samples.

    Returns:
        ``(samples,)`` float32.

    Raises:
        AudioError: the file is missing, not audio, empty, truncated or holds NaN/inf.
    """
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path}: is a folder; give audio files (e.g. {path}/*.wav)")
    if not path.is_file():
        raise AudioError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        info = sf.info(str(path))
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AudioError(f"{path}: not a readable audio file ({reason})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: holds no audio samples (empty or header-only file)")
    # libsndfile decodes what is there of a cut-off file; for WAV it notes the shortfall as
    # "data : <declared> (should be <present>)" in its header dump.
    truncated = [ln for ln in info.extra_info.splitlines()
                 if ln.startswith("data") and "(should be" in ln]
    if truncated:
        raise AudioError(f"{path}: truncated file ({truncated[0].strip()} bytes); re-download it")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return fix_length(mono, num_samples) if num_samples is not None else mono


def fix_length(wav: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop the end so that ``wav`` has exactly ``num_samples`` samples."""
    if wav.shape[0] >= num_samples:
        return wav[:num_samples]
    return np.pad(wav, (0, num_samples - wav.shape[0]))


def windows(wav: np.ndarray, num_samples: int, hop: int | None = None) -> np.ndarray:
    """Cut ``wav`` into windows of ``num_samples`` for scoring audio of any length.

    A clip no longer than one window is zero-padded into one window. Longer audio gets windows
    every ``hop`` samples (default half a window), the last one aligned with the end so that
    nothing is dropped.

    Returns:
        ``(windows, num_samples)`` float32.
    """
    if wav.shape[0] <= num_samples:
        return fix_length(wav, num_samples)[None]
    hop = hop or num_samples // 2
    starts = list(range(0, wav.shape[0] - num_samples + 1, hop))
    if starts[-1] != wav.shape[0] - num_samples:
        starts.append(wav.shape[0] - num_samples)
    return np.stack([wav[s : s + num_samples] for s in starts])
