"""A model's calibration as one typed object: its temperature, the unknown score it answers by
and every score's threshold, and what they were fitted on and how surely.

:func:`escnet.engine.calibrate.calibrate` fits it on a fold's validation clips;
:class:`~escnet.runs.RunDir` saves it (``calibration.json`` and the checkpoint); an ONNX export
carries it in its metadata (:class:`~escnet.deploy.onnx_model.ModelInfo`). It applies itself:
:meth:`Calibration.probabilities` of logits, :meth:`Calibration.is_unknown` of a score. No
PyTorch here: the runtime reads it too. The scores themselves are computed by
:class:`escnet.models.unknown.UnknownScorer` (in PyTorch, so ONNX graphs compute them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` ``(clips, classes)`` (float64)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Calibration:
    """A model's calibration (the default: an uncalibrated model, which never answers
    "unknown")."""

    temperature: float = 1.0
    """Logits are divided by it before the softmax (Guo et al., 2017)."""
    unknown_score: str = ""
    """The score a sound is answered "unknown" by (:mod:`escnet.models.unknown`); empty: none."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """Each score's threshold: a sound scored below it is unknown by that score."""
    unknown_keep: float | None = None
    """The share of known sounds the thresholds were set to keep..."""
    unknown_confidence: float | None = None
    """...with this probability (0: on average)."""
    validation_clips: int = 0
    """Clips it was fitted on (held out of training, never the test fold); 0: not fitted."""
    validation: dict[str, float] = field(default_factory=dict)
    """On those clips: ``ece_before``, ``ece_after``, ``nll_before``, ``nll_after``, ``accuracy``."""
    fit: dict[str, Any] = field(default_factory=dict)
    """How sure the temperature is: ``errors`` (validation clips the model got wrong: few make
    an unsure fit), ``prior_weight`` (the shrinkage toward 1 chosen by cross-fitting),
    ``log_temperature_sd`` and ``temperature_interval`` (90 %, Laplace approximation)."""
    refit: bool = False
    """Carried from a holdout model to a model trained on every clip (``train.refit``)."""
    models: int = 1
    """Fold models it stands for (an ensemble's: their mean thresholds)."""

    @property
    def unknown_threshold(self) -> float | None:
        """The threshold of :attr:`unknown_score`, if any."""
        return self.thresholds.get(self.unknown_score)

    @property
    def calibrated(self) -> bool:
        """Whether it was fitted on validation clips: then it can answer "unknown"."""
        return self.unknown_threshold is not None

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``logits`` ``(clips, classes)``."""
        return softmax(logits, self.temperature)

    def is_unknown(self, score: float | None) -> bool:
        """Whether a sound with unknown score ``score`` is none of the model's classes."""
        threshold = self.unknown_threshold
        return threshold is not None and score is not None and score < threshold

    def carried(self, logit_scores: tuple[str, ...], score: str) -> Calibration:
        """This calibration as a model trained afresh on every clip carries it (``train.refit``):
        only the thresholds of scores of the logits (an embedding's distances belong to the
        model that made them), answering by ``score``."""
        kept = {k: v for k, v in self.thresholds.items() if k in logit_scores}
        return Calibration(**{**asdict(self), "thresholds": kept, "unknown_score": score, "refit": True})

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``calibration.json``, checkpoints and ONNX metadata."""
        return {**asdict(self), "unknown_threshold": self.unknown_threshold}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Calibration:
        """From :meth:`to_dict`'s output (or an older escnet's, or ``None``: uncalibrated)."""
        if not values:
            return cls()
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        known["thresholds"] = {k: float(v) for k, v in (values.get("thresholds") or {}).items()}
        if values.get("unknown_threshold") is not None and values.get("unknown_score"):
            known["thresholds"].setdefault(values["unknown_score"], float(values["unknown_threshold"]))
        return cls(**known)

    @classmethod
    def mean(cls, calibrations: list[Calibration]) -> Calibration:
        """What several fold models' calibrations make together (their probabilities averaged,
        each calibrated by its own temperature): every model's threshold of a score they all
        have, averaged (an approximation: no clip is unseen by all of them to fit one on). Not
        calibrated unless every model is, by the same score."""
        scores = {c.unknown_score for c in calibrations}
        if len(calibrations) == 1:
            return calibrations[0]
        if not all(c.calibrated for c in calibrations) or len(scores) != 1:
            return cls(models=len(calibrations))
        score = scores.pop()
        return cls(1.0, score, {score: float(np.mean([c.thresholds[score] for c in calibrations]))},
                   calibrations[0].unknown_keep, calibrations[0].unknown_confidence,
                   sum(c.validation_clips for c in calibrations), models=len(calibrations))
