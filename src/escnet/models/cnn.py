"""A PANNs-style CNN (Kong et al., 2020): escnet's strong, efficient default model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from escnet.models.layers import check_args
from escnet.models.pretrained import load_matching
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
    """PANNs' CNN10 layout: BatchNorm over mel bins, 4 conv blocks of ``width`` × (1, 2, 4, 8)
    channels with dropout ``dropout`` (0.2) between them, mean over frequency, max + mean over
    time, a hidden linear layer and the classifier, each after dropout ``head_dropout`` (0.5).

    ``width=64`` with 64 mels is PANNs' CNN10, whose AudioSet checkpoints
    (``Cnn10_mAP=0.380.pth``) load with ``model.pretrained=PATH_OR_URL``; a smaller width trades
    accuracy for CPU time. Tensors are laid out ``(batch, 1, frames, mels)`` as in PANNs, so its
    filters load unchanged.

    Args:
        width: channels of the first block (doubling in each of the 4); 64 is PANNs' CNN10.
        dropout: after each of the first 3 conv blocks (PANNs: 0.2).
        head_dropout: before each of the 2 linear layers (PANNs: 0.5).
    """

    def __init__(self, n_mels: int, frames: int, num_classes: int, width: int = 32,
                 dropout: float = 0.2, head_dropout: float = 0.5) -> None:
        super().__init__()
        check_args("cnn10", width=(width, width > 0, "must be > 0"),
                   dropout=(dropout, 0 <= dropout < 1, "must be in [0, 1)"),
                   head_dropout=(head_dropout, 0 <= head_dropout < 1, "must be in [0, 1)"))
        w = width
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.conv_block1 = ConvBlock(1, w)
        self.conv_block2 = ConvBlock(w, 2 * w)
        self.conv_block3 = ConvBlock(2 * w, 4 * w)
        self.conv_block4 = ConvBlock(4 * w, 8 * w)
        self.fc1 = nn.Linear(8 * w, 8 * w)
        self.classifier = nn.Linear(8 * w, num_classes)
        self.cnn_dropout, self.head_dropout = dropout, head_dropout

    def load_pretrained(self, state: dict[str, torch.Tensor], source: str) -> None:
        """PANNs' checkpoints: every tensor but the class-specific classifier."""
        load_matching(self, state, skip=("classifier.",), source=source)

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
