"""A small Audio Spectrogram Transformer (after Gong, Chung & Glass, Interspeech 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from escnet.errors import ConfigError
from escnet.models.layers import MelNorm, check_args
from escnet.models.registry import register_model


@register_model("ast")
class AST(nn.Module):
    """Log-mel → non-overlapping ``patch`` × ``patch`` patches embedded in ``dim``, learned 2-D
    position embeddings (interpolated for other clip lengths), a pre-norm transformer encoder
    (``depth`` layers, ``heads`` heads), then the CLS token or the mean of the patch tokens
    (``pooling``: ``cls`` or ``mean``) → LayerNorm → linear. Sized by default to train on a CPU.

    Args:
        patch: patch side (mel bins = frames), no overlap.
    """

    def __init__(self, n_mels: int, frames: int, num_classes: int, patch: int = 16, dim: int = 192,
                 depth: int = 4, heads: int = 4, pooling: str = "cls") -> None:
        super().__init__()
        check_args("ast", patch=(patch, patch > 0, "must be > 0"), dim=(dim, dim > 0, "must be > 0"),
                   depth=(depth, depth > 0, "must be > 0"), heads=(heads, heads > 0, "must be > 0"),
                   pooling=(pooling, pooling in ("cls", "mean"), "must be one of cls, mean"))
        check_args("ast", dim=(dim, dim % heads == 0, f"must be divisible by heads ({heads})"))
        p, d = patch, dim
        grid = (n_mels // p, frames // p)
        if min(grid) < 1:
            raise ConfigError(f"setting model.args.patch={p}: larger than the input ({n_mels} mels × "
                              f"{frames} frames)")
        self.pooling = pooling
        self.norm = MelNorm(n_mels)
        self.patch = nn.Conv2d(1, d, p, stride=p)
        self.position = nn.Parameter(torch.zeros(1, d, *grid))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, num_classes))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)`` → logits ``(batch, num_classes)``."""
        x = self.patch(self.norm(x).unsqueeze(1))  # (batch, dim, mel patches, time patches)
        position = self.position
        if position.shape[-2:] != x.shape[-2:]:
            position = F.interpolate(position, size=x.shape[-2:], mode="bilinear", align_corners=False)
        tokens = (x + position).flatten(2).transpose(1, 2)  # (batch, patches, dim)
        tokens = self.encoder(torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1))
        pooled = tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(1)
        return self.head(pooled)
