"""Evaluation: run a model over a loader, score it, and re-score a finished run's checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from escnet.engine.data import eval_loader
from escnet.errors import EscnetError
from escnet.models import SoundClassifier
from escnet.runs import Predictions, RunData, RunDir, mean_std

log = logging.getLogger("escnet")


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


def ensure_predictions(run: RunDir) -> None:
    """Write the held-out predictions of a run made before escnet saved them, from each
    finished fold's ``last.pt`` (needs the data); when that cannot be done (the data is not on
    this machine) the run is left as it is, with a warning, and reports go without them."""
    if run.predictions() is None and run.finished and all(run.checkpoint(f).exists() for f in run.finished):
        try:
            evaluate_run(run.path, progress=False)
        except EscnetError as err:
            log.warning("%s: no held-out predictions (%s)", run.path, err)


def evaluate_run(run_dir: str | Path, data_dir: str | None = None, checkpoint: str = "last",
                 progress: bool = True, tta: int = 0) -> dict:
    """Recompute each fold's held-out accuracy from its saved checkpoint; with ``tta`` > 1, also
    with test-time averaging over that many time shifts (reported separately).

    Writes each fold's ``predictions.csv`` (from ``last.pt``) if it is missing, and
    ``evaluation.json`` (the returned dict) into the run.

    Returns ``{"folds": {name: {"recorded", "accuracy", "loss", "epoch"[, "accuracy_tta"]}},
    "accuracy_mean", "accuracy_std"[, "accuracy_tta_mean", "accuracy_tta_std"]}``.
    """
    if tta < 0 or tta == 1:
        raise EscnetError(f"tta={tta}: give the number of shifted windows, 2 or more (0: off)")
    run = RunDir(run_dir)
    run.read_config()  # a folder that is not a run says so first
    have = [f for f in run.fold_names() if run.checkpoint(f, checkpoint).exists()]
    if not have:
        raise EscnetError(f"{run.path}: no fold has a {checkpoint}.pt checkpoint yet")
    data = RunData.of_run(run, data_dir, progress, have)
    config, table, waves = data.config, data.table, data.waves
    device = torch.device(config.resolved_device())
    recorded = run.summary.get("folds", {})
    folds: dict[str, dict] = {}
    for name in have:
        test_idx = data.splits[name].test
        model, ckpt = run.load_model(name, checkpoint, device)
        logits, labels = predict_loader(model, eval_loader(waves, table.labels, test_idx,
                                                           ckpt["config"]), device)
        folds[name] = {"recorded": recorded.get(name), **score(logits, labels), "epoch": ckpt["epoch"]}
        if checkpoint == "last" and not run.predictions_path(name).exists():
            run.save_predictions(name, Predictions.from_logits(
                logits, labels, [str(table.paths[i]) for i in test_idx], table.known_classes))
        if tta > 1:
            shifted = predict_shifted(model, waves, test_idx, tta, device)
            folds[name]["accuracy_tta"] = float((shifted.argmax(1) == labels).mean())
    result: dict = {"checkpoint": checkpoint, "tta": tta, "folds": folds}
    for key in ("accuracy", "accuracy_tta") if tta > 1 else ("accuracy",):
        mean, std = mean_std([f[key] for f in folds.values()])
        result |= {f"{key}_mean": mean, f"{key}_std": std}
    run.write_evaluation(result)
    return result
