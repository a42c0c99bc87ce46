"""CRNN-A of the study report: conv → GRU → additive attention over time → linear."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from escnet.models.layers import check_args, check_report_args
from escnet.models.registry import register_model


class AttentionPooling(nn.Module):
    """Additive attention pooling: ``(batch, time, dim)`` → ``(batch, dim)``.

    ``score_t = v·tanh(W h_t)``; padded steps (``t >= lengths``) get no weight.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.energy = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, h: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        energy = self.energy(h).squeeze(-1)  # (batch, time)
        if lengths is not None:
            steps = torch.arange(h.shape[1], device=h.device)
            energy = energy.masked_fill(steps[None, :] >= lengths[:, None], float("-inf"))
        alpha = torch.softmax(energy, dim=1)
        return torch.einsum("bt,btd->bd", alpha, h)


@register_model("crnn")
class CRNN(nn.Module):
    """The report's CRNN-A.

    One conv layer (``cnn_out_channels``, ``kernel_size``, ``stride``) whose channel × mel
    outputs feed a GRU (``hidden_size``, ``gru_num_layers``, ``gru_dropout``, optionally
    bidirectional) over time; additive attention pools the GRU states, a linear layer gives the
    logits. Fixed from the report: attention and classifier sized for both directions when
    ``bidirectional``, padded frames excluded through packed sequences and the attention mask.
    Defaults are the report's.

    Args:
        kernel_size, stride: of the conv, (mel bins, frames).
    """

    def __init__(self, n_mels: int, frames: int, num_classes: int, cnn_out_channels: int = 8,
                 kernel_size: tuple[int, int] = (5, 20), stride: tuple[int, int] = (2, 8),
                 hidden_size: int = 64, gru_num_layers: int = 2, gru_dropout: float = 0.1,
                 bidirectional: bool = False) -> None:
        super().__init__()
        check_report_args("crnn", cnn_out_channels, kernel_size, stride, hidden_size)
        check_args("crnn", gru_num_layers=(gru_num_layers, gru_num_layers > 0, "must be > 0"),
                   gru_dropout=(gru_dropout, 0 <= gru_dropout < 1, "must be in [0, 1)"),
                   kernel_size=(kernel_size, n_mels >= kernel_size[0],
                                f"taller than features.n_mels={n_mels}"))
        (k_mel, k_time), (s_mel, s_time) = kernel_size, stride
        self.k_time, self.s_time = k_time, s_time
        self.conv = nn.Conv2d(1, cnn_out_channels, tuple(kernel_size), tuple(stride))
        conv_mels = (n_mels - k_mel) // s_mel + 1
        self.gru = nn.GRU(conv_mels * cnn_out_channels, hidden_size, num_layers=gru_num_layers,
                          dropout=gru_dropout if gru_num_layers > 1 else 0.0,
                          bidirectional=bidirectional, batch_first=True)
        out = hidden_size * (2 if bidirectional else 1)
        self.attention = AttentionPooling(out)
        self.classifier = nn.Linear(out, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: log-mel ``(batch, n_mels, frames)``; ``lengths``: valid frames ``(batch,)``."""
        if x.shape[-1] < self.k_time:
            raise ValueError(f"input has {x.shape[-1]} frames; CRNN needs at least {self.k_time}")
        h = self.conv(x.unsqueeze(1))  # (batch, channels, mels', time')
        h = h.flatten(1, 2).transpose(1, 2)  # (batch, time', channels * mels')
        if lengths is None:
            h, _ = self.gru(h)
        else:
            lengths = ((lengths - self.k_time).clamp_min(0) // self.s_time + 1).clamp_max(h.shape[1])
            packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
            h, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                       total_length=h.shape[1])
        return self.classifier(self.attention(h, lengths))
