"""Zero-shot AudioSet tagging (``escnet tag``): a pretrained card's published model with its own
527-class head, as EfficientAT's and PANNs' inference scripts run it (sigmoid probabilities, the
card's front-end), on windows of the card's clip length (AudioSet's 10 s).

A recording no longer than a window is tagged whole, at its own length, as upstream tags a
clip; a longer one is cut into windows every half a window, and a tag's probability for the
file is its highest window's: a sound heard anywhere in the file is in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from escnet.cards import CARDS, PretrainedCard, tagging_cards
from escnet.data.audio import AudioFile
from escnet.data.cache import cache_root
from escnet.deploy.windows import Window, WindowScorer
from escnet.errors import EscnetError
from escnet.machine import resolve_device
from escnet.models.classifier import SoundClassifier, card_config
from escnet.models.pretrained import read_tag_names, resolve_weights


@dataclass
class Tags:
    """A recording's tags: ``top`` ``(label, probability)`` best first, and with a timeline
    each window's."""

    file: str
    top: list[tuple[str, float]]
    windows: list[tuple[Window, list[tuple[str, float]]]]
    sample_rate: int

    def to_dict(self) -> dict:
        out: dict = {"file": self.file, "tags": [{"label": t, "probability": round(p, 6)}
                                                 for t, p in self.top]}
        if self.windows:
            out["timeline"] = [
                {"start": round(w.seconds(self.sample_rate)[0], 3),
                 "end": round(w.seconds(self.sample_rate)[1], 3),
                 "tags": [{"label": t, "probability": round(p, 6)} for t, p in top]}
                for w, top in self.windows]
        return out


class Tagger:
    """Tags recordings with the card ``name``'s own head.

    Args:
        name: a card of :func:`~escnet.cards.tagging_cards` (``mn04_as``).
        device: where the model runs.
        batch_size: windows per forward pass.
    """

    def __init__(self, name: str = "mn04_as", device: str = "cpu", batch_size: int = 8) -> None:
        card = CARDS.get(name)
        if card is None or card.labels is None:
            raise EscnetError(f"model={name}: not a tagging model; one of {', '.join(tagging_cards())}")
        self.device = torch.device(resolve_device(device, "device"))
        self.card: PretrainedCard = card
        self.model = SoundClassifier.from_card(card).to(self.device)
        config = card_config(card)
        self.labels = read_tag_names(resolve_weights(card.labels.url, "", cache_root(config), card.labels))
        if len(self.labels) != card.classes:
            raise EscnetError(f"{card.labels.name}: {len(self.labels)} names for {card.classes} outputs")
        self.rate = config.data.sample_rate
        self.scorer = WindowScorer(self._probabilities, self.rate, config.length_wav, batch_size,
                                   silence_db=None, trim=True)

    @torch.inference_mode()
    def _probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``(n, clip_samples)`` → sigmoid probabilities ``(n, classes)``."""
        logits = self.model(torch.from_numpy(windows).to(self.device))
        return logits.float().sigmoid().cpu().numpy()

    def _best(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        return [(self.labels[i], float(probabilities[i])) for i in np.argsort(-probabilities)[:k]]

    def tag_file(self, path: str | Path, top_k: int = 5, timeline: bool = False,
                 hop_seconds: float | None = None) -> Tags:
        """The ``top_k`` tags of a recording (each the highest of its windows'), and with
        ``timeline`` each window's."""
        if top_k < 1:
            raise EscnetError(f"top_k={top_k}: must be at least 1")
        most, windows = None, []
        with AudioFile(path) as audio:
            for window, p in self.scorer.recording(audio, hop_seconds):
                most = p if most is None else np.maximum(most, p)
                if timeline:
                    windows.append((window, self._best(p, top_k)))
        return Tags(str(path), self._best(most, top_k), windows, self.rate)
