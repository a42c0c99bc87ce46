"""Log-mel features, computed on a batch on the model's device."""

from __future__ import annotations

import librosa
import numpy as np
import torch
from torch import nn

from escnet.config import TaskConfig


class Featurizer(nn.Module):
    """Waveforms ``(batch, samples)`` → log-mel ``(batch, n_mels, frames)``.

    Matches ``log(max(librosa.feature.melspectrogram(...), log_floor))`` with a centred,
    zero-padded, periodic-Hann STFT, power 2 and Slaney mel filters. The filterbank comes from
    ``librosa.filters.mel`` so both agree by construction.

    Args:
        sample_rate: Hz.
        n_fft, win_length, hop_length: STFT sizes in samples.
        n_mels: mel bands.
        f_min, f_max: band edges in Hz (``f_max=None`` is ``sample_rate / 2``).
        log_floor: power floor before the natural log (1e-5 → -11.5).
    """

    def __init__(self, sample_rate: int = 44_100, n_fft: int = 1024, win_length: int = 1024,
                 hop_length: int = 256, n_mels: int = 64, f_min: float = 0.0,
                 f_max: float | None = None, log_floor: float = 1e-5) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.log_floor = log_floor
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
                                  fmax=f_max)
        # Buffers, so .to(device) moves them and checkpoints carry them.
        self.register_buffer("mel_basis", torch.from_numpy(mel), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.bands = mel_bands(mel)

    @classmethod
    def from_config(cls, config: TaskConfig) -> Featurizer:
        f = config.features
        return cls(config.data.sample_rate, f.n_fft, f.win_length, f.hop_length, f.n_mels, f.f_min,
                   f.f_max, f.log_floor)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frame count of a centred STFT for waveforms of ``lengths`` samples: ``len // hop + 1``."""
        return torch.div(lengths, self.hop_length, rounding_mode="floor") + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args: ``wav`` ``(batch, samples)``; ``lengths`` ``(batch,)`` valid samples per row.

        Returns: log-mel ``(batch, n_mels, frames)`` and ``(batch,)`` valid frames (or ``None``).
        """
        frames = self.frames(lengths) if lengths is not None else None
        if wav.device.type == "cpu" and len(wav) > 1:
            # One clip at a time keeps its spectrogram in the CPU cache: about 3× faster per clip
            # than the whole batch at once (benchmarks/featurizer_speed.py), same numbers.
            return torch.cat([self._logmel(w) for w in wav.split(1)]), frames
        return self._logmel(wav), frames

    def _logmel(self, wav: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wav.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (batch, n_fft // 2 + 1, frames)
        mel = power.new_empty(*power.shape[:-2], len(self.mel_basis), power.shape[-1])
        for first, last, lo, hi in self.bands:  # each group of filters times the bins it covers
            torch.matmul(self.mel_basis[first:last, lo:hi], power[..., lo:hi, :],
                         out=mel[..., first:last, :])
        return mel.clamp_min_(self.log_floor).log_()


def mel_bands(mel: np.ndarray, group: int = 4) -> list[tuple[int, int, int, int]]:
    """Split a filterbank ``(n_mels, n_freqs)`` into groups of ``group`` adjacent filters, each
    with the range of FFT bins where any of them is non-zero: ``(first, last, lo, hi)`` means
    filters ``first:last`` only need bins ``lo:hi``.

    Each mel filter is a triangle over a narrow range of bins (97 % of a 64 × 513 filterbank is
    zero), so multiplying each group by its own bins does under a tenth of the dense product's
    multiply-adds (``benchmarks/featurizer_speed.py`` times both).
    """
    out = []
    for first in range(0, len(mel), group):
        last = min(first + group, len(mel))
        cols = np.flatnonzero(mel[first:last].any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if len(cols) else (0, 1)
        out.append((first, last, lo, hi))
    return out


@torch.inference_mode()
def compute_features(featurizer: Featurizer, waves: np.ndarray, device: torch.device,
                     batch_size: int = 32) -> torch.Tensor:
    """Log-mels of every row of ``waves`` ``(clips, samples)``, on the CPU.

    Used to compute features once per run when nothing changes the waveforms between epochs.

    Returns:
        ``(clips, n_mels, frames)`` float32.
    """
    featurizer = featurizer.to(device)
    out = []
    for start in range(0, len(waves), batch_size):
        rows = np.array(waves[start : start + batch_size], dtype=np.float32)  # copy off the memmap
        out.append(featurizer(torch.from_numpy(rows).to(device))[0].cpu())
    return torch.cat(out)
