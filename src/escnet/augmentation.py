"""Augmentation: waveform transforms per example, SpecAugment and mixup per batch.

Waveform transforms are audiomentations' (a maintained library with the phase-vocoder-free
signalsmith stretcher, ~20 ms per 5 s clip for a time stretch or pitch shift) behind escnet's
config names. audiomentations draws from Python's and NumPy's global generators, so
:class:`WaveformAugment` seeds those from an explicit per-example seed and restores them
afterwards: the same seed gives the same output in any process, which makes an epoch's
augmentation independent of how many DataLoader workers run it.

Batch transforms (:func:`spec_augment`, :func:`mixup`, :func:`between_class_mix`) are plain
torch on the training device, drawing from torch's generator that training seeds per epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import audiomentations as am
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from escnet.config import TaskConfig, cache_root
from escnet.datasets import ClipTable, cache_key
from escnet.errors import ConfigError, make_output_dir

Transform = Callable[[np.ndarray, int], np.ndarray]  # (samples,) float32, sample rate → same
# Spectral slope of coloured noise, dB per octave (audiomentations' f_decay).
NOISE_DECAY = {"white": 0.0, "pink": -3.01, "brown": -6.02}


class _Clipped:
    """Run ``transform`` then clip to [-1, 1] (the report's Gaussian noise)."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.clip(self.transform(samples, sample_rate), -1.0, 1.0)


def make_transform(name: str, config: TaskConfig) -> Transform:
    """The waveform transform ``name`` (one of ``config.WAVEFORM_AUGMENTS``), always applied,
    with its ranges from ``config``. Every transform keeps the number of samples."""
    if name == "gaussian_noise":
        return _Clipped(am.AddGaussianNoise(config.noise_std, config.noise_std, p=1.0))
    if name == "time_stretch":
        return am.TimeStretch(*config.time_stretch_rate, leave_length_unchanged=True, p=1.0)
    if name == "pitch_shift":
        return am.PitchShift(*config.pitch_shift_semitones, p=1.0)
    if name == "gain":
        return am.Gain(*config.gain_db, p=1.0)
    if name == "time_shift":
        return am.Shift(-config.shift_max, config.shift_max, shift_unit="fraction",
                        rollover=config.shift_mode == "circular", p=1.0)
    if name == "background_noise":
        lo, hi = config.snr_db
        if config.path2noise:
            try:  # a random excerpt (random offset) of a random file, at an SNR in [lo, hi] dB
                return am.AddBackgroundNoise(config.path2noise, lo, hi, p=1.0)
            except AssertionError:
                raise ConfigError(f"setting path2noise={config.path2noise!r}: no audio files in "
                                  "it") from None
        return am.OneOf([am.AddColorNoise(lo, hi, min_f_decay=NOISE_DECAY[c],
                                          max_f_decay=NOISE_DECAY[c], p=1.0)
                         for c in config.noise_colors])
    raise ConfigError(f"setting augment: unknown transform {name!r}")


@contextlib.contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global generators for a block, then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class WaveformAugment:
    """``augment(samples (n,) float32, *seed_keys) → (n,) float32``: the config's waveform policy.

    ``seed_keys`` are integers (e.g. epoch seed and clip index) mixed into one seed, so equal
    keys give equal outputs in any process.

    ``augment_policy=one`` draws one of ``augment`` or the identity, each with probability
    ``1 / (len(augment) + 1)`` (every transform reachable, unlike the report's index);
    ``each`` applies every transform independently with probability ``augment_p``.
    """

    def __init__(self, config: TaskConfig, names: list[str] | None = None) -> None:
        self.sample_rate = config.sample_rate
        self.policy, self.p = config.augment_policy, config.augment_p
        self.transforms = {n: make_transform(n, config) for n in (names or config.augment)}

    def choose(self, rng: np.random.Generator) -> list[str]:
        names = list(self.transforms)
        if self.policy == "one":
            k = int(rng.integers(len(names) + 1))
            return [] if k == len(names) else [names[k]]
        return [n for n in names if rng.random() < self.p]

    def __call__(self, samples: np.ndarray, *seed_keys: int) -> np.ndarray:
        rng = np.random.default_rng([k & 0xFFFFFFFF for k in seed_keys])
        chosen = self.choose(rng)
        if not chosen:
            return samples
        with _global_seed(int(rng.integers(2**32))):
            for name in chosen:
                samples = self.transforms[name](samples, self.sample_rate)
        return samples.astype(np.float32, copy=False)


# --- augmented copies, computed once -----------------------------------------------------------

_COPY_SETTINGS = ("augment", "augment_policy", "augment_p", "noise_std", "time_stretch_rate",
                  "pitch_shift_semitones", "gain_db", "snr_db", "noise_colors", "shift_max",
                  "shift_mode", "path2noise", "seed")


class _CopyJob(Dataset):
    """Clip ``i`` of copy ``k``, transformed with seed ``(seed, k, i)``; run by DataLoader workers."""

    def __init__(self, waves, augment: WaveformAugment, seed: int, copy: int) -> None:
        self.waves, self.augment, self.seed, self.copy = waves, augment, seed, copy

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> np.ndarray:
        wav = np.array(self.waves[i], dtype=np.float32)
        return self.augment(wav, self.seed, self.copy, i)


def augmented_copies(waves, table: ClipTable, config: TaskConfig, progress: bool = True
                     ) -> list[np.ndarray]:
    """``config.augment_copies`` augmented versions of every row of ``waves`` ``(clips, samples)``.

    Copy ``k`` of clip ``i`` uses seed ``(config.seed, k, i)``, so copies are cached on disk
    (``aug-<key>-<k>.npy`` next to the waveform cache) and shared by runs with the same data and
    augmentation settings, whatever their ``augment_copies``. Disk: one waveform cache per copy.

    Returns:
        K memory-mapped ``(clips, samples)`` float32 arrays.
    """
    settings = json.dumps({k: getattr(config, k) for k in _COPY_SETTINGS}, sort_keys=True)
    if config.path2noise:  # the noise files are part of what a copy is made of
        settings += json.dumps(sorted((str(p), p.stat().st_size)
                                      for p in Path(config.path2noise).rglob("*") if p.is_file()))
    base = cache_key(table, config.sample_rate, config.length_wav)
    key = hashlib.sha256(f"{base}:{settings}".encode()).hexdigest()[:20]
    augment = WaveformAugment(config)
    out = []
    for k in range(config.augment_copies):
        path = cache_root(config) / f"aug-{key}-{k}.npy"
        if not path.exists():
            partial = path.with_suffix(".partial.npy")
            array = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                              shape=tuple(waves.shape))
            # The main process only copies batches into the memmap: one worker per core.
            loader = DataLoader(_CopyJob(waves, augment, config.seed, k), batch_size=32,
                                num_workers=os.cpu_count() or 1, collate_fn=np.stack)
            row = 0
            for batch in tqdm(loader, desc=f"augmented copy {k + 1}/{config.augment_copies} (once)",
                              disable=not progress, unit="batch"):
                array[row : row + len(batch)] = batch
                row += len(batch)
            array.flush()
            del array
            partial.replace(path)
        out.append(np.load(path, mmap_mode="r"))
    return out


