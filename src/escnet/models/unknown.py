"""How known a sound is: the scores a model answers "unknown" by, computed from its logits and
embedding in PyTorch (so the exported ONNX graph computes them too).

Higher always means "more like the classes the model was trained on":

- ``msp``: the largest calibrated probability (Hendrycks & Gimpel, 2017);
- ``energy``: ``logsumexp(logits)``, the negative free energy (Liu et al., 2020);
- ``max_logit``: the largest logit (Hendrycks et al., 2022);
- ``knn``: the cosine similarity of the embedding to its nearest training clip's (Sun et al.,
  2022), for models with an embedding (the ``mn`` models): far from every training sound,
  whatever the head says;
- ``energy+knn``: the energy's rank among the validation clips' (the share of them scored at
  or below it), or :data:`KNN_WEIGHT` times the similarity's rank, whichever is smaller. The
  threshold's rejections of known sounds then fall mostly on the energy (the better ranking of
  near misses: other ESC-50 classes), while a sound farther from every training clip than all
  but the last few validation clips (music, speech) is unknown whatever its energy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from escnet.errors import ConfigError

SCORES = ("msp", "energy", "max_logit", "knn", "energy+knn")
KNN_WEIGHT = 4.0
"""In ``energy+knn``, the similarity's rank counts this many times the energy's, so that the
threshold's rejections of known sounds fall mostly on the energy, the better ranking of near
misses (docs/RESULTS.md, "Unknown sounds")."""
NEEDS_EMBEDDING = ("knn", "energy+knn")


def resolve_score(score: str, has_embedding: bool, model: str, refit: bool = False) -> str:
    """``train.unknown_score`` for a model (named ``model``), with ``auto`` resolved:
    ``energy+knn`` with an embedding, ``energy`` without (or with ``refit``: a model trained
    again on every clip carries only the thresholds of scores of its logits); an unknown score,
    or one the model cannot give, is a :class:`ConfigError`. The one place score names are
    checked: a new score is an entry of :data:`SCORES` and its line in
    :meth:`UnknownScorer.forward`."""
    logit_scores = [s for s in SCORES if s not in NEEDS_EMBEDDING]
    if score == "auto":
        return "energy+knn" if has_embedding and not refit else "energy"
    if score not in SCORES:
        raise ConfigError(f"setting train.unknown_score={score!r}: one of auto, {', '.join(SCORES)}")
    if score in NEEDS_EMBEDDING and refit:
        raise ConfigError(f"setting train.unknown_score={score}: with train.refit only scores of the "
                          "logits carry over to the refit model (its embedding is not the one the "
                          f"threshold was set on): use {', '.join(logit_scores)}")
    if score in NEEDS_EMBEDDING and not has_embedding:
        raise ConfigError(f"setting train.unknown_score={score}: model {model} has no embedding (the "
                          f"mn models have one); use {', '.join(logit_scores)}")
    return score


class UnknownScorer(nn.Module):
    """A fold model's calibration: its ``temperature``, the embeddings of its training clips
    (``bank``, ``(clips, dim)``, unit length) and its validation clips' ``energy`` and ``knn``
    scores (``reference``, each ``(clips,)`` sorted), the last two only for models with an
    embedding.

    ``scorer(logits (batch, classes), embedding (batch, dim) | None) → {score: (batch,)}``,
    every score of :data:`SCORES` the model can give.
    """

    def __init__(self, temperature: float = 1.0, bank: torch.Tensor | None = None,
                 reference: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("bank", bank.float() if bank is not None else torch.zeros(0, 0))
        ref = reference or {}
        self.register_buffer("ref_energy", ref.get("energy", torch.zeros(0)).float())
        self.register_buffer("ref_knn", ref.get("knn", torch.zeros(0)).float())

    @property
    def names(self) -> list[str]:
        """The scores this scorer gives."""
        have_bank, have_ref = self.bank.numel() > 0, self.ref_knn.numel() > 0
        return [s for s in SCORES if s not in NEEDS_EMBEDDING or (have_bank and (s == "knn" or have_ref))]

    @staticmethod
    def rank(reference: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The share of ``reference`` values at or below each of ``x`` ``(batch,)``."""
        return (reference[None, :] <= x[:, None]).float().mean(1)

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        out = {"msp": (logits / self.temperature).softmax(-1).amax(-1),
               "energy": logits.logsumexp(-1), "max_logit": logits.amax(-1)}
        if embedding is not None and self.bank.numel():
            out["knn"] = (F.normalize(embedding, dim=-1) @ self.bank.T).amax(-1)
            if self.ref_knn.numel():
                out["energy+knn"] = torch.minimum(self.rank(self.ref_energy, out["energy"]),
                                                  KNN_WEIGHT * self.rank(self.ref_knn, out["knn"]))
        return out


def scorer_of(checkpoint: dict) -> UnknownScorer:
    """The :class:`UnknownScorer` a checkpoint holds (``unknown_scorer``), or one with only its
    temperature (1 for a checkpoint written before escnet calibrated)."""
    state = checkpoint.get("unknown_scorer")
    if not state:
        return UnknownScorer((checkpoint.get("calibration") or {}).get("temperature", 1.0))
    ref = {"energy": state["ref_energy"], "knn": state["ref_knn"]} if state["ref_knn"].numel() else None
    return UnknownScorer(float(state["temperature"]), state["bank"] if state["bank"].numel() else None, ref)
