"""Calibration of a trained fold model on its validation clips (``Split.validation``: held out of
training, never the test fold): a temperature, the unknown-sound scorer and its thresholds.

Temperature scaling (Guo et al., ICML 2017) divides the logits by one scalar ``T`` fitted to
minimise the validation clips' negative log-likelihood: the predicted class never changes, so
accuracy does not either, while a probability of 0.9 comes to mean nine in ten. With a hundred
or so validation clips that hold few errors, the likelihood alone rewards sharpening without
end (one error in 136 clips gave T = 0.23, and doubled the held-out NLL), so the fit is
guarded (:func:`fit_temperature`). Each unknown
score (:mod:`escnet.models.unknown`) gets a threshold: the validation clips'
``1 - train.unknown_keep`` quantile, lowered until the share is kept with probability
``train.unknown_confidence``; a sound scored below the model's (``train.unknown_score``)
is answered "unknown". Every score's threshold is kept, so runs compare on each.

:func:`finish_fold` does this at the end of every fold's training; :func:`calibrate_run` does it
again for a finished run (``escnet calibrate``), e.g. after a change of ``unknown_keep``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from escnet.config import RESULT_FREE, TaskConfig
from escnet.data.tables import ClipTable, Split
from escnet.engine.data import eval_loader
from escnet.errors import EscnetError
from escnet.models import SoundClassifier
from escnet.models.calibration import Calibration, fit_temperature, softmax, unknown_threshold
from escnet.models.unknown import NEEDS_EMBEDDING, SCORES, UnknownScorer, resolve_score
from escnet.runs import Predictions, RunData, RunDir
from escnet.runs.data import with_data
from escnet.runs.metrics import expected_calibration_error, negative_log_likelihood

log = logging.getLogger("escnet")

def ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Top-label expected calibration error of ``probabilities`` ``(clips, classes)``."""
    return expected_calibration_error(probabilities.max(1), probabilities.argmax(1) == labels)


def calibrate(logits: np.ndarray, labels: np.ndarray, embeddings: np.ndarray | None,
              bank: np.ndarray | None, config: TaskConfig) -> tuple[Calibration, UnknownScorer]:
    """Fit the temperature, scorer and thresholds on validation ``logits`` ``(clips, classes)``,
    ``labels`` and ``embeddings`` ``(clips, dim)``, with the training clips' embeddings ``bank``.

    Returns the :class:`Calibration` (temperature, the score answered by, every score's
    threshold, the validation clips' ECE and NLL before and after, how sure the temperature
    is) and the :class:`UnknownScorer`. With no validation clips: an uncalibrated model
    (temperature 1, no threshold).
    """
    keep, confidence = config.train.unknown_keep, config.train.unknown_confidence
    score = resolve_score(config.train.unknown_score, bank is not None, config.model.name)
    if len(labels) == 0:
        return Calibration(unknown_score=score, unknown_keep=keep, unknown_confidence=confidence), \
            UnknownScorer()
    t, fit = fit_temperature(logits, labels)
    unit = None if bank is None else torch.nn.functional.normalize(torch.from_numpy(bank).float(), dim=1)
    scorer = UnknownScorer(t, unit)
    emb = None if embeddings is None else torch.from_numpy(embeddings).float()
    with torch.no_grad():
        first = scorer(torch.from_numpy(logits).float(), emb)
        if unit is not None:  # the validation clips' own ranks make the combined score
            scorer = UnknownScorer(t, unit, {k: first[k].sort().values for k in ("energy", "knn")})
        scores = {k: v.numpy() for k, v in scorer(torch.from_numpy(logits).float(), emb).items()}
    thresholds = {name: unknown_threshold(values, keep, confidence) for name, values in scores.items()}
    before, after = softmax(logits), softmax(logits, t)
    return Calibration(t, score, thresholds, keep, confidence, len(labels), {
        "ece_before": ece(before, labels), "ece_after": ece(after, labels),
        "nll_before": negative_log_likelihood(before, labels),
        "nll_after": negative_log_likelihood(after, labels),
        "accuracy": float(np.mean(after.argmax(1) == labels))}, fit), scorer


def carry(fitted: Calibration, config: TaskConfig) -> tuple[Calibration, UnknownScorer]:
    """With ``train.refit``, the calibration of a fold model trained on every clip: ``fitted``,
    its holdout model's (:func:`calibrate`), restricted to the scores of the logits (the
    holdout model's embedding distances say nothing of the refit model's), and its scorer.
    A holdout model left uncalibrated (no validation clips) leaves the refit model so."""
    score = resolve_score(config.train.unknown_score, False, config.model.name, refit=True)
    logit_scores = tuple(s for s in SCORES if s not in NEEDS_EMBEDDING)
    return fitted.carried(logit_scores, score), UnknownScorer(fitted.temperature)


