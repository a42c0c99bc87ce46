"""The weak-label CNN of Kumar, Khadkevich & Fügen (ICASSP 2018): the report's "Github model"."""

from __future__ import annotations

import torch
from torch import nn

from escnet.models.layers import FlattenGrid, output_shape
from escnet.models.registry import register_model


def _conv(cin: int, cout: int, kernel: int = 3, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU())


@register_model("kumar")
class KumarCNN(nn.Module):
    """Conv-BN-ReLU pairs of 16, 32, 64, 128, 256 channels, each pair followed by max-pool 2;
    conv 512; conv 2×2 → 1024; 1×1 conv → one sigmoid map per class (the paper's segment-level
    outputs); a linear layer from the flattened maps to the logits. Fixed from the report: the
    linear layer's input (1250 there) is computed from the config and the maps pooled to that
    grid, so any clip length works."""

    def __init__(self, n_mels: int, frames: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for cout in (16, 32, 64, 128, 256):
            layers += [_conv(cin, cout), _conv(cout, cout), nn.MaxPool2d(2)]
            cin = cout
        layers += [_conv(256, 512), _conv(512, 1024, kernel=2, padding=0),
                   nn.Conv2d(1024, num_classes, 1), nn.Sigmoid()]
        self.features = nn.Sequential(*layers)
        classes, h, w = output_shape(self.features, n_mels, frames, "kumar")
        self.pool = FlattenGrid((h, w))
        self.classifier = nn.Linear(classes * h * w, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        return self.classifier(self.pool(self.features(x.unsqueeze(1))))
