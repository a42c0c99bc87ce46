"""The report's LSTM: one LSTM layer over mel frames, the last valid hidden state → linear."""

from __future__ import annotations

import torch
from torch import nn

from escnet.models.layers import check_args
from escnet.models.registry import register_model


@register_model("lstm")
class LSTMClassifier(nn.Module):
    """One-layer LSTM (``hidden_size``) reading log-mel frames; the hidden state at each
    example's last valid frame (gathered by its length) feeds a linear layer. Fixed from the
    report: ``num_classes`` from the config (it hard-coded 50)."""

    def __init__(self, n_mels: int, frames: int, num_classes: int, hidden_size: int = 64) -> None:
        super().__init__()
        check_args("lstm", hidden_size=(hidden_size, hidden_size > 0, "must be > 0"))
        self.rnn = nn.LSTM(n_mels, hidden_size, batch_first=True)
        self.classifier = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)``; ``lengths``: valid frames ``(batch,)``."""
        out, _ = self.rnn(x.transpose(1, 2))  # (batch, frames, hidden)
        if lengths is None:
            last = out[:, -1]
        else:
            index = (lengths.clamp(1, out.shape[1]) - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
            last = out.gather(1, index).squeeze(1)
        return self.classifier(last)
