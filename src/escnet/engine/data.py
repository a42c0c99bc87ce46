"""What a training run draws its batches from: cached waveforms or log-mels, augmented copies,
and the seeded, shuffled (or class-balanced) loaders over them."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from escnet.config import TaskConfig
from escnet.data.cache import cache_key, cache_root
from escnet.data.datasets import PickCopies, class_balanced_sampler, clip_dataset, collate
from escnet.data.tables import ClipTable
from escnet.files import atomic_memmap
from escnet.models import SoundClassifier
from escnet.transforms.features import Featurizer, compute_features
from escnet.transforms.waveform import WaveformAugment


@dataclass
class TrainData:
    """What training batches are drawn from.

    ``clips``: the cached waveforms ``(clips, samples)`` or their log-mels
    ``(clips, n_mels, frames)``; the held-out fold is always scored on these. ``copies``: the
    same layout, augmented copies of every clip; when present, each epoch trains on one copy of
    each clip, drawn at random. ``augment``: waveform augmentation run per item (no copies).
    """

    clips: object
    copies: list = field(default_factory=list)
    augment: WaveformAugment | None = None


def prepare_data(waves, table: ClipTable, config: TaskConfig, progress: bool = True
                 ) -> tuple[TrainData, float, float]:
    """Augmented copies (if asked for), then log-mels computed once where nothing changes the
    waveforms between epochs. Returns the data and the seconds spent on copies and features."""
    a = config.augment
    tick = time.perf_counter()
    copies = augmented_copies(waves, table, config, progress) if a.waveform and a.copies > 0 else []
    augment_seconds = time.perf_counter() - tick
    if not config.train.feature_cache or config.waveform_augment:
        augment = (WaveformAugment(a, config.data.sample_rate) if a.waveform and not copies
                   else None)
        return TrainData(waves, copies, augment), augment_seconds, 0.0
    tick = time.perf_counter()
    device = torch.device(config.resolved_device())
    if embeddings_suffice(config):
        model = SoundClassifier.from_config(config)
        data = TrainData(frozen_embeddings(model, waves, table, config, device, progress),
                         [frozen_embeddings(model, c, table, config, device, progress, k)
                          for k, c in enumerate(copies)])
    else:
        featurizer = Featurizer.from_config(config)
        data = TrainData(compute_features(featurizer, waves, device),
                         [compute_features(featurizer, c, device) for c in copies])
    return data, augment_seconds, time.perf_counter() - tick


def embeddings_suffice(config: TaskConfig) -> bool:
    """Whether training can start from each clip's embedding, computed once: the model's trunk
    is frozen (``model.args.freeze``: the backbone then has ``embed``) and no batch transform
    needs log-mels (SpecAugment, crops). Mixup then mixes embeddings."""
    return (bool(config.model.args.get("freeze")) and not config.augment.spec_augment
            and config.crop_frames == 0)


def frozen_embeddings(model: SoundClassifier, waves, table: ClipTable, config: TaskConfig,
                      device: torch.device, progress: bool, copy: int | None = None) -> torch.Tensor:
    """The frozen trunk's embedding of every clip ``(clips, dim)``, cached on disk
    (``emb-<key>.npy`` next to the waveform cache) under the waveforms, the featurizer, the model
    and its pretrained weights (or augmented ``copy``), so later runs and folds reuse it."""
    text = json.dumps({"features": model.featurizer.settings, "model": config.model.name,
                       "args": config.model.args, "pretrained": config.model.pretrained,
                       "sha256": config.model.pretrained_sha256, "copy": copy,
                       "augment": config.augment.waveform_settings() if copy is not None else None},
                      sort_keys=True, default=str)
    base = cache_key(table, config.data.sample_rate, config.length_wav)
    path = cache_root(config) / f"emb-{hashlib.sha256(f'{base}:{text}'.encode()).hexdigest()[:20]}.npy"
    if not path.exists():
        model = model.to(device).eval()
        dim = model.backbone.embed_dim
        with atomic_memmap(path, (len(waves), dim)) as array, torch.inference_mode():
            for start in tqdm(range(0, len(waves), 32), desc="embeddings (once)", disable=not progress,
                              unit="batch"):
                rows = torch.from_numpy(np.array(waves[start : start + 32], dtype=np.float32)).to(device)
                array[start : start + len(rows)] = model.embed(rows).cpu().numpy()
    return torch.from_numpy(np.array(np.load(path, mmap_mode="r")))


def train_loader(data: TrainData, table: ClipTable, indices: np.ndarray, config: TaskConfig,
                 generator: torch.Generator, rank: int = 0, world: int = 1) -> DataLoader:
    """Shuffled (or class-balanced) loader over ``indices`` of the training clips.

    The order, the copy of each clip and the augmentation seeds all come from ``generator``
    here, before any worker starts, so they do not depend on ``num_workers``. Under DDP
    (``world`` > 1) every rank draws the same global order and takes its ``1/world`` of each
    global batch of ``train.batch_size``, so all ranks take the same number of steps.
    """
    source = data.clips
    if data.copies:
        choice = torch.randint(len(data.copies), (len(table),), generator=generator).numpy()
        source = PickCopies(data.copies, choice)
    # DataLoader draws a worker seed from its generator before shuffling; making the same draw
    # keeps the data order earlier escnet versions produced with num_workers=0.
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    if config.data.balanced_sampling:
        order = np.array(list(class_balanced_sampler(table.labels[indices], generator)))
    else:
        order = torch.randperm(len(indices), generator=generator).numpy()
    t = config.train
    sequence, batch, drop_last = indices[order], t.batch_size, len(indices) > t.batch_size
    if world > 1:
        whole = len(sequence) // batch * batch if drop_last else len(sequence)
        sequence = np.concatenate([sequence[b : b + batch][rank::world] for b in range(0, whole, batch)])
        batch, drop_last = (batch // world if drop_last else -(-whole // world)), False
    dataset = clip_dataset(source, table.labels, sequence, data.augment, generator.initial_seed())
    return DataLoader(dataset, batch_size=batch, shuffle=False, collate_fn=collate,
                      num_workers=t.num_workers, drop_last=drop_last)


def eval_loader(source, labels: np.ndarray, indices: np.ndarray, config: TaskConfig) -> DataLoader:
    """Unshuffled, unaugmented loader over ``indices`` of cached waveforms ``(clips, samples)``
    or precomputed features (a ``(clips, n_mels, frames)`` tensor)."""
    return DataLoader(clip_dataset(source, labels, indices), batch_size=config.train.batch_size,
                      shuffle=False, collate_fn=collate, num_workers=config.train.num_workers)


# --- augmented copies, computed once -------------------------------------------------------

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
    """``augment.copies`` augmented versions of every row of ``waves`` ``(clips, samples)``.

    Copy ``k`` of clip ``i`` uses seed ``(train.seed, k, i)``, so copies are cached on disk
    (``aug-<key>-<k>.npy`` next to the waveform cache) and shared by runs with the same data and
    waveform augmentation settings, whatever their number of copies. Disk: one waveform cache
    per copy.

    Returns:
        K memory-mapped ``(clips, samples)`` float32 arrays.
    """
    a = config.augment
    text = json.dumps({**a.waveform_settings(), "seed": config.train.seed}, sort_keys=True)
    if a.noise_dir:  # the noise files are part of it too
        text += json.dumps(sorted((str(p), p.stat().st_size)
                                  for p in Path(a.noise_dir).rglob("*") if p.is_file()))
    base = cache_key(table, config.data.sample_rate, config.length_wav)
    key = hashlib.sha256(f"{base}:{text}".encode()).hexdigest()[:20]
    augment = WaveformAugment(a, config.data.sample_rate)
    out = []
    for k in range(a.copies):
        path = cache_root(config) / f"aug-{key}-{k}.npy"
        if not path.exists():
            with atomic_memmap(path, tuple(waves.shape)) as array:
                # The main process only copies batches into the memmap: one worker per core.
                loader = DataLoader(_CopyJob(waves, augment, config.train.seed, k), batch_size=32,
                                    num_workers=os.cpu_count() or 1, collate_fn=np.stack)
                row = 0
                for batch in tqdm(loader, desc=f"augmented copy {k + 1}/{a.copies} (once)",
                                  disable=not progress, unit="batch"):
                    array[row : row + len(batch)] = batch
                    row += len(batch)
        out.append(np.load(path, mmap_mode="r"))
    return out
