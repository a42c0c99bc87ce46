"""Log-mel features, computed on a batch on the model's device."""

from __future__ import annotations

import math

import librosa
import numpy as np
import torch
from torch import nn

from escnet.config import TaskConfig, frame_count

REVISION = 2
"""Bumped when the same settings come to compute other log-mels (2: the ``efficientat``
pre-emphasis drops the first sample, as upstream's), so no cache of the old ones is reused."""
FRONTENDS = ("logmel", "efficientat", "panns")
"""``logmel``: escnet's (librosa's Slaney mel bands, periodic Hann window, zero padding,
``log(max(mel, log_floor))``). ``efficientat``: the front-end EfficientAT's AudioSet weights were
trained with (pre-emphasis 0.97, symmetric Hann window, reflect padding, Kaldi mel bands,
``(log(mel + log_floor) + 4.5) / 5``). ``panns``: PANNs' (torchlibrosa's: escnet's mel bands and
window, reflect padding, decibels ``10 log10(max(mel, log_floor))``; PANNs use ``log_floor``
1e-10)."""


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Kaldi's triangular mel filterbank ``(n_mels, n_fft // 2 + 1)`` (the Nyquist bin's column zero).

    On Kaldi's mel scale ``m(f) = 1127 ln(1 + f / 700)``, ``n_mels + 2`` edges are spaced
    evenly from ``m(f_min)`` to ``m(f_max)``; band ``b`` rises from edge ``b`` to ``b + 1`` and
    falls to ``b + 2``, as a triangle in mel (not in Hz) over the FFT bins' centre frequencies
    ``k · sample_rate / n_fft`` for ``k < n_fft / 2``. Filters are not area-normalised.
    (Kaldi's ``MelBanks``, as ``torchaudio.compliance.kaldi.get_mel_banks`` with no VTLN warp.)
    """
    def mel(f):
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    lo, hi = mel(f_min), mel(f_max)
    delta = (hi - lo) / (n_mels + 1)
    left = lo + np.arange(n_mels)[:, None] * delta
    center, right = left + delta, left + 2 * delta
    bins = mel(np.arange(n_fft // 2) * sample_rate / n_fft)[None]
    banks = np.maximum(0.0, np.minimum((bins - left) / (center - left), (right - bins) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


class Featurizer(nn.Module):
    """Waveforms ``(batch, samples)`` → log-mel ``(batch, n_mels, frames)``.

    ``frontend="logmel"`` matches ``log(max(librosa.feature.melspectrogram(...), log_floor))``
    with a centred, zero-padded, periodic-Hann STFT, power 2 and Slaney mel filters (from
    ``librosa.filters.mel``, so both agree by construction). ``frontend="efficientat"`` is the
    front-end of EfficientAT's pretrained models: pre-emphasis ``x[t] - 0.97 x[t-1]`` (with
    ``x[-1] = 0``, so every front-end gives ``samples // hop + 1`` frames; upstream drops the
    first sample instead, which moves its frames by one sample), a centred, reflect-padded STFT
    with a symmetric Hann window, power 2, Kaldi mel bands (:func:`kaldi_mel_banks`), then
    ``(log(mel + log_floor) + 4.5) / 5``.

    It carries the audio settings of the model it feeds (``sample_rate``, ``clip_samples``):
    deployment reads them from the model, not from a config.

    Args:
        sample_rate: Hz the waveforms must have.
        clip_samples: samples of the clips the model was trained on (windows of new audio).
        n_fft, win_length, hop_length: STFT sizes in samples.
        n_mels: mel bands.
        f_min, f_max: band edges in Hz (``f_max=None`` is ``sample_rate / 2``).
        log_floor: power floor (``logmel``) or offset (``efficientat``) before the natural log.
        frontend: one of :data:`FRONTENDS`.
    """

    def __init__(self, sample_rate: int = 44_100, clip_samples: int = 220_500, n_fft: int = 1024,
                 win_length: int = 1024, hop_length: int = 256, n_mels: int = 64,
                 f_min: float = 0.0, f_max: float | None = None, log_floor: float = 1e-5,
                 frontend: str = "logmel") -> None:
        super().__init__()
        if frontend not in FRONTENDS:
            raise ValueError(f"frontend {frontend!r}: one of {', '.join(FRONTENDS)}")
        self.sample_rate, self.clip_samples = sample_rate, clip_samples
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.log_floor, self.frontend = log_floor, frontend
        self.settings = {"sample_rate": sample_rate, "clip_samples": clip_samples, "n_fft": n_fft,
                         "win_length": win_length, "hop_length": hop_length, "n_mels": n_mels,
                         "f_min": f_min, "f_max": f_max, "log_floor": log_floor, "frontend": frontend,
                         "revision": REVISION}
        """Every argument, and :data:`REVISION`: two featurizers with equal settings compute the
        same log-mels (caches of log-mels and embeddings are keyed by them)."""
        kaldi = frontend == "efficientat"
        self.preemphasis = 0.97 if kaldi else 0.0
        self.pad_mode = "constant" if frontend == "logmel" else "reflect"
        mel = (kaldi_mel_banks(n_mels, n_fft, sample_rate, f_min, f_max or sample_rate / 2) if kaldi
               else librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max))
        # Buffers, so .to(device) moves them and checkpoints carry them.
        self.register_buffer("mel_basis", torch.from_numpy(mel), persistent=False)
        self.register_buffer("window", torch.hann_window(win_length, periodic=not kaldi),
                             persistent=False)
        self.bands = mel_bands(mel)

    @classmethod
    def from_config(cls, config: TaskConfig) -> Featurizer:
        f = config.features
        return cls(config.data.sample_rate, config.length_wav, f.n_fft, f.win_length, f.hop_length,
                   f.n_mels, f.f_min, f.f_max, f.log_floor, f.frontend)

    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of waveforms of ``lengths`` samples (:func:`~escnet.config.frame_count`)."""
        return frame_count(lengths, self.hop_length, self.frontend)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Args: ``wav`` ``(batch, samples)``; ``lengths`` ``(batch,)`` valid samples per row.

        Returns: log-mel ``(batch, n_mels, frames)`` and ``(batch,)`` valid frames (or ``None``).
        """
        frames = self.frames(lengths) if lengths is not None else None
        if wav.device.type == "cpu" and len(wav) > 1:
            # One clip at a time keeps its spectrogram in the CPU cache: faster per clip than the
            # whole batch at once, same numbers (benchmarks/featurizer_speed.py; docs/RESULTS.md).
            return torch.cat([self._logmel(w) for w in wav.split(1)]), frames
        return self._logmel(wav), frames

    def _logmel(self, wav: torch.Tensor) -> torch.Tensor:
        wav = emphasise(wav.float(), self.preemphasis)
        spec = torch.stft(wav, self.n_fft, self.hop_length, self.win_length, self.window,
                          center=True, pad_mode=self.pad_mode, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (batch, n_fft // 2 + 1, frames)
        mel = power.new_empty(*power.shape[:-2], len(self.mel_basis), power.shape[-1])
        for first, last, lo, hi in self.bands:  # each group of filters times the bins it covers
            torch.matmul(self.mel_basis[first:last, lo:hi], power[..., lo:hi, :],
                         out=mel[..., first:last, :])
        return log_mel(mel, self.frontend, self.log_floor)


def emphasise(wav: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Pre-emphasis of ``(batch, samples)``: ``y[t] = x[t+1] - coefficient · x[t]``, ``(batch,
    samples - 1)``, as EfficientAT's ``conv1d`` with the kernel ``[-coefficient, 1]`` computes
    it; the waveform itself for ``coefficient`` 0."""
    if coefficient == 0:
        return wav
    return wav[:, 1:] - coefficient * wav[:, :-1]


