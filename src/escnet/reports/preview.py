"""Hear and see what training sees: a clip under each augmentation, as audio and log-mel images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from escnet.config import WAVEFORM_TRANSFORMS, TaskConfig
from escnet.data.audio import load_audio
from escnet.files import command_folder
from escnet.reports.plots import save_logmel
from escnet.transforms.batch import spec_augment
from escnet.transforms.features import Featurizer
from escnet.transforms.waveform import WaveformAugment


def preview(path: str | Path, out_dir: str | Path, config: TaskConfig) -> list[Path]:
    """Write ``NN-NAME.wav`` and ``NN-NAME.png`` (log-mel) to ``out_dir`` for the clip at
    ``path`` unchanged, under every waveform transform (settings from ``config``) and under
    SpecAugment, so a user can hear and see what training sees (``out_dir``: new, empty or a
    preview's before, :func:`~escnet.files.command_folder`). Returns the files written."""
    rate, hop, a = config.data.sample_rate, config.features.hop_length, config.augment
    wav = load_audio(path, rate, config.length_wav)
    out_dir = command_folder(out_dir, "out", "augment-preview")
    featurizer = Featurizer.from_config(config)

    def logmel(samples: np.ndarray) -> torch.Tensor:  # (n_mels, frames)
        with torch.no_grad():
            return featurizer(torch.from_numpy(samples)[None])[0][0]

    versions = {"original": wav}
    every = config.replace({"augment.policy": "each", "augment.p": 1.0}).augment
    for i, name in enumerate(WAVEFORM_TRANSFORMS):
        versions[name] = WaveformAugment(every, rate, [name])(wav.copy(), config.train.seed, i)
    written = []
    for i, (name, samples) in enumerate(versions.items()):
        stem = out_dir / f"{i:02d}-{name}"
        sf.write(stem.with_suffix(".wav"), np.clip(samples, -1, 1), rate)
        save_logmel(logmel(samples).numpy(), stem.with_suffix(".png"), f"{Path(path).name}: {name}",
                    rate, hop)
        written += [stem.with_suffix(".wav"), stem.with_suffix(".png")]
    torch.manual_seed(config.train.seed)
    masked = spec_augment(logmel(wav)[None], a.freq_masks, a.freq_mask_width, a.time_masks,
                          a.time_mask_width)[0]
    stem = out_dir / f"{len(versions):02d}-spec_augment"
    save_logmel(masked.numpy(), stem.with_suffix(".png"), f"{Path(path).name}: spec_augment",
                rate, hop)
    return [*written, stem.with_suffix(".png")]
