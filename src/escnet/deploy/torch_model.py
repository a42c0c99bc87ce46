"""Run trained checkpoints with PyTorch: the path for run directories and ``.pt`` files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

import escnet
from escnet.deploy.onnx_model import ModelInfo, Scores
from escnet.errors import CheckpointError
from escnet.machine import resolve_device
from escnet.models.calibration import Calibration
from escnet.models.classifier import outputs_of
from escnet.models.mobilenet import frame_seconds
from escnet.models.unknown import UnknownScorer, scorer_of
from escnet.runs import RunDir, load_model

log = logging.getLogger("escnet")


def fold_of(path: Path, ckpt: dict) -> str:
    """The fold a checkpoint was trained for: saved in it, or its folder's name (``fold-K``)."""
    return str(ckpt.get("fold") or path.parent.name.removeprefix("fold-"))


class Calibrated(nn.Module):
    """Fold models with their calibration, as prediction and the exported graph run them:
    log-mels ``(batch, n_mels, frames)`` → probabilities ``(batch, classes)`` (each model's
    calibrated by its temperature, then averaged), logits (one model's own; several: the log of
    the mean, whose softmax gives the mean back), the unknown score ``score`` averaged over the
    models ``(batch,)``, when every model has an AudioSet head, the mean of its tags
    ``(batch, 527)``, and when every model has a frame head, the mean of its frame
    probabilities ``(batch, steps, classes)`` (else ``None``)."""

    def __init__(self, backbones: list[nn.Module], scorers: list[UnknownScorer], score: str) -> None:
        super().__init__()
        self.backbones, self.scorers, self.score = nn.ModuleList(backbones), nn.ModuleList(scorers), score
        self.tagging = all(getattr(b, "audioset", None) is not None for b in backbones)
        self.framing = all(getattr(b, "frame_head", None) is not None for b in backbones)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = [outputs_of(b, x) for b in self.backbones]
        probs = [(o.logits / s.temperature).softmax(-1) for o, s in zip(outs, self.scorers, strict=True)]
        known = torch.stack([s(o.logits, o.embedding)[self.score]
                             for o, s in zip(outs, self.scorers, strict=True)]).mean(0)
        tags = torch.stack([o.tags for o in outs]).mean(0) if self.tagging else None
        frames = torch.stack([o.frames for o in outs]).mean(0) if self.framing else None
        if len(outs) == 1:
            return probs[0], outs[0].logits, known, tags, frames
        mean = torch.stack(probs).mean(0)
        return mean, mean.clamp_min(1e-30).log(), known, tags, frames


def calibration_of(paths: list[Path], checkpoints: list[dict]) -> tuple[list[UnknownScorer], Calibration]:
    """Each checkpoint's scorer, and the models' calibration together (:meth:`Calibration.mean`).
    A model trained before escnet calibrated (or with ``train.validation_share=0``) has
    temperature 1 and no threshold, which is said once."""
    scorers = [scorer_of(c) for c in checkpoints]
    together = Calibration.mean([Calibration.from_dict(c.get("calibration")) for c in checkpoints])
    if together.validation_clips and not together.unknown_score:  # fitted, with no unknown by design
        return scorers, together
    if not together.calibrated or not all(together.unknown_score in s.names for s in scorers):
        why = ("its training held out no clip to calibrate on: train.validation_share=0, or too few "
               "clips per class" if all(c.get("calibration") for c in checkpoints) else
               "trained before escnet calibrated models; `escnet calibrate` fixes a run that kept "
               "validation clips")
        log.warning("%s: uncalibrated scores (%s): no sound is answered \"unknown\"",
                    paths[0] if len(paths) == 1 else paths[0].parent.parent, why)
        return scorers, Calibration(models=len(checkpoints))
    return scorers, together


class TorchModel:
    """One or more :class:`~escnet.models.SoundClassifier` checkpoints, their calibrated
    probabilities averaged: ``model(windows (n, clip_samples)) → (n, classes)`` and
    :meth:`score` as :class:`~escnet.deploy.onnx_model.OnnxModel`.

    ``TorchModel.from_path(RUNDIR)`` uses every fold's ``last.pt`` of a cross-validation run (an
    ensemble of the fold models: unknown score and threshold are the models' means, the
    threshold an approximation: no clip is unseen by all of them to fit one on);
    ``TorchModel.from_path(FILE.pt)`` uses that one checkpoint.
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
        epochs = first["config"].train.num_epochs
        if single and first.get("epoch", epochs) < epochs:
            log.warning("%s: stopped at epoch %s of %s (unfinished): its scores are a half-trained "
                        "model's, with no held-out accuracy or calibration to speak for them",
                        checkpoints[0], first["epoch"], epochs)
            single = False
        scorers, calibration = calibration_of(checkpoints, [c for _, c in loaded])
        self.calibrated = Calibrated([m.backbone for m in self.models], scorers,
                                     calibration.unknown_score or "msp").to(self.device)
        tagging = self.calibrated.tagging and all(m.tag_names for m in self.models)
        self.config = first["config"]
        self.info = ModelInfo(
            classes=list(first["classes"]), sample_rate=featurizer.sample_rate,
            clip_samples=featurizer.clip_samples, model=self.config.model.name, precision="float32",
            held_out_accuracy=float(first["test_accuracy"]) if single else None,
            folds=[fold_of(p, c) for p, (_, c) in zip(checkpoints, loaded, strict=True)],
            escnet_version=escnet.__version__, calibration=calibration,
            tag_names=list(self.models[0].tag_names) if tagging else [],
            frame_model=self.calibrated.framing,
            frame_seconds=frame_seconds(featurizer.hop_length, featurizer.sample_rate)
            if self.calibrated.framing else None,
            frame_window=self.config.scene_seconds
            if self.calibrated.framing and self.config.augment.scenes else None)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu") -> TorchModel:
        path = Path(path)
        return cls(RunDir(path).models() if path.is_dir() else [path], device)

    @torch.inference_mode()
    def logmel(self, window: np.ndarray) -> np.ndarray:
        """The log-mel the (first) model sees for one window ``(samples,)``: ``(n_mels, frames)``."""
        batch = torch.from_numpy(np.ascontiguousarray(window[None], np.float32)).to(self.device)
        return self.models[0].featurizer(batch)[0][0].cpu().numpy()

    @torch.inference_mode()
    def score(self, windows: np.ndarray) -> Scores:
        """Calibrated probabilities, unknown scores and AudioSet tags of ``windows`` ``(n, samples)``."""
        batch = torch.from_numpy(np.ascontiguousarray(windows, np.float32)).to(self.device)
        probs, _, known, tags, frames = self.calibrated(self.models[0].features(batch)[0])
        return Scores(probs.cpu().numpy(), known.cpu().numpy() if self.info.calibrated else None,
                      tags.cpu().numpy() if tags is not None and self.info.tag_names else None,
                      frames.cpu().numpy() if frames is not None else None)

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """``(n, samples)`` → calibrated probabilities ``(n, classes)``."""
        return self.score(windows).probabilities
