"""PyTorch datasets over cached clips: items, batching and class-balanced sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset, WeightedRandomSampler


class WaveformDataset(Dataset):
    """Items ``{"wav": (samples,) float32 tensor, "label": int}`` from cached waveforms.

    ``augment(samples, *seed_keys) → samples`` (a :class:`~escnet.transforms.WaveformAugment`) runs
    per item, in the DataLoader workers, seeded from ``(seed, clip index)`` so the result does
    not depend on which worker runs it.
    """

    def __init__(self, waves, labels: np.ndarray, indices: Sequence[int], augment=None,
                 seed: int = 0) -> None:
        self.waves, self.labels, self.indices = waves, labels, list(indices)
        self.augment, self.seed = augment, seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        wav = np.array(self.waves[j], dtype=np.float32)
        if self.augment is not None:
            wav = self.augment(wav, self.seed, j)
        return {"wav": torch.from_numpy(wav), "label": int(self.labels[j])}


class FeatureDataset(Dataset):
    """Items ``{"features": tensor, "label": int}`` from precomputed log-mels ``(n_mels,
    frames)`` or embeddings ``(dim,)``."""

    def __init__(self, features, labels: np.ndarray, indices: Sequence[int]) -> None:
        self.features, self.labels, self.indices = features, labels, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        j = self.indices[i]
        return {"features": self.features[j], "label": int(self.labels[j])}


class PickCopies:
    """One of several versions of each clip: ``view[i]`` is ``copies[choice[i]][i]``.

    ``copies`` are arrays or tensors of one layout, ``(clips, samples)`` or
    ``(clips, n_mels, frames)``; ``choice`` ``(clips,)`` says which copy each clip uses.
    """

    def __init__(self, copies: Sequence, choice: np.ndarray) -> None:
        self.copies, self.choice = copies, choice
        self.shape = tuple(copies[0].shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int):
        return self.copies[self.choice[i]][i]


def clip_dataset(source, labels: np.ndarray, indices: Sequence[int], augment=None,
                 seed: int = 0) -> Dataset:
    """A dataset over ``indices`` of cached waveforms ``(clips, samples)``, a NumPy array
    (optionally augmented, see :class:`WaveformDataset`), or of what a model computes from them
    once per run, a tensor: log-mels ``(clips, n_mels, frames)`` or a frozen trunk's embeddings
    ``(clips, dim)``."""
    first = source.copies[0] if isinstance(source, PickCopies) else source
    if isinstance(first, torch.Tensor):
        return FeatureDataset(source, labels, indices)
    return WaveformDataset(source, labels, indices, augment, seed)


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Batch a list of items.

    Waveform items are padded to the longest: ``wav`` ``(batch, samples)``, ``label``
    ``(batch,)`` and ``length`` ``(batch,)`` (valid samples of each row), as the report's
    Collator. Precomputed features (all one clip length) are stacked: ``features``
    ``(batch, n_mels, frames)`` and ``label``.
    """
    labels = torch.tensor([it["label"] for it in items], dtype=torch.long)
    if "features" in items[0]:
        return {"features": torch.stack([it["features"] for it in items]), "label": labels}
    return {
        "wav": pad_sequence([it["wav"] for it in items], batch_first=True),
        "label": labels,
        "length": torch.tensor([it["wav"].shape[0] for it in items], dtype=torch.long),
    }


def class_balanced_sampler(labels: np.ndarray, generator: torch.Generator | None = None
                           ) -> WeightedRandomSampler:
    """Sampler drawing each example with weight ``1 / count(its class)`` (with replacement), so
    every class is drawn equally often in expectation; one epoch is ``len(labels)`` draws."""
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=generator)