# --- batch transforms -------------------------------------------------------------------------

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
    batch, n_mels, total = feats.shape
    if not 0 < frames < total:
        return feats
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


class BatchAugment:
    """The config's batch transforms, in training order: waveform mixing before the features,
    random crop, SpecAugment then mixup after them. Targets are class probabilities
    ``(batch, classes)``."""

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    def waveforms(self, wav: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if c.mixup_alpha > 0 and c.mixup_mode == "waveform":
            return between_class_mix(wav, targets, c.mixup_alpha)
        return wav, targets

    def features(self, feats: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        feats = random_crop(feats, c.crop_frames)
        if c.spec_augment:
            feats = spec_augment(feats, c.freq_masks, c.freq_mask_width, c.time_masks,
                                 c.time_mask_width)
        if c.mixup_alpha > 0 and c.mixup_mode == "features":
            feats, targets = mixup(feats, targets, c.mixup_alpha)
        return feats, targets


# --- preview ----------------------------------------------------------------------------------

def preview(path: str | Path, out_dir: str | Path, config: TaskConfig) -> list[Path]:
    """Write ``NN-NAME.wav`` and ``NN-NAME.png`` (log-mel) to ``out_dir`` for the clip at
    ``path`` unchanged, under every waveform transform (settings from ``config``) and under
    SpecAugment, so a user can hear and see what training sees. Returns the files written."""
    import soundfile as sf

    from escnet.audio import load_audio
    from escnet.config import WAVEFORM_AUGMENTS
    from escnet.features import Featurizer
    from escnet.plots import save_logmel

    wav = load_audio(path, config.sample_rate, config.length_wav)
    out_dir = make_output_dir(out_dir)
    featurizer = Featurizer.from_config(config)

    def logmel(samples: np.ndarray) -> torch.Tensor:  # (n_mels, frames)
        with torch.no_grad():
            return featurizer(torch.from_numpy(samples)[None])[0][0]

    versions = {"original": wav}
    for i, name in enumerate(WAVEFORM_AUGMENTS):
        versions[name] = WaveformAugment(config.replace(augment_policy="each", augment_p=1.0),
                                         [name])(wav.copy(), config.seed, i)
    written = []
    for i, (name, samples) in enumerate(versions.items()):
        stem = out_dir / f"{i:02d}-{name}"
        sf.write(stem.with_suffix(".wav"), np.clip(samples, -1, 1), config.sample_rate)
        save_logmel(logmel(samples).numpy(), stem.with_suffix(".png"), f"{Path(path).name}: {name}",
                    config.sample_rate, config.hop_length)
        written += [stem.with_suffix(".wav"), stem.with_suffix(".png")]
    torch.manual_seed(config.seed)
    masked = spec_augment(logmel(wav)[None], config.freq_masks, config.freq_mask_width,
                          config.time_masks, config.time_mask_width)[0]
    stem = out_dir / f"{len(versions):02d}-spec_augment"
    save_logmel(masked.numpy(), stem.with_suffix(".png"), f"{Path(path).name}: spec_augment",
                config.sample_rate, config.hop_length)
    return [*written, stem.with_suffix(".png")]
