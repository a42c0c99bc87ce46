"""Pieces shared by several models."""

from __future__ import annotations

import torch
from torch import nn

from escnet.errors import ConfigError


def check_args(model: str, **checks: tuple[object, bool, str]) -> None:
    """Raise :class:`ConfigError` for the first ``name=(value, ok, why)`` with ``ok`` false."""
    for name, (value, ok, why) in checks.items():
        if not ok:
            raise ConfigError(f"setting model.args.{name}={value!r}: {why} (model {model})")


def check_report_args(model: str, cnn_out_channels: int, kernel_size: tuple[int, int],
                      stride: tuple[int, int], hidden_size: int) -> None:
    """The conv and recurrent sizes the report's models share must be positive."""
    pair = "must be two positive integers (mel bins, frames)"
    check_args(model, cnn_out_channels=(cnn_out_channels, cnn_out_channels > 0, "must be > 0"),
               kernel_size=(kernel_size, len(kernel_size) == 2 and min(kernel_size) > 0, pair),
               stride=(stride, len(stride) == 2 and min(stride) > 0, pair),
               hidden_size=(hidden_size, hidden_size > 0, "must be > 0"))


@torch.no_grad()
def output_shape(module: nn.Module, n_mels: int, frames: int, name: str) -> tuple[int, ...]:
    """Shape (without batch) of ``module``'s output for one clip ``(1, 1, n_mels, frames)``:
    how report-style models size their linear layers without hard-coding them.

    Raises:
        ConfigError: the clip (``n_mels`` × frames) is too small for the model's kernels.
    """
    was_training = module.training
    try:
        out = module.eval()(torch.zeros(1, 1, n_mels, frames))
    except RuntimeError:
        raise ConfigError(f"model {name}: input of {n_mels} mels × {frames} frames is too small "
                          "for its kernels; raise features.n_mels or data.clip_seconds") from None
    finally:
        module.train(was_training)
    return tuple(out.shape[1:])


class FlattenGrid(nn.Module):
    """Adaptive max-pool to a fixed ``(height, width)`` grid, then flatten.

    Report-style models end their conv stack with a pool and a linear layer sized for one clip
    length; pooling adaptively to the grid that clip length gives keeps the architecture as
    described there while accepting inputs of any length. ``(batch, C, H, W)`` →
    ``(batch, C·height·width)``.
    """

    def __init__(self, grid: tuple[int, int]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)


class MelNorm(nn.Module):
    """BatchNorm over mel bins of a log-mel ``(batch, n_mels, frames)``, as PANNs' ``bn0``: log-mel
    values (about -11.5 to +5) arrive unscaled, and a per-band affine normalisation learnt from
    the data fixes their scale for every model that starts with it."""

    def __init__(self, n_mels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x)
