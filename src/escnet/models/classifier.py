"""The :class:`SoundClassifier`: the featurizer and a registry backbone, as checkpoints hold it."""

from __future__ import annotations

import torch
from torch import nn

from escnet.config import TaskConfig, cache_root
from escnet.models.pretrained import load_pretrained
from escnet.models.registry import create_model
from escnet.transforms.features import Featurizer


class SoundClassifier(nn.Module):
    """Waveforms in, logits out: :class:`~escnet.transforms.Featurizer` then a backbone.

    ``forward(wav (batch, samples), lengths (batch,) | None) → (batch, num_classes)``. This is
    the module checkpoints hold, so prediction needs nothing but the checkpoint.
    """

    def __init__(self, featurizer: Featurizer, backbone: nn.Module) -> None:
        super().__init__()
        self.featurizer = featurizer
        self.backbone = backbone

    @classmethod
    def from_config(cls, config: TaskConfig, pretrained: bool = True) -> SoundClassifier:
        """The model ``config`` describes, with ``model.pretrained`` weights loaded unless
        ``pretrained`` is false (a checkpoint about to be loaded holds every weight)."""
        m = config.model
        backbone = create_model(m.name, n_mels=config.features.n_mels, frames=config.length,
                                num_classes=m.num_classes, **m.args)
        if pretrained and m.pretrained:
            load_pretrained(backbone, m.pretrained, m.pretrained_sha256, cache_root(config))
        if config.train.channels_last:  # conv weights in NHWC: oneDNN's fast layout on CPU
            backbone.to(memory_format=torch.channels_last)
        return cls(Featurizer.from_config(config), backbone)

    def features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-mels ``(batch, n_mels, frames)`` (float32 even under autocast) and valid frames."""
        with torch.autocast(wav.device.type, enabled=False):
            return self.featurizer(wav, lengths)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(*self.features(wav, lengths))

    def forward_batch(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Logits for a batch from :func:`escnet.data.collate`: waveforms, or log-mels
        precomputed with this model's featurizer (then only the backbone runs)."""
        if "features" in batch:
            return self.backbone(batch["features"].to(device), None)
        return self(batch["wav"].to(device), batch["length"].to(device))
