"""A small Audio Spectrogram Transformer (after Gong, Chung & Glass, Interspeech 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from escnet.config import TaskConfig
from escnet.errors import ConfigError
from escnet.models.layers import MelNorm
from escnet.models.registry import register_model


@register_model("ast")
class AST(nn.Module):
    """Log-mel → non-overlapping ``ast_patch`` × ``ast_patch`` patches embedded in ``ast_dim``,
    learned 2-D position embeddings (interpolated for other clip lengths), a pre-norm transformer
    encoder (``ast_depth`` layers, ``ast_heads`` heads), then the CLS token or the mean of the
    patch tokens (``ast_pooling``) → LayerNorm → linear. Sized by default to train on a CPU."""

    def __init__(self, config: TaskConfig) -> None:
        super().__init__()
        p, d = config.ast_patch, config.ast_dim
        grid = (config.n_mels // p, config.length // p)
        if min(grid) < 1:
            raise ConfigError(f"setting ast_patch={p}: larger than the input ({config.n_mels} mels × "
                              f"{config.length} frames)")
        self.pooling = config.ast_pooling
        self.norm = MelNorm(config.n_mels)
        self.patch = nn.Conv2d(1, d, p, stride=p)
        self.position = nn.Parameter(torch.zeros(1, d, *grid))
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(d, config.ast_heads, 4 * d, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.ast_depth, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, config.num_classes))

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