@torch.inference_mode()
def outputs(model: SoundClassifier, clips, labels: np.ndarray, indices: np.ndarray,
            config: TaskConfig, device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``(clips, classes)`` and embeddings ``(clips, dim)`` (``None`` for a model
    without) of the clips ``indices`` of ``clips`` (cached waveforms, log-mels or embeddings)."""
    model.eval()
    if len(indices) == 0:
        dim = getattr(model.backbone, "embed_dim", None)
        return (np.zeros((0, config.model.num_classes), np.float32),
                None if dim is None else np.zeros((0, dim), np.float32))
    logits, embeddings = [], []
    for batch in eval_loader(clips, labels, indices, config):
        out = model.outputs_batch(batch, device)
        logits.append(out.logits.float().cpu())
        if out.embedding is not None:
            embeddings.append(out.embedding.float().cpu())
    return torch.cat(logits).numpy(), torch.cat(embeddings).numpy() if embeddings else None


def finish_fold(model: SoundClassifier, clips, table: ClipTable, split: Split, run: RunDir,
                config: TaskConfig, device: torch.device) -> None:
    """Calibrate a trained fold model on its validation clips (with ``train.refit``, take its
    holdout model's calibration: :func:`carry`), score its held-out clips (and those of classes
    left out of training) and save it all: the calibration into the checkpoint, the held-out
    logits and scores, then the held-out predictions, whose presence marks the fold finished."""
    if config.train.refit:
        if not run.holdout_run.calibration_path(split.name).exists():
            raise EscnetError(f"{run.holdout_run.calibration_path(split.name)}: missing; the refit "
                              "model has no calibration to carry (resume the run to rewrite it)")
        calibration, scorer = carry(run.holdout_run.read_calibration(split.name), config)
    else:
        val_logits, val_emb = outputs(model, clips, table.labels, split.validation, config, device)
        bank = outputs(model, clips, table.labels, split.train, config, device)[1]
        calibration, scorer = calibrate(val_logits, table.labels[split.validation], val_emb, bank,
                                        config)
    held = np.concatenate([split.test, split.unknown])
    logits, emb = outputs(model, clips, table.labels, held, config, device)
    with torch.no_grad():
        scores = scorer(torch.from_numpy(logits).float(),
                        None if emb is None else torch.from_numpy(emb).float())
    run.save_calibration(split.name, calibration, scorer.state_dict())
    run.save_held_out(split.name, logits, np.where(np.isin(held, split.unknown), -1, table.labels[held]),
                      [str(table.paths[i]) for i in held], [table.classes[table.labels[i]] for i in held],
                      {k: v.numpy() for k, v in scores.items()})
    run.save_predictions(split.name, Predictions.from_logits(
        logits[: len(split.test)], table.labels[split.test],
        [str(table.paths[i]) for i in split.test], table.known_classes, calibration))


def calibrate_run(run_dir: str | Path, data_dir: str | None = None, keep: float | None = None,
                  score: str | None = None, progress: bool = True,
                  confidence: float | None = None) -> dict:
    """Calibrate every finished fold of a run again from its ``last.pt`` (with
    ``train.unknown_keep``, ``train.unknown_score`` and ``train.unknown_confidence`` set to
    ``keep``, ``score`` and ``confidence`` if given), rewrite its held-out files, pooled metrics
    and summary, and return the pooled ``metrics.json``. Needs the run's data, and a run trained
    with validation clips (``train.validation_share`` > 0): those are what is honest to fit on.
    A run trained with ``train.refit`` has its holdout run calibrated again, and carries that
    over.

    Every setting is checked before any work; the run is changed as a whole
    (:meth:`RunDir.staged`): a stop at any moment leaves its old calibration or the new one,
    never folds, config and figures that disagree."""
    run = RunDir(run_dir)
    folds = run.require_finished(whole=True)
    config = run.config
    if config.train.validation_share == 0:
        raise EscnetError(f"{run.path}: trained on every clip (train.validation_share=0): no clip is "
                          "left to calibrate on without touching the test fold")
    changes = {k: v for k, v in (("train.unknown_keep", keep), ("train.unknown_score", score),
                                 ("train.unknown_confidence", confidence)) if v is not None}
    new = config.replace(changes)  # out-of-range settings are refused here, before any work
    if score is not None:  # a score the model cannot give
        model = run.load_model(folds[0])[0]
        resolve_score(score, hasattr(model.backbone, "embed"), config.model.name, config.train.refit)
    if config.train.refit and not run.holdout_run.exists:
        raise EscnetError(f"{run.holdout_run.path}: missing; this run was trained with train.refit and "
                          "calibrates through its holdout models: resuming the run trains them again")
    opened = with_data(new, data_dir, run.path)
    with run.lock(), run.staged() as staged:
        data = RunData.open(opened, progress)
        data.check(run, folds)
        runs = [staged.holdout_run, staged] if config.train.refit else [staged]
        for each in runs:  # the holdout models first: their calibration is what carries over
            if changes:
                each.create(each.config.replace(changes), resume=True, result_free=RESULT_FREE)
            pooled = _calibrate_folds(each, folds, data)
    return pooled


def _calibrate_folds(run: RunDir, folds: list[str], data: RunData) -> dict:
    """Every fold of ``folds`` of ``run`` calibrated again with ``run``'s settings, then the
    pooled metrics and summary."""
    config = run.config
    device = torch.device(config.resolved_device())
    for fold in folds:
        model = run.load_model(fold, "last", device)[0]
        finish_fold(model, data.waves, data.table, data.splits[fold], run, config, device)
        log.info("fold %s calibrated", fold)
    pooled = run.write_pooled_metrics(folds, data.table.known_classes)
    if run.summary:  # its end-of-run figures, as training would have written them
        run.write_summary(run.summary | {k: pooled[k] for k in ("calibration", "open_set") if k in pooled})
    return pooled
