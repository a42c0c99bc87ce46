"""Model registry and the :class:`SoundClassifier` that joins features and a backbone."""

from __future__ import annotations

import torch
from torch import nn

from escnet.config import TaskConfig
from escnet.features import Featurizer

# Importing a model's module registers it.
from escnet.models import ast, cnn, crnn, kumar, lstm, report_cnns, vgg  # noqa: F401
from escnet.models.registry import count_macs, create_model, list_models, register_model


class SoundClassifier(nn.Module):
    """Waveforms in, logits out: :class:`~escnet.features.Featurizer` then a registry backbone.

    ``forward(wav (batch, samples), lengths (batch,) | None) → (batch, num_classes)``. This is
    the module checkpoints hold, so prediction needs nothing but the checkpoint.
    """

    def __init__(self, config: TaskConfig) -> None:
        super().__init__()
        self.featurizer = Featurizer.from_config(config)
        self.backbone = create_model(config.model, config)
        if config.channels_last:  # conv weights in NHWC: oneDNN's fast layout on CPU
            self.backbone.to(memory_format=torch.channels_last)

    def features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-mels ``(batch, n_mels, frames)`` (float32 even under autocast) and valid frames."""
        with torch.autocast(wav.device.type, enabled=False):
            return self.featurizer(wav, lengths)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(*self.features(wav, lengths))

    def forward_batch(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Logits for a batch from :func:`escnet.datasets.collate`: waveforms, or log-mels
        precomputed with this model's featurizer (then only the backbone runs)."""
        if "features" in batch:
            return self.backbone(batch["features"].to(device), None)
        return self(batch["wav"].to(device), batch["length"].to(device))


__all__ = ["SoundClassifier", "count_macs", "create_model", "list_models", "register_model"]
