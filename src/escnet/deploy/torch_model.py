"""Run trained checkpoints with PyTorch: the path for run directories and ``.pt`` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import escnet
from escnet.deploy.onnx_model import ModelInfo
from escnet.errors import CheckpointError
from escnet.machine import resolve_device
from escnet.runs import RunDir, load_model


def fold_of(path: Path, ckpt: dict) -> str:
    """The fold a checkpoint was trained for: saved in it, or its folder's name (``fold-K``)."""
    return str(ckpt.get("fold") or path.parent.name.removeprefix("fold-"))


class TorchModel:
    """One or more :class:`~escnet.models.SoundClassifier` checkpoints, their probabilities
    averaged: ``model(windows (n, clip_samples)) → (n, classes)`` as :class:`OnnxModel`.

    ``TorchModel.from_path(RUNDIR)`` uses every fold's ``last.pt`` of a cross-validation run (an
    ensemble of the fold models); ``TorchModel.from_path(FILE.pt)`` uses that one checkpoint.
    """

    def __init__(self, checkpoints: list[Path], device: str = "cpu") -> None:
        if not checkpoints:
            raise CheckpointError("no checkpoints given")
        self.device = torch.device(resolve_device(device))
        loaded = [load_model(p, self.device) for p in checkpoints]
        self.models = [m for m, _ in loaded]
        first = loaded[0][1]
        featurizer = self.models[0].featurizer
        for path, (model, ckpt) in zip(checkpoints, loaded, strict=True):
            if ckpt["classes"] != first["classes"] or model.featurizer.settings != featurizer.settings:
                raise CheckpointError(f"{path}: its classes or audio settings differ from "
                                      f"{checkpoints[0]}")
        single = len(loaded) == 1 and "test_accuracy" in first
        self.config = first["config"]
        self.info = ModelInfo(
            classes=list(first["classes"]), sample_rate=featurizer.sample_rate,
            clip_samples=featurizer.clip_samples, model=self.config.model.name, precision="float32",
            held_out_accuracy=float(first["test_accuracy"]) if single else None,
            folds=[fold_of(p, c) for p, (_, c) in zip(checkpoints, loaded, strict=True)],
            escnet_version=escnet.__version__)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu") -> TorchModel:
        path = Path(path)
        if path.is_dir():
            run = RunDir(path)
            found = [run.checkpoint(f) for f in run.fold_names() if run.checkpoint(f).exists()]
            if not found:
                raise CheckpointError(f"{path}: no fold-*/last.pt checkpoints; is it an escnet run?")
            return cls(found, device)
        return cls([path], device)

    @torch.inference_mode()
    def logmel(self, window: np.ndarray) -> np.ndarray:
        """The log-mel the (first) model sees for one window ``(samples,)``: ``(n_mels, frames)``."""
        batch = torch.from_numpy(np.ascontiguousarray(window[None], np.float32)).to(self.device)
        return self.models[0].featurizer(batch)[0][0].cpu().numpy()

    @torch.inference_mode()
    def __call__(self, windows: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(windows, np.float32)).to(self.device)
        probs = torch.stack([m(batch).softmax(-1) for m in self.models]).mean(0)
        return probs.cpu().numpy()
