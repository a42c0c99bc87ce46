"""The study report's two plain CNNs, with its defects fixed.

Both size their linear layers from the config (the report hard-coded 20904 and 9984, the values
for its defaults, which these reproduce) and pool adaptively to that grid, so any input length
works. Neither puts an activation on the logits (the report's Baseline had a ReLU there).
"""

from __future__ import annotations

import torch
from torch import nn

from escnet.models.layers import FlattenGrid, check_report_args, output_shape
from escnet.models.registry import register_model


def _conv_bn_relu(cin: int, cout: int, kernel: tuple[int, int]) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


@register_model("baseline")
class Baseline(nn.Module):
    """3 convs (``cnn_out_channels``, ``kernel_size``, ReLU), max-pool 4, 3 linear layers
    (n → n/4 → n/64 → classes, ReLU between them), n being the flattened conv output. Defaults
    are the report's; ``kernel_size`` is (mel bins, frames)."""

    def __init__(self, n_mels: int, frames: int, num_classes: int, cnn_out_channels: int = 8,
                 kernel_size: tuple[int, int] = (5, 20)) -> None:
        super().__init__()
        check_report_args("baseline", cnn_out_channels, kernel_size, (1, 1), 1)
        c, k = cnn_out_channels, tuple(kernel_size)
        self.features = nn.Sequential(nn.Conv2d(1, c, k), nn.ReLU(), nn.Conv2d(c, c, k), nn.ReLU(),
                                      nn.Conv2d(c, c, k), nn.ReLU())
        channels, h, w = output_shape(self.features, n_mels, frames, "baseline")
        grid = (max(h // 4, 1), max(w // 4, 1))
        self.pool = FlattenGrid(grid)
        n = channels * grid[0] * grid[1]
        self.classifier = nn.Sequential(nn.Linear(n, n // 4), nn.ReLU(), nn.Linear(n // 4, n // 64),
                                        nn.ReLU(), nn.Linear(n // 64, num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        return self.classifier(self.pool(self.features(x.unsqueeze(1))))


@register_model("advanced")
class Advanced(nn.Module):
    """3 VGG blocks (2 × conv-BatchNorm-ReLU, max-pool 2, dropout 0.2), channels doubling from
    ``cnn_out_channels``; then linear n → n/4 → n/64 → classes with BatchNorm1d, ReLU and
    dropout 0.2 / 0.5. Fixed from the report: one BatchNorm per conv (it shared one between the
    two convs of a block) and a channel axis added (``unsqueeze``, where it wrote ``squeeze``).
    Defaults are the report's; ``kernel_size`` is (mel bins, frames)."""

    def __init__(self, n_mels: int, frames: int, num_classes: int, cnn_out_channels: int = 8,
                 kernel_size: tuple[int, int] = (5, 20)) -> None:
        super().__init__()
        check_report_args("advanced", cnn_out_channels, kernel_size, (1, 1), 1)
        c, k = cnn_out_channels, tuple(kernel_size)
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate([(1, c), (c, 2 * c), (2 * c, 4 * c)]):
            layers += _conv_bn_relu(cin, cout, k) + _conv_bn_relu(cout, cout, k)
            if i < 2:
                layers += [nn.MaxPool2d(2), nn.Dropout(0.2)]
        self.features = nn.Sequential(*layers)
        channels, h, w = output_shape(self.features, n_mels, frames, "advanced")
        grid = (max(h // 2, 1), max(w // 2, 1))  # the third block's max-pool 2
        self.pool = nn.Sequential(FlattenGrid(grid), nn.Dropout(0.2))
        n = channels * grid[0] * grid[1]
        self.classifier = nn.Sequential(
            nn.Linear(n, n // 4), nn.BatchNorm1d(n // 4), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(n // 4, n // 64), nn.BatchNorm1d(n // 64), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(n // 64, num_classes),
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        return self.classifier(self.pool(self.features(x.unsqueeze(1))))
