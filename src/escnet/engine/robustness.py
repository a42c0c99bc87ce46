"""``escnet robustness RUN``: each finished fold's model on its own held-out clips under graded
corruptions (:mod:`escnet.transforms.corruptions`).

A clip takes the path real input takes: decoded at its own rate, corrupted there, resampled
to the model's rate (soxr, as :func:`escnet.data.audio.load_audio`) and padded or cropped to a
clip; the clean row takes the same path, so it equals ``escnet evaluate``. The log-mels of
every corrupted clip are cached (``robust-<key>.npy`` next to the waveform cache; the key covers
the clips, the corruption, the seed and the features), so a second call costs only inference.

Writes ``robustness.json``, ``robustness.csv`` and ``robustness.png`` (a heat map of accuracy
by corruption and severity) into the run (or ``out``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from escnet.config import TaskConfig
from escnet.data.audio import AudioFile, fix_length, resample
from escnet.data.cache import cache_key, cache_root
from escnet.data.tables import ClipTable, make_splits
from escnet.engine.data import eval_loader
from escnet.engine.evaluate import predict_loader
from escnet.files import atomic_memmap, make_output_dir
from escnet.machine import available_cores
from escnet.reports.plots import save_robustness
from escnet.runs import RunData, RunDir, mean_std
from escnet.transforms.corruptions import Corruption, NoiseBank, corrupt, parse_corruptions
from escnet.transforms.features import Featurizer

CLEAN = Corruption("clean", "")
VERSION = 1
"""Part of the cache key: bump it when a corruption changes."""


class _Corrupted(Dataset):
    """Clip ``clips[i]`` decoded, corrupted with seed ``(seed, i)``, resampled and fixed to a
    clip: run by DataLoader workers, one per core."""

    def __init__(self, paths: list[Path], corruption: Corruption, seed: int, config: TaskConfig,
                 noise: NoiseBank | None) -> None:
        self.paths, self.corruption, self.seed = paths, corruption, seed
        self.config, self.noise = config, noise

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        with AudioFile(self.paths[i]) as audio:
            wav, sr = audio.read(), audio.sample_rate
        if self.corruption != CLEAN:
            wav = corrupt(wav, sr, self.corruption, self.seed * 1_000_003 + i, self.noise)
        return fix_length(resample(wav, sr, self.config.data.sample_rate), self.config.length_wav)


def _features(table: ClipTable, indices: np.ndarray, corruption: Corruption, config: TaskConfig,
              seed: int, noise: NoiseBank | None, noise_key: str, progress: bool) -> np.ndarray:
    """Log-mels ``(len(indices), n_mels, frames)`` of the corrupted clips, from the cache or made."""
    text = json.dumps({"v": VERSION, "clips": cache_key(table.select(np.isin(np.arange(len(table)), indices)),
                                                         config.data.sample_rate, config.length_wav),
                       "corruption": corruption.name, "seed": seed, "noise": noise_key,
                       "features": Featurizer.from_config(config).settings},
                      sort_keys=True, default=str)
    path = cache_root(config) / f"robust-{hashlib.sha256(text.encode()).hexdigest()[:20]}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    featurizer = Featurizer.from_config(config)
    shape = (len(indices), config.features.n_mels, config.length)
    loader = DataLoader(_Corrupted([table.paths[i] for i in indices], corruption, seed, config, noise),
                        batch_size=16, num_workers=min(available_cores(), 8), collate_fn=np.stack)
    with atomic_memmap(path, shape) as array, torch.inference_mode():
        row = 0
        for batch in tqdm(loader, desc=f"corrupting: {corruption.name} (once)",
                          disable=not progress, unit="batch"):
            array[row : row + len(batch)] = featurizer(torch.from_numpy(batch))[0].numpy()
            row += len(batch)
    return np.load(path, mmap_mode="r")


def robustness(run_dir: str | Path, data_dir: str | None = None, corruptions: str | None = None,
               noise_dir: str | None = None, out: str | Path | None = None, seed: int = 0,
               progress: bool = True) -> dict:
    """Accuracy of every finished fold's model on its held-out clips, clean and under each
    corruption; the summary number is the mean accuracy over all corruptions. Returns what it
    writes to ``robustness.json``."""
    run = RunDir(run_dir)
    chosen = parse_corruptions(corruptions, noise_dir)
    folds = run.require_finished()
    data = RunData.of_run(run, data_dir, folds=folds)  # the table only: corrupted clips are decoded anew
    config, table = data.config, data.table
    noise, noise_key = None, ""
    if any(c.family == "background" for c in chosen):
        noise = NoiseBank(noise_dir, config.data.clip_seconds)
        noise_key = json.dumps([(str(p), p.stat().st_size) for p in noise.paths])
    target = RunDir(out) if out else run  # where the results go, made now: a bad --out fails first
    make_output_dir(target.path)
    device = torch.device(config.resolved_device())
    splits = {s.name: s.test for s in make_splits(table, config) if s.name in folds}
    indices = np.sort(np.concatenate(list(splits.values())))  # one order for one set: the cache key
    models = {name: run.load_model(name, "last", device)[0] for name in splits}
    labels = table.labels[indices]
    position = {clip: k for k, clip in enumerate(indices)}
    rows: dict[str, dict] = {}
    for corruption in [CLEAN, *chosen]:
        feats = torch.from_numpy(np.array(  # a copy in memory: the cache is read-only
            _features(table, indices, corruption, config, seed, noise, noise_key, progress)))
        per_fold = {}
        for name, test in splits.items():
            local = np.array([position[i] for i in test])
            logits, truth = predict_loader(models[name], eval_loader(feats, labels, local, config), device)
            per_fold[name] = float((logits.argmax(1) == truth).mean())
        mean, std = mean_std(list(per_fold.values()))
        rows[corruption.name] = {
            "family": corruption.family, "severity": corruption.severity, "accuracy": mean,
            "std": std, "folds": per_fold}
    clean = rows["clean"]["accuracy"]
    for row in rows.values():
        row["drop"] = clean - row["accuracy"]
    corrupted = [r["accuracy"] for name, r in rows.items() if name != "clean"]
    result = {"run": str(run.path), "model": config.model.name, "folds": list(splits), "seed": seed,
              "clips": len(indices), "clean": clean, "mean_corrupted": float(np.mean(corrupted)),
              "corruptions": rows}
    target.write_robustness(result)
    save_robustness(result, target.robustness_path(".png"))
    return result
