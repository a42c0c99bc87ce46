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
from escnet.metrics import Predictions
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


def to_predictions(logits: np.ndarray, labels: np.ndarray, paths: list[str], classes: list[str]
                   ) -> Predictions:
    """:class:`~escnet.metrics.Predictions` from logits ``(clips, classes)`` (or probabilities)."""
    probs = torch.from_numpy(logits).float().softmax(dim=1).numpy()
    return Predictions(paths, labels, probs.argmax(1), probs.max(1), classes)


@torch.inference_mode()
def predict_shifted(model: SoundClassifier, waves, indices: np.ndarray, shifts: int,
                    device: torch.device, batch_size: int = 32) -> np.ndarray:
    """Test-time averaging: mean log-probabilities over ``shifts`` circular time shifts
    (0, 1/shifts, ... of the clip) of each waveform ``(clips, samples)``. Returns ``(clips, classes)``."""
    model.eval()
    out = []
    for start in range(0, len(indices), batch_size):
        rows = torch.from_numpy(np.stack([np.asarray(waves[i], dtype=np.float32)
                                          for i in indices[start : start + batch_size]])).to(device)
        step = rows.shape[1] // shifts
        logp = [model(torch.roll(rows, k * step, dims=1)).float().log_softmax(1) for k in range(shifts)]
        out.append(torch.stack(logp).mean(0).cpu())
    return torch.cat(out).numpy()


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
                 progress: bool = True, tta: int = 0) -> dict:
    """Recompute each fold's held-out accuracy from its saved checkpoint; with ``tta`` > 1, also
    with test-time averaging over that many time shifts (reported separately).

    Writes each fold's ``predictions.csv`` (from ``last.pt``) if it is missing, and
    ``evaluation.json`` (the returned dict) into the run.

    Returns ``{"folds": {name: {"recorded", "accuracy", "loss", "epoch"[, "accuracy_tta"]}},
    "accuracy_mean", "accuracy_std"[, "accuracy_tta_mean", "accuracy_tta_std"]}``.
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
        preds_path = path.parent / "predictions.csv"
        if checkpoint == "last" and not preds_path.exists():
            to_predictions(logits, labels, [str(table.paths[i]) for i in test_idx],
                           table.classes).save(preds_path)
        if tta > 1:
            shifted = predict_shifted(model, waves, test_idx, tta, device)
            folds[name]["accuracy_tta"] = float((shifted.argmax(1) == labels).mean())
    if not folds:
        raise EscnetError(f"{run_dir}: no fold has a {checkpoint}.pt checkpoint yet")
    result: dict = {"checkpoint": checkpoint, "tta": tta, "folds": folds}
    for key in ("accuracy", "accuracy_tta") if tta > 1 else ("accuracy",):
        accs = [f[key] for f in folds.values()]
        result |= {f"{key}_mean": float(np.mean(accs)), f"{key}_std": float(np.std(accs))}
    (run_dir / "evaluation.json").write_text(json.dumps(result, indent=1))
    return result
