"""PNG figures (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot
import matplotlib.pyplot as plt
import numpy as np


def save_logmel(logmel: np.ndarray, path: str | Path, title: str, sample_rate: int,
                hop_length: int) -> None:
    """Write a log-mel ``(n_mels, frames)`` (natural-log power) as a PNG, time in seconds."""
    seconds = logmel.shape[1] * hop_length / sample_rate
    fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
    image = ax.imshow(logmel, origin="lower", aspect="auto", cmap="magma",
                      extent=(0.0, seconds, 0, logmel.shape[0]))
    ax.set(title=title, xlabel="time (s)", ylabel="mel bin")
    fig.colorbar(image, ax=ax, label="log power")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
