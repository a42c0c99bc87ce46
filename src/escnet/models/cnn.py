"""PANNs' CNNs (Kong et al., "PANNs: Large-Scale Pretrained Audio Neural Networks for Audio
Pattern Recognition", 2020): CNN10, escnet's strong, efficient default model, and CNN6 and CNN14,
with PANNs' layouts and parameter names so that their AudioSet checkpoints (Zenodo record
3987831) load. Their front-end is ``features.frontend=panns`` (32 kHz, n_fft 1024, hop 320, 64
mels from 50 to 14000 Hz, dB); escnet has not measured these checkpoints' accuracy (their
weights cannot be fetched here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from escnet.models.layers import check_args
from escnet.models.pretrained import load_matching
from escnet.models.registry import register_model


class ConvBlock(nn.Module):
    """2 × (conv 3×3 → BatchNorm → ReLU) (``kernel=5``: one conv 5×5 → BatchNorm → ReLU, PANNs'
    ``ConvBlock5x5``), then average pooling over ``pool``. PANNs' names and layout."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, pool: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        if kernel == 3:
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if hasattr(self, "conv2"):
            x = F.relu(self.bn2(self.conv2(x)))
        return F.avg_pool2d(x, self.pool) if self.pool > 1 else x


class PannsCNN(nn.Module):
    """PANNs' CNN layout: BatchNorm over mel bins, ``len(channels)`` conv blocks (``kernel`` 3:
    two 3×3 convs each; 5: one 5×5 conv) with dropout ``dropout`` after the first ``dropped``
    (PANNs: all), mean over frequency, max + mean over time, a hidden linear layer and the
    classifier, each after dropout ``head_dropout``. Tensors are laid out ``(batch, 1, frames,
    mels)`` as in PANNs, so its filters load unchanged; ``load_pretrained`` takes PANNs'
    checkpoints (every tensor but the class-specific layer, ``fc_audioset`` there).
    """

    def __init__(self, n_mels: int, num_classes: int, channels: list[int], kernel: int,
                 dropout: float, head_dropout: float, last_pool: int = 2,
                 dropped: int | None = None) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.blocks = len(channels)
        self.dropped = self.blocks if dropped is None else dropped  # blocks followed by dropout
        for i, (cin, cout) in enumerate(zip([1, *channels[:-1]], channels, strict=True)):
            pool = last_pool if i == len(channels) - 1 else 2
            setattr(self, f"conv_block{i + 1}", ConvBlock(cin, cout, kernel, pool))
        self.fc1 = nn.Linear(channels[-1], channels[-1])
        self.classifier = nn.Linear(channels[-1], num_classes)
        self.cnn_dropout, self.head_dropout = dropout, head_dropout

    def load_pretrained(self, state: dict[str, torch.Tensor], source: str) -> None:
        """PANNs' checkpoints: every tensor but the class-specific classifier."""
        load_matching(self, state, skip=("classifier.",), source=source)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        x = self.bn0(x.unsqueeze(-1)).squeeze(-1)  # per-mel-bin normalisation
        x = x.transpose(1, 2).unsqueeze(1)  # (batch, 1, frames, mels)
        for i in range(self.blocks):
            x = getattr(self, f"conv_block{i + 1}")(x)
            x = F.dropout(x, self.cnn_dropout, self.training) if i < self.dropped else x
        x = x.mean(dim=3)  # over frequency → (batch, channels, frames')
        x = x.amax(dim=2) + x.mean(dim=2)
        x = F.relu(self.fc1(F.dropout(x, self.head_dropout, self.training)))
        return self.classifier(F.dropout(x, self.head_dropout, self.training))


def _check(name: str, width: int, dropout: float, head_dropout: float) -> None:
    check_args(name, width=(width, width > 0, "must be > 0"),
               dropout=(dropout, 0 <= dropout < 1, "must be in [0, 1)"),
               head_dropout=(head_dropout, 0 <= head_dropout < 1, "must be in [0, 1)"))


@register_model("cnn10")
class CNN10(PannsCNN):
    """PANNs' CNN10: 4 blocks of two 3×3 convs, ``width`` × (1, 2, 4, 8) channels, dropout
    ``dropout`` (0.2) after the first 3, a hidden layer and the classifier after dropout
    ``head_dropout`` (0.5).

    ``width=64`` with 64 mels is PANNs' CNN10, whose AudioSet checkpoint loads with
    ``model.pretrained=panns_cnn10`` (or ``audioset``; :mod:`escnet.cards`); a smaller width
    trades accuracy for CPU time.

    Args:
        width: channels of the first block (doubling in each of the 4); 64 is PANNs' CNN10.
        dropout: after each of the first 3 conv blocks (PANNs: 0.2).
        head_dropout: before each of the 2 linear layers (PANNs: 0.5).
    """

    def __init__(self, n_mels: int, frames: int, num_classes: int, width: int = 32,
                 dropout: float = 0.2, head_dropout: float = 0.5) -> None:
        _check("cnn10", width, dropout, head_dropout)
        # escnet's CNN10 drops out after 3 of its 4 blocks (PANNs: all 4); kept, so its results stay
        super().__init__(n_mels, num_classes, [width * k for k in (1, 2, 4, 8)], 3, dropout,
                         head_dropout, dropped=3)


@register_model("cnn6")
class CNN6(PannsCNN):
    """PANNs' CNN6 (4.8 M parameters at ``width=64``, AudioSet mAP 0.343): 4 blocks of one 5×5
    conv, ``width`` × (1, 2, 4, 8) channels; ``model.pretrained=panns_cnn6`` (or ``audioset``)
    loads ``Cnn6_mAP=0.343.pth``."""

    def __init__(self, n_mels: int, frames: int, num_classes: int, width: int = 64,
                 dropout: float = 0.2, head_dropout: float = 0.5) -> None:
        _check("cnn6", width, dropout, head_dropout)
        super().__init__(n_mels, num_classes, [width * k for k in (1, 2, 4, 8)], 5, dropout, head_dropout)


@register_model("cnn14")
class CNN14(PannsCNN):
    """PANNs' CNN14 (80.8 M parameters at ``width=64``, AudioSet mAP 0.431): 6 blocks of two
    3×3 convs, ``width`` × (1, 2, 4, 8, 16, 32) channels, no pooling after the last;
    ``model.pretrained=panns_cnn14`` (or ``audioset``) loads ``Cnn14_mAP=0.431.pth``."""

    def __init__(self, n_mels: int, frames: int, num_classes: int, width: int = 64,
                 dropout: float = 0.2, head_dropout: float = 0.5) -> None:
        _check("cnn14", width, dropout, head_dropout)
        super().__init__(n_mels, num_classes, [width * k for k in (1, 2, 4, 8, 16, 32)], 3, dropout,
                         head_dropout, last_pool=1)
