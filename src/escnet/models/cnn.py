"""A PANNs-style CNN (Kong et al., 2020): escnet's strong, efficient default model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from escnet.config import TaskConfig
from escnet.models.pretrained import load_matching, read_state_dict, resolve_weights
from escnet.models.registry import register_model


class ConvBlock(nn.Module):
    """2 × (conv 3×3 → BatchNorm → ReLU), then 2×2 average pooling. PANNs' names and layout."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, 2)


@register_model("cnn10")
class CNN10(nn.Module):
    """PANNs' CNN10 layout: BatchNorm over mel bins, 4 conv blocks of ``cnn_width`` × (1, 2, 4, 8)
    channels with dropout ``cnn_dropout`` (0.2) between them, mean over frequency, max + mean
    over time, a hidden linear layer and the classifier, each after dropout ``head_dropout`` (0.5).

    ``cnn_width=64`` with ``n_mels=64`` is PANNs' CNN10, whose AudioSet checkpoints
    (``Cnn10_mAP=0.380.pth``) load with ``pretrained=PATH_OR_URL``; a smaller width trades
    accuracy for CPU time. Tensors are laid out ``(batch, 1, frames, mels)`` as in PANNs, so its
    filters load unchanged.
    """

    def __init__(self, config: TaskConfig) -> None:
        super().__init__()
        w = config.cnn_width
        self.bn0 = nn.BatchNorm2d(config.n_mels)
        self.conv_block1 = ConvBlock(1, w)
        self.conv_block2 = ConvBlock(w, 2 * w)
        self.conv_block3 = ConvBlock(2 * w, 4 * w)
        self.conv_block4 = ConvBlock(4 * w, 8 * w)
        self.fc1 = nn.Linear(8 * w, 8 * w)
        self.classifier = nn.Linear(8 * w, config.num_classes)
        self.cnn_dropout, self.head_dropout = config.cnn_dropout, config.head_dropout
        if config.pretrained:
            path = resolve_weights(config, {})
            load_matching(self, read_state_dict(path), skip=("classifier.",), source=path)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        x = self.bn0(x.unsqueeze(-1)).squeeze(-1)  # per-mel-bin normalisation
        x = x.transpose(1, 2).unsqueeze(1)  # (batch, 1, frames, mels)
        for i, block in enumerate((self.conv_block1, self.conv_block2, self.conv_block3,
                                   self.conv_block4)):
            x = block(x)
            x = F.dropout(x, self.cnn_dropout, self.training) if i < 3 else x
        x = x.mean(dim=3)  # over frequency → (batch, channels, frames')
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.relu(self.fc1(F.dropout(x, self.head_dropout, self.training)))
        return self.classifier(F.dropout(x, self.head_dropout, self.training))
