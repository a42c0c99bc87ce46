"""Evaluation: run a model over a loader, score it, and re-score a finished run's checkpoints."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from escnet.config import TaskConfig
from escnet.datasets import (
    build_waveform_cache,
    clip_dataset,
    collate,
    load_table,
    make_splits,
)
from escnet.errors import DataError, EscnetError
from escnet.models import SoundClassifier


@torch.inference_mode()
def predict_loader(model: SoundClassifier, loader: DataLoader, device: torch.device
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(clips, classes)`` and labels ``(clips,)`` of every batch of ``loader``."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        logits.append(model.forward_batch(batch, device).float().cpu())
        labels.append(batch["label"])
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def score(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Mean cross-entropy and accuracy (fraction) of ``logits`` against integer ``labels``."""
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {"loss": loss, "accuracy": float((logits.argmax(1) == labels).mean())}


def eval_loader(source, labels: np.ndarray, indices: np.ndarray, config: TaskConfig) -> DataLoader:
    """Unshuffled, unaugmented loader over ``indices`` of cached waveforms ``(clips, samples)``
    or precomputed features (a ``(clips, n_mels, frames)`` tensor)."""
    return DataLoader(clip_dataset(source, labels, indices), batch_size=config.batch_size,
                      shuffle=False, collate_fn=collate, num_workers=config.num_workers)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[SoundClassifier, TaskConfig, dict]:
    """A :class:`SoundClassifier` in eval mode from a checkpoint, with its config and the raw dict."""
    from escnet.config import from_dict

    path = Path(path)
    if not path.is_file():
        raise EscnetError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        config = from_dict(ckpt["config"], str(path))
    except (RuntimeError, KeyError, EOFError, OSError, pickle.UnpicklingError) as err:  # not ours, cut off
        raise EscnetError(f"{path}: not an escnet checkpoint ({str(err).splitlines()[0]})") from None
    # The checkpoint holds every weight: no need to fetch the pretrained ones it started from.
    model = SoundClassifier(config.replace(pretrained="")).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config, ckpt


def evaluate_run(run_dir: str | Path, data_dir: str | None = None, checkpoint: str = "last",
                 progress: bool = True) -> dict:
    """Recompute each fold's held-out accuracy from its saved checkpoint.

    Returns ``{"folds": {name: {"recorded": acc, "recomputed": acc}}, "accuracy_mean": ...}``.
    """
    from escnet.training import read_run_config

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    if data_dir:
        config = config.replace(data_dir=data_dir)
    summary_path = run_dir / "summary.json"
    recorded = json.loads(summary_path.read_text())["folds"] if summary_path.exists() else {}
    table = load_table(config)
    waves, table = build_waveform_cache(table, config, progress)
    device = torch.device(config.resolved_device())
    folds: dict[str, dict] = {}
    for name, _, test_idx in make_splits(table, config):
        path = run_dir / f"fold-{name}" / f"{checkpoint}.pt"
        if not path.exists():
            continue
        model, ckpt_config, ckpt = load_checkpoint(path, device)
        if ckpt["classes"] != table.classes:
            raise DataError(f"{config.data_dir}: its classes differ from those run {run_dir} was "
                            "trained on")
        logits, labels = predict_loader(model, eval_loader(waves, table.labels, test_idx,
                                                           ckpt_config), device)
        folds[name] = {"recorded": recorded.get(name), **score(logits, labels),
                       "epoch": ckpt["epoch"]}
    if not folds:
        raise EscnetError(f"{run_dir}: no fold has a {checkpoint}.pt checkpoint yet")
    accs = [f["accuracy"] for f in folds.values()]
    return {"checkpoint": checkpoint, "folds": folds, "accuracy_mean": float(np.mean(accs)),
            "accuracy_std": float(np.std(accs))}
