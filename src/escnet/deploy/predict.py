"""Inference: classify audio files of any length with a trained run or checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from escnet.data.audio import load_audio, windows
from escnet.errors import CheckpointError, EscnetError
from escnet.runs import RunDir, load_model


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]
    """``(class name, probability)`` pairs, most probable first."""
    windows: int
    """How many clip-length windows were scored and averaged."""

    def to_dict(self) -> dict:
        return {"file": self.path, "windows": self.windows,
                "top": [{"label": c, "probability": round(p, 6)} for c, p in self.top]}


class Predictor:
    """One or more trained :class:`~escnet.models.SoundClassifier` checkpoints, averaged.

    ``Predictor.from_path(RUNDIR)`` uses every fold's ``last.pt`` of a cross-validation run (an
    ensemble of the fold models); ``Predictor.from_path(FILE.pt)`` uses that one checkpoint.
    """

    def __init__(self, checkpoints: list[Path], device: str = "cpu") -> None:
        if not checkpoints:
            raise EscnetError("no checkpoints given")
        self.device = torch.device(device)
        loaded = [load_model(p, self.device) for p in checkpoints]
        self.models = [m for m, _ in loaded]
        self.config = loaded[0][1]["config"]
        self.classes: list[str] = loaded[0][1]["classes"]
        for path, (_, ckpt) in zip(checkpoints, loaded, strict=True):
            config = ckpt["config"]
            if ckpt["classes"] != self.classes or config.data.sample_rate != self.config.data.sample_rate \
                    or config.length_wav != self.config.length_wav:
                raise CheckpointError(f"{path}: its classes or audio settings differ from {checkpoints[0]}")

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu") -> Predictor:
        path = Path(path)
        if path.is_dir():
            run = RunDir(path)
            found = [run.checkpoint(f) for f in run.fold_names() if run.checkpoint(f).exists()]
            if not found:
                raise CheckpointError(f"{path}: no fold-*/last.pt checkpoints; is it an escnet run?")
            return cls(found, device)
        return cls([path], device)

    @torch.inference_mode()
    def probabilities(self, wav: np.ndarray) -> tuple[np.ndarray, int]:
        """Class probabilities ``(classes,)`` of a mono waveform at the model's rate, averaged
        over clip-length windows and over models; also the number of windows."""
        batch = torch.from_numpy(windows(wav, self.config.length_wav)).to(self.device)
        probs = torch.stack([m(batch).softmax(-1).mean(0) for m in self.models]).mean(0)
        return probs.cpu().numpy(), batch.shape[0]

    def predict_file(self, path: str | Path, top_k: int = 5) -> Prediction:
        wav = load_audio(path, self.config.data.sample_rate)
        probs, n = self.probabilities(wav)
        order = np.argsort(-probs)[:top_k]
        return Prediction(str(path), [(self.classes[i], float(probs[i])) for i in order], n)