def log_mel(mel: torch.Tensor, frontend: str, log_floor: float) -> torch.Tensor:
    """The log of mel power as ``frontend`` takes it: floored (``logmel``), in floored decibels
    (``panns``), or offset and scaled to about zero mean and unit spread, ``(log(mel +
    log_floor) + 4.5) / 5`` (``efficientat``)."""
    if frontend == "logmel":
        return mel.clamp_min(log_floor).log()
    if frontend == "panns":
        return 10 * mel.clamp_min(log_floor).log10()
    return ((mel + log_floor).log() + 4.5) / 5


class MatmulLogMel(nn.Module):
    """The log-mel of a :class:`Featurizer`, computed with matrix products only: the form an
    ONNX graph can hold and ONNX Runtime runs fast (its STFT operator took about half of a
    clip's time: docs/RESULTS.md, "Inference speed").

    Same numbers as the featurizer it is built from (float32 rounding apart: about 1e-6 in
    log-mel units): frames are cut with slices and transformed by a two-stage Cooley–Tukey
    DFT, ``n_fft = n1 · n2`` (sample ``n = n2·j1 + j2``, bin ``k = k1 + n1·k2``):

    1. for each ``j2``, one ``(n1, n1)`` complex matrix (as two real ones) applied to all
       frames at once: the window, the ``n1``-point DFT over ``j1`` and the twiddle factors
       ``exp(-2πi·j2·k1 / n_fft)``;
    2. one real ``(2·k2, 2·n2)`` matrix, the ``n2``-point DFT over ``j2`` for the
       ``k2 = n2 // 2 + 1`` values that reach ``k ≤ n_fft / 2``, applied to every frame's
       every ``k1`` at once;
    3. the power's mel filterbank, its rows reordered to the ``(k2, k1)`` bin order.

    That is ``2·n_fft·(n1 + n2)`` multiply-adds a frame instead of a dense DFT's ``n_fft²``
    (8× fewer at 1024), as three large matrix products (which run near the core's peak rate)
    with no complex arithmetic between them. ``(batch, samples)`` → ``(batch, n_mels,
    frames)``, as many frames as the featurizer gives.
    """

    def __init__(self, featurizer: Featurizer) -> None:
        super().__init__()
        n, hop = featurizer.n_fft, featurizer.hop_length
        self.n_fft, self.hop_length, self.log_floor = n, hop, featurizer.log_floor
        self.frontend, self.preemphasis = featurizer.frontend, featurizer.preemphasis
        self.pad_mode = featurizer.pad_mode
        self.n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        self.n1, self.n2 = n // self.n1, self.n1  # n1 ≥ n2; both 1 only if n_fft is 1
        self.k2 = self.n2 // 2 + 1
        j1, j2, k2 = np.arange(self.n1), np.arange(self.n2), np.arange(self.k2)
        window = np.zeros(n)  # torch.stft centres a shorter window in the frame
        left = (n - featurizer.win_length) // 2
        window[left : left + featurizer.win_length] = featurizer.window.double().cpu().numpy()
        # stage 1, [j2, j1, k1]: window, DFT over j1 and twiddle, all depending on j2
        stage1 = (window.reshape(self.n1, self.n2).T[:, :, None]
                  * np.exp(-2j * np.pi * np.outer(j1, j1) / self.n1)[None]
                  * np.exp(-2j * np.pi * np.outer(j2, j1) / n)[:, None, :])
        # stage 2, [(re|im) k2, (re|im) j2]: with exp(-iθ) = C - iS, Re = C·re + S·im and
        # Im = C·im - S·re
        theta = 2 * np.pi * np.outer(k2, j2) / self.n2
        cos, sin = np.cos(theta), np.sin(theta)
        bins = (self.n1 * k2[:, None] + j1[None]).reshape(-1)  # (k2, k1) → bin
        mel = featurizer.mel_basis.double().cpu().numpy()  # (n_mels, n_fft // 2 + 1)
        mel_rows = np.zeros((len(bins), len(mel)))
        mel_rows[bins <= n // 2] = mel.T[bins[bins <= n // 2]]
        for name, value in {
            "stage1": np.stack([stage1.real, stage1.imag]),
            "stage2": np.block([[cos, sin], [-sin, cos]]),
            "mel_rows": mel_rows,
        }.items():
            self.register_buffer(name, torch.from_numpy(value).float(), persistent=False)

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        """Centred, zero-padded frames ``(batch, frames, n_fft)``, cut with slices: the signal
        in blocks of ``gcd(n_fft, hop)`` samples, each frame a run of consecutive blocks."""
        n, hop = self.n_fft, self.hop_length
        count = wav.shape[1] // hop + 1
        padded = torch.nn.functional.pad(wav[:, None], (n // 2, n // 2), mode=self.pad_mode)[:, 0]
        padded = padded[:, : (count - 1) * hop + n]
        block = math.gcd(n, hop)
        blocks = padded.reshape(wav.shape[0], -1, block)
        step, per_frame = hop // block, n // block
        return torch.cat([blocks[:, j : j + step * (count - 1) + 1 : step]
                          for j in range(per_frame)], dim=-1)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav`` ``(batch, samples)`` → log-mel ``(batch, n_mels, frames)``."""
        frames = self.frames(emphasise(wav.float(), self.preemphasis))
        batch, count = frames.shape[:2]
        n1, n2, k2 = self.n1, self.n2, self.k2
        x = frames.reshape(batch * count, n1, n2).permute(2, 0, 1)  # [j2, frame, j1]
        a = torch.matmul(x, self.stage1)  # [re|im, j2, frame, k1]
        y = torch.matmul(self.stage2, a.reshape(2 * n2, -1))  # [(re|im) k2, (frame, k1)]
        y = y * y
        power = y[:k2] + y[k2:]  # [k2, (frame, k1)]
        power = power.reshape(k2, batch * count, n1).transpose(0, 1).reshape(batch * count, k2 * n1)
        mel = torch.matmul(power, self.mel_rows).reshape(batch, count, -1)
        return log_mel(mel.transpose(1, 2), self.frontend, self.log_floor)


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
