"""A model's calibration as one typed object: its temperature, the unknown score it answers by
and every score's threshold, and what they were fitted on and how surely; and the two
estimators that fit them (:func:`fit_temperature`, :func:`unknown_threshold`).

:func:`escnet.engine.calibrate.calibrate` fits it on a fold's validation clips (and
:mod:`escnet.archive.learn` on a learned classifier's cross-validated windows);
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


# --- fitting (by engine.calibrate for a run's folds, by archive.learn for a learned model; SciPy
# is imported when a fit is made, so the runtime reads calibrations without it) ---------------

LOG_T_RANGE = (-3.0, 3.0)
"""``log T`` is searched in this interval: T from 0.05 to 20."""
LOG_T_PRIOR_SD = 0.5
"""The prior on ``log T``: a Gaussian centred on 0 (T = 1, the model as trained) with this
standard deviation (a factor of 1.65 either way). Chosen before any held-out figure was seen."""


def fit_temperature(logits: np.ndarray, labels: np.ndarray, guarded: bool = True) -> tuple[float, dict]:
    """The temperature for validation ``logits`` ``(clips, classes)`` and ``labels``: the mode of
    its posterior, by a bounded scalar search over ``log T`` (SciPy; deterministic).

    A hundred or so validation clips often hold few errors (none, one), and the likelihood alone
    then rewards sharpening the clips it gets right without end: one error in 136 clips gave
    T = 0.23 on fold 1 and doubled the held-out NLL. Two guards, neither tuned on held-out clips:
    Laplace's rule of succession (each clip's label counts ``1 - ε`` and a uniform guess ``ε``,
    ``ε = 1 / (n + 2)``: one clip's worth of "any class may be the answer", so no number of
    right answers proves the model is never wrong), and the prior :data:`LOG_T_PRIOR_SD`. With
    the usual errors of a validation set they change ``T`` by a few hundredths; ``guarded``
    false fits by the likelihood alone (Guo et al., 2017).

    Returns ``T`` and how sure the fit is: ``errors`` (validation clips the model gets wrong),
    ``log_temperature_sd`` and a 90 % ``temperature_interval`` (Laplace's approximation: the
    curvature of the objective at its mode), and the guards' ``smoothing`` and ``prior_sd``."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(labels))
    eps = 1 / (len(labels) + 2) if guarded else 0.0

    def objective(log_t: float) -> float:
        logp = log_softmax(logits / np.exp(log_t), axis=1)
        nll = -(1 - eps) * logp[rows, labels].sum() - eps * logp.mean(axis=1).sum()
        return float(nll + (0.5 * (log_t / LOG_T_PRIOR_SD) ** 2 if guarded else 0.0))

    found = minimize_scalar(objective, bounds=LOG_T_RANGE, method="bounded", options={"xatol": 1e-5})
    h = 1e-3
    curvature = (objective(found.x + h) - 2 * objective(found.x) + objective(found.x - h)) / h**2
    sd = float(1 / np.sqrt(max(curvature, 1e-12)))
    return float(np.exp(found.x)), {
        "errors": int(np.sum(logits.argmax(1) != labels)), "smoothing": round(eps, 6),
        "prior_sd": LOG_T_PRIOR_SD if guarded else None, "log_temperature_sd": round(sd, 4),
        "temperature_interval": [round(float(np.exp(found.x - 1.645 * sd)), 4),
                                 round(float(np.exp(found.x + 1.645 * sd)), 4)]}


def unknown_threshold(scores: np.ndarray, keep: float, confidence: float = 0.0) -> float:
    """The threshold that keeps (score at or above it) a share ``keep`` of known sounds, from
    validation ``scores`` ``(clips,)``: the ``k``-th smallest score.

    With ``confidence`` 0, the split-conformal quantile (Vovk et al. 2005; Angelopoulos & Bates
    2021), ``k = ⌊(1 - keep)(n + 1)⌋``: a new known sound drawn like the validation clips is kept
    with probability at least ``keep``, on average over validation sets (one model's kept share
    may fall short by chance). Above 0, training-conditional (Vovk 2012): the share of such
    sounds the threshold leaves out is ``Beta(k, n + 1 - k)``-distributed, so the largest ``k``
    with ``P(Binomial(n, 1 - keep) ≥ k) ≥ confidence`` keeps at least ``keep`` of them with
    probability ``confidence``. With too few clips for that (none at ``k = 1``), the smallest
    score: every validation clip is kept."""
    from scipy.stats import binom

    ranked = np.sort(scores)
    n = len(ranked)
    if confidence > 0:
        ranks = np.arange(1, n + 1)
        allowed = ranks[binom.sf(ranks - 1, n, 1 - keep) >= confidence]
        k = int(allowed.max()) if len(allowed) else 0
    else:
        k = int(np.floor((1 - keep) * (n + 1) + 1e-9))
    return float(ranked[min(max(k - 1, 0), n - 1)])  # a keep near 0: the highest score



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
