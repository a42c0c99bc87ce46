"""Batch transforms on the training device: random crop, SpecAugment, mixup, between-class
mixing. Plain torch, drawing from torch's generator, which training seeds per epoch."""

from __future__ import annotations

import torch

from escnet.config import TaskConfig
from escnet.transforms.features import Featurizer, log_mel


def _band_mask(batch: int, size: int, count: int, width: int, device: torch.device) -> torch.Tensor:
    """``(batch, size)`` bool: ``count`` bands per row, each ``U{0..width}`` wide at a uniform start."""
    widths = torch.randint(0, width + 1, (batch, count, 1), device=device)
    starts = (torch.rand(batch, count, 1, device=device) * (size - widths + 1)).long()
    pos = torch.arange(size, device=device)
    return ((pos >= starts) & (pos < starts + widths)).any(dim=1)


def random_crop(feats: torch.Tensor, frames: int) -> torch.Tensor:
    """A window of ``frames`` frames at a random offset in each example (torch's global RNG).

    ``(batch, n_mels, total_frames)`` → ``(batch, n_mels, frames)``; unchanged when ``frames``
    is 0 or not shorter than the input.
    """
    if not 0 < frames < feats.shape[-1]:
        return feats
    batch, n_mels, total = feats.shape
    offsets = torch.randint(0, total - frames + 1, (batch, 1), device=feats.device)
    index = offsets + torch.arange(frames, device=feats.device)  # (batch, frames)
    return feats.gather(2, index[:, None, :].expand(batch, n_mels, frames))


def spec_augment(feats: torch.Tensor, freq_masks: int, freq_width: int, time_masks: int,
                 time_width: int) -> torch.Tensor:
    """SpecAugment (Park et al., 2019) without time warping.

    Args:
        feats: log-mel ``(batch, n_mels, frames)``.
        freq_masks, freq_width: mel-bin masks per example, and the widest (bins).
        time_masks, time_width: frame masks per example, and the widest (frames).

    Returns:
        A masked copy. Masked cells take the example's mean log-mel rather than 0: 0 in log
        units is a loud power of 1.0, while the mean reads as neutral after normalisation.
    """
    batch, mels, frames = feats.shape
    mask = torch.zeros_like(feats, dtype=torch.bool)
    if freq_masks and freq_width:
        mask |= _band_mask(batch, mels, freq_masks, min(freq_width, mels), feats.device)[:, :, None]
    if time_masks and time_width:
        mask |= _band_mask(batch, frames, time_masks, min(time_width, frames), feats.device)[:, None, :]
    return torch.where(mask, feats.mean(dim=(1, 2), keepdim=True), feats)


def _mix_weights(batch: int, alpha: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example ``Beta(alpha, alpha)`` weights ``(batch,)`` and a partner permutation."""
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    lam = beta.sample((batch,)).to(device)
    return lam, torch.randperm(batch, device=device)


def mixup(x: torch.Tensor, targets: torch.Tensor, alpha: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """mixup (Zhang et al., 2018): ``λ x_i + (1 - λ) x_j`` with ``λ ~ Beta(alpha, alpha)`` per example.

    Args:
        x: a batch ``(batch, ...)``, e.g. log-mels ``(batch, n_mels, frames)``.
        targets: class probabilities ``(batch, classes)`` (rows sum to 1).

    Returns:
        Mixed ``x`` and targets mixed with the same weights (rows still sum to 1).
    """
    lam, perm = _mix_weights(len(x), alpha, x.device)
    lx = lam.view(-1, *[1] * (x.dim() - 1))
    lt = lam[:, None]
    return lx * x + (1 - lx) * x[perm], lt * targets + (1 - lt) * targets[perm]


def between_class_mix(wav: torch.Tensor, targets: torch.Tensor, alpha: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Between-class mixing of waveforms (Tokozume, Ushiku & Harada, 2018).

    Targets mix with ``r ~ Beta(alpha, alpha)``; the waveforms with a weight ``p`` that corrects
    for loudness, so a quiet sound keeps the share ``r`` of what is heard:
    ``p = 1 / (1 + 10^((g1 - g2) / 20) (1 - r) / r)``, ``mix = (p x1 + (1 - p) x2) / √(p² + (1 - p)²)``,
    with ``g`` each clip's RMS level in dB (the paper uses A-weighted maxima; plain RMS is
    cheaper and close for 5 s clips).

    Args:
        wav: ``(batch, samples)``; targets: ``(batch, classes)``.
    """
    r, perm = _mix_weights(len(wav), alpha, wav.device)
    r = r.clamp(1e-3, 1 - 1e-3)
    gain = 10 * torch.log10(wav.square().mean(dim=1).clamp_min(1e-10))
    p = 1 / (1 + 10 ** ((gain - gain[perm]) / 20) * (1 - r) / r)
    pw = p[:, None]
    mixed = (pw * wav + (1 - pw) * wav[perm]) / torch.sqrt(pw**2 + (1 - pw) ** 2)
    rt = r[:, None]
    return mixed, rt * targets + (1 - rt) * targets[perm]


def band_limit_mels(feats: torch.Tensor, centers_hz: torch.Tensor, floor: float,
                    cutoff_hz: torch.Tensor) -> torch.Tensor:
    """The log-mel of audio that lost everything above ``cutoff_hz`` ``(batch,)`` (a lower
    sample rate, a phone, a codec): bands whose centre ``centers_hz`` ``(n_mels,)`` lies above
    the cutoff are set to ``floor``, the log-mel of silence. ``(batch, n_mels, frames)`` in and
    out; a cutoff of ``inf`` keeps the example whole."""
    above = centers_hz[None, :] > cutoff_hz[:, None]
    return feats.masked_fill(above[:, :, None], floor)


class BatchAugment:
    """The config's batch transforms, in training order: waveform mixing before the features,
    random crop, band limit, SpecAugment then mixup after them. Targets are class probabilities
    ``(batch, classes)``."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        if config.augment.band_limit_mels > 0:  # the bands' centre frequencies and silence's level
            featurizer = Featurizer.from_config(config)
            self.centers = featurizer.mel_basis.argmax(dim=1) * (config.data.sample_rate / featurizer.n_fft)
            self.floor = float(log_mel(torch.zeros(()), featurizer.frontend, featurizer.log_floor))

    def waveforms(self, wav: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config.augment
        if c.mixup_alpha > 0 and c.mixup_mode == "waveform":
            return between_class_mix(wav, targets, c.mixup_alpha)
        return wav, targets

    def features(self, feats: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config.augment
        feats = random_crop(feats, self.config.crop_frames)
        if c.band_limit_mels > 0:
            n = len(feats)
            low, high = c.band_limit_hz
            cutoff = (low + (high - low) * torch.rand(n, device=feats.device)) / 2
            keep = torch.rand(n, device=feats.device) >= c.band_limit_mels
            cutoff = cutoff.masked_fill(keep, float("inf"))
            feats = band_limit_mels(feats, self.centers.to(feats.device), self.floor, cutoff)
        if c.spec_augment:
            feats = spec_augment(feats, c.freq_masks, c.freq_mask_width, c.time_masks,
                                 c.time_mask_width)
        if c.mixup_alpha > 0 and c.mixup_mode == "features":
            feats, targets = mixup(feats, targets, c.mixup_alpha)
        return feats, targets
