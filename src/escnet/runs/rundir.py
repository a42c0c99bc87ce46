"""The run directory: the one place that knows its layout, writes its files and reads them back.

::

    RUNDIR/
      config.yaml            the resolved TaskConfig, in sections
      summary.json           per-fold and mean ± std accuracy (rewritten after every fold)
      fold-K/metrics.jsonl   one line per epoch
      fold-K/last.pt         everything needed to resume (model, optimiser, scheduler, history)
      fold-K/best.pt         the epoch with the best held-out accuracy (for inspection only:
                             the reported accuracy is the last epoch's, since picking the best
                             epoch on the test fold would be optimistic)
      fold-K/calibration.json the temperature and unknown threshold fitted on the fold's
                             validation clips (also in last.pt as ``calibration``)
      fold-K/held_out.npz    the last epoch's held-out logits (``logits``, ``labels``: -1 for a
                             class left out of training, ``paths``, ``truth``: class names)
      fold-K/predictions.csv the last epoch's held-out predictions (path, label, predicted,
                             calibrated confidence), and fold-K/metrics.json (with calibration
                             and open-set figures), per_class.csv, confusion.csv
      metrics.json, per_class.csv, confusion.csv   the same pooled over the finished folds
      holdout/               with ``train.refit``: a run of its own, the fold models trained
                             without their validation clips, whose calibration the fold models
                             (trained again on every clip) carry
      evaluation.json        written by ``escnet evaluate``; report.html, report/ by ``escnet report``
      robustness.json, robustness.csv, robustness.png   written by ``escnet robustness``
      tensorboard/           per-epoch scalars, with ``train.tensorboard``

A checkpoint (``fold-K/last.pt``, ``fold-K/best.pt``) holds ``format``, ``model`` (the weights
that were scored: the moving average with EMA), ``config`` (sections), ``classes``, ``fold``,
``epoch``, ``test_accuracy`` and, with an AudioSet head, ``tag_names``; once the fold is
finished ``last.pt`` holds its ``calibration``; ``last.pt`` also holds what resuming needs: ``history``,
``optimizer``, ``scheduler`` and, with EMA, ``trained`` (the trained weights) and
``ema_updates``. :meth:`RunDir.save_epoch` is the one place that writes them.

Training, evaluation, reports, comparison and prediction all go through :class:`RunDir`, and
checkpoints through :func:`save_checkpoint` / :func:`load_checkpoint` (``weights_only=True``, a
checked format version). Every file is written atomically (:mod:`escnet.files`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import pickle
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from escnet.config import RESULT_FREE, TaskConfig, from_dict, read_config_file
from escnet.errors import CheckpointError, ConfigError, EscnetError
from escnet.files import atomic_write, atomic_write_json, atomic_write_text, hold_lock, make_output_dir
from escnet.models.calibration import Calibration
from escnet.runs.metrics import FoldScores, classification_metrics, held_out_figures, major_category

log = logging.getLogger("escnet")

CHECKPOINT_FORMAT = 2
"""Version of the checkpoint layout: 2 holds the config in sections (1: flat, before 0.2)."""


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) over folds: the figure escnet reports."""
    return float(np.mean(values)), float(np.std(values))


# --- held-out predictions -----------------------------------------------------------------

@dataclass
class Predictions:
    """Held-out predictions: ``labels`` and ``predicted`` ``(clips,)`` class indices into ``classes``."""

    paths: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    classes: list[str]

    @classmethod
    def from_logits(cls, logits: np.ndarray, labels: np.ndarray, paths: list[str],
                    classes: list[str], calibration: Calibration | None = None) -> Predictions:
        """From logits ``(clips, classes)``: the arg-max class and its probability, calibrated by
        ``calibration`` (default: none)."""
        probs = (calibration or Calibration()).probabilities(logits)
        return cls(paths, labels, probs.argmax(1), probs.max(1), classes)

    def save(self, path: Path) -> None:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["path", "label", "predicted", "confidence"])
        for p, y, q, c in zip(self.paths, self.labels, self.predicted, self.confidence, strict=True):
            writer.writerow([p, self.classes[y], self.classes[q], f"{c:.6f}"])
        atomic_write_text(path, out.getvalue())

    @classmethod
    def load(cls, path: Path, classes: list[str]) -> Predictions:
        index = {c: i for i, c in enumerate(classes)}
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            return cls([r["path"] for r in rows], np.array([index[r["label"]] for r in rows], dtype=int),
                       np.array([index[r["predicted"]] for r in rows], dtype=int),
                       np.array([float(r["confidence"]) for r in rows]), classes)
        except (KeyError, ValueError, TypeError):
            raise EscnetError(f"{path}: damaged predictions file (names a class the run does not "
                              "have, or a column is missing)") from None

    @classmethod
    def concat(cls, parts: list[Predictions]) -> Predictions:
        return cls([p for part in parts for p in part.paths],
                   np.concatenate([p.labels for p in parts]),
                   np.concatenate([p.predicted for p in parts]),
                   np.concatenate([p.confidence for p in parts]), parts[0].classes)


def write_metrics(folder: Path, preds: Predictions, figures: dict | None = None) -> dict:
    """``metrics.json``, ``per_class.csv`` and ``confusion.csv`` of ``preds`` into ``folder``;
    ``figures`` (:func:`~escnet.runs.metrics.held_out_figures`) join ``metrics.json``."""
    result = classification_metrics(preds.labels, preds.predicted, preds.classes) | (figures or {})
    per_class, confusion = io.StringIO(), io.StringIO()
    writer = csv.writer(per_class)
    writer.writerow(["class", "category", "accuracy", "clips"])
    support = np.asarray(result["confusion"]).sum(axis=1)
    for i, (name, acc) in enumerate(result["per_class_accuracy"].items()):
        writer.writerow([name, major_category(name) or "", "" if acc is None else f"{acc:.4f}",
                         int(support[i])])
    writer = csv.writer(confusion)
    writer.writerow(["true \\ predicted", *preds.classes])
    for name, row in zip(preds.classes, result["confusion"], strict=True):
        writer.writerow([name, *row])
    atomic_write_text(folder / "per_class.csv", per_class.getvalue())
    atomic_write_text(folder / "confusion.csv", confusion.getvalue())
    atomic_write_json(folder / "metrics.json", result)  # last: its presence means all three exist
    return result


# --- checkpoints --------------------------------------------------------------------------

def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors and plain values only) with the current format version."""
    atomic_write(path, lambda f: torch.save({"format": CHECKPOINT_FORMAT, **state}, f))


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else.

    Only tensors and plain values are unpickled (``weights_only=True``): a file that needs more
    is not trusted and never loaded.

    Raises:
        CheckpointError: missing, not a checkpoint, damaged, untrusted, or of another format.
    """
    path = Path(path)
    if path.is_dir() or not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "not an allowed global" in str(err):  # a pickle asking for more than weights
            raise CheckpointError(f"{path}: not a trusted escnet checkpoint (it holds Python objects "
                                  "beyond weights and plain values); escnet does not load it") from None
        raise CheckpointError(f"{path}: not an escnet checkpoint (not a PyTorch file)") from None
    except Exception:  # torch.load on arbitrary bytes raises anything (an audio file: IndexError)
        raise CheckpointError(f"{path}: not an escnet checkpoint, or a damaged or cut-off one") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path}: not an escnet checkpoint (no format version or weights)")
    version = ckpt["format"]
    if not isinstance(version, int) or version > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {version!r} was written by a newer escnet "
                              f"(this one reads format {CHECKPOINT_FORMAT}); upgrade escnet")
    if version < CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {version} was written by an older escnet "
                              f"(this one reads format {CHECKPOINT_FORMAT}); retrain the model")
    try:
        ckpt["config"] = from_dict(ckpt["config"], str(path))
        if not isinstance(ckpt["classes"], list) or len(ckpt["classes"]) != ckpt["config"].model.num_classes:
            raise CheckpointError(f"{path}: damaged checkpoint (its class list does not match its config)")
    except KeyError as err:
        raise CheckpointError(f"{path}: damaged checkpoint (no {err} entry)") from None
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """A :class:`~escnet.models.SoundClassifier` in eval mode from a checkpoint, with the
    checkpoint dict (its ``config`` a :class:`TaskConfig`)."""
    return _model_of(load_checkpoint(path, device), path, device)


def _model_of(ckpt: dict[str, Any], path: str | Path, device: str | torch.device):
    from escnet.models import SoundClassifier

    model = SoundClassifier.from_config(ckpt["config"], pretrained=False).to(device)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: its weights do not fit its own model settings "
                              f"({str(err).splitlines()[0]})") from None
    if hasattr(model.backbone, "tag_names"):
        model.backbone.tag_names = ckpt.get("tag_names")
    return model.eval(), ckpt


# --- the run directory --------------------------------------------------------------------

class RunDir:
    """A run directory at ``path``: its layout, and everything read from or written to it."""

    CONFIG, SUMMARY, EVALUATION = "config.yaml", "summary.json", "evaluation.json"
    REPORT, FIGURES = "report.html", "report"
    ROBUSTNESS = "robustness"  # .json, .csv, .png: escnet robustness, accuracy under corruptions
    HOLDOUT = "holdout"  # with train.refit: the run calibrated on validation clips, then refit
    LOCK = ".escnet.lock"  # held while a process trains or calibrates the run (:meth:`lock`)
    STAGING, COMMIT = ".staging", "COMMIT"  # a change of the run being made (:meth:`staged`)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # layout
    def fold_dir(self, fold: str) -> Path:
        return self.path / f"fold-{fold}"

    def checkpoint(self, fold: str, which: str = "last") -> Path:
        return self.fold_dir(fold) / f"{which}.pt"

    def predictions_path(self, fold: str) -> Path:
        return self.fold_dir(fold) / "predictions.csv"

    def history_path(self, fold: str) -> Path:
        return self.fold_dir(fold) / "metrics.jsonl"

    def calibration_path(self, fold: str) -> Path:
        return self.fold_dir(fold) / "calibration.json"

    def held_out_path(self, fold: str) -> Path:
        return self.fold_dir(fold) / "held_out.npz"

    @property
    def holdout_run(self) -> RunDir:
        """``holdout/``: with ``train.refit``, the run whose fold models were calibrated on
        their validation clips before the fold models here were trained on every clip."""
        return RunDir(self.path / self.HOLDOUT)

    @property
    def exists(self) -> bool:
        """Whether a run was started here (its config is saved)."""
        return (self.path / self.CONFIG).is_file()

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def report_path(self) -> Path:
        return self.path / self.REPORT

    def figures_dir(self) -> Path:
        """``report/``, created: the report's figures as PNG files."""
        return make_output_dir(self.path / self.FIGURES)

    def robustness_path(self, suffix: str) -> Path:
        """``robustness.json``, ``.csv`` or ``.png``."""
        return self.path / f"{self.ROBUSTNESS}{suffix}"

    def fold_names(self) -> list[str]:
        """Folds with a folder, in numeric order (``random`` last)."""
        names = [p.name.removeprefix("fold-") for p in self.path.glob("fold-*") if p.is_dir()]
        return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    # config
    def read_config(self) -> TaskConfig:
        self.recover()
        path = self.path / self.CONFIG
        if not self.path.is_dir():
            what = "a file, not a run folder" if self.path.exists() else "no such run folder"
            raise EscnetError(f"{self.path}: {what}")
        if not path.is_file():
            raise EscnetError(f"{self.path}: not an escnet run (no {self.CONFIG})")
        return from_dict(read_config_file(path), str(path))

    @cached_property
    def config(self) -> TaskConfig:
        return self.read_config()

    def check_startable(self, resume: bool = False) -> None:
        """Raise unless a new run may start here (a new or empty folder), or, with ``resume``,
        this is a run; called before any slow work, and again by :meth:`create`."""
        if resume:
            self.read_config()
        elif (self.path / self.CONFIG).exists():
            raise EscnetError(f"{self.path}: already holds a run; resume it or choose another "
                              "output folder")
        elif self.path.exists() and not self.path.is_dir():
            raise EscnetError(f"{self.path}: exists and is not a folder; choose another output folder")
        elif self.path.is_dir() and any(p.name != self.LOCK for p in self.path.iterdir()):
            raise EscnetError(f"{self.path}: a folder that is not empty and not an escnet run; "
                              "choose a new or empty output folder")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run folder for this process (an advisory ``fcntl`` lock on ``.escnet.lock``,
        released when the process ends however it ends): a second ``train --resume`` or
        ``calibrate`` of the same run is refused, naming the holder, instead of doing the work
        twice beside it. The folder is created; one left holding nothing else is removed."""
        make_output_dir(self.path)
        path = self.path / self.LOCK
        handle = hold_lock(path, "in use")
        try:
            self.recover(holder=True)
            yield
        finally:
            if [p.name for p in self.path.iterdir()] == [self.LOCK]:
                path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            handle.close()

    def recover(self, holder: bool = False) -> None:
        """Complete a change of the run (:meth:`staged`) that a kill cut off while it was being
        committed; with ``holder`` (this process holds :meth:`lock`), also drop one cut off
        before its commit began, leaving the run as it was."""
        stage = self.path / self.STAGING
        commit = stage / self.COMMIT
        if commit.is_file():
            for name in json.loads(commit.read_text()):
                with contextlib.suppress(FileNotFoundError):  # moved already (by another reader)
                    os.replace(stage / name, self.path / name)
        if commit.is_file() or (holder and stage.is_dir()):
            shutil.rmtree(stage, ignore_errors=True)
            for key in ("config", "summary", "histories", "classes"):
                self.__dict__.pop(key, None)

    @contextlib.contextmanager
    def staged(self) -> Iterator[RunDir]:
        """A copy of this run to change, for a process that holds :meth:`lock`: every file hard
        linked into ``RUNDIR/.staging`` (cheap; every write escnet makes replaces a file, so the
        run's own stay as they were). When the block ends without an error, the files it changed
        or added replace the run's in one commit: the list is written first, then each file is
        moved, and a kill in between is completed by the next process that opens the run. An
        error, or a kill before the commit, leaves the run exactly as it was."""
        stage = self.path / self.STAGING
        shutil.rmtree(stage, ignore_errors=True)
        files = [p for p in self.path.rglob("*") if p.name != self.LOCK and p.is_file()
                 and self.STAGING not in p.relative_to(self.path).parts]
        try:
            for src in files:
                dst = stage / src.relative_to(self.path)
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:  # a file system without hard links
                    shutil.copy2(src, dst)
            yield RunDir(stage)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        old = {p.relative_to(self.path).as_posix(): p.stat().st_ino for p in files}
        changed = [p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file()
                   and old.get(p.relative_to(stage).as_posix()) != p.stat().st_ino]
        for name in changed:  # folders the new files go in, before the commit starts
            (self.path / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stage / self.COMMIT, changed)
        self.recover()

    def create(self, config: TaskConfig, resume: bool = False,
               result_free: tuple[str, ...] = ()) -> None:
        """Start a run here (the folder must be new or empty), or, with ``resume``, check that
        ``config`` is this run's own (settings in ``result_free`` may differ); then save it."""
        self.check_startable(resume)
        if resume:
            old, new = self.read_config().flat(), config.flat()
            changed = [k for k, v in new.items() if old.get(k) != v and k not in result_free]
            if changed:
                raise EscnetError(f"{self.path}: cannot resume with different settings "
                                  f"({', '.join(changed)}); drop those changes or start a new run")
            for stale in self.path.rglob(".*.tmp*"):  # a write cut short by a kill
                stale.unlink(missing_ok=True)
        make_output_dir(self.path)
        config.save(self.path / self.CONFIG)
        self.__dict__["config"] = config

    # checkpoints of this run
    def load_checkpoint(self, fold: str, which: str = "last", device: str | torch.device = "cpu"
                        ) -> dict[str, Any]:
        """A fold's checkpoint, refused unless it was trained here: for this fold, with this
        run's settings (those in ``RESULT_FREE`` apart)."""
        path = self.checkpoint(fold, which)
        ckpt = load_checkpoint(path, device)
        theirs, ours = ckpt["config"].flat(), self.config.flat()
        differ = [k for k in sorted(set(theirs) | set(ours))
                  if theirs.get(k) != ours.get(k) and k not in RESULT_FREE]
        if differ or str(ckpt.get("fold", fold)) != fold:
            why = f"its {', '.join(differ[:3])} differ" if differ else f"it is fold {ckpt['fold']}'s"
            raise CheckpointError(f"{path}: not this run's checkpoint ({why}; {self.path / self.CONFIG} "
                                  "says otherwise); it was copied from another run")
        return ckpt

    def load_model(self, fold: str, which: str = "last", device: str | torch.device = "cpu"):
        """:func:`load_model` of a fold's checkpoint, checked by :meth:`load_checkpoint`."""
        return _model_of(self.load_checkpoint(fold, which, device), self.checkpoint(fold, which), device)

    def save_epoch(self, fold: str, history: list[dict], weights: dict[str, torch.Tensor],
                   classes: list[str], training: dict[str, Any], tag_names: list[str] | None = None
                   ) -> None:
        """After an epoch of ``fold``: its log, ``best.pt`` when this epoch scored best so far,
        and ``last.pt``, each written atomically (a kill loses one epoch at most).

        ``weights`` are the scored weights; ``training`` what resuming needs beyond them
        (``optimizer``, ``scheduler``, and with EMA ``trained`` and ``ema_updates``);
        ``tag_names`` the names of an AudioSet head's outputs.
        """
        latest = history[-1]
        state = {"model": weights, "config": self.config.to_dict(), "classes": classes, "fold": fold,
                 "epoch": latest["epoch"], "test_accuracy": latest["test_accuracy"]}
        if tag_names:
            state["tag_names"] = tag_names
        self.write_history(fold, history)
        if latest["test_accuracy"] >= max(h["test_accuracy"] for h in history):
            save_checkpoint(self.checkpoint(fold, "best"), state)
        save_checkpoint(self.checkpoint(fold, "last"), {**state, **training, "history": history})

    def save_calibration(self, fold: str, calibration: Calibration, scorer: dict[str, torch.Tensor]
                         ) -> None:
        """A finished fold's calibration (:func:`escnet.engine.calibrate.calibrate`) and its
        unknown scorer's tensors: into its ``last.pt`` (``calibration``, ``unknown_scorer``), so
        that the checkpoint alone predicts calibrated, and ``calibration.json``."""
        ckpt = torch.load(self.checkpoint(fold), map_location="cpu", weights_only=True)
        save_checkpoint(self.checkpoint(fold), {**ckpt, "calibration": calibration.to_dict(),
                                                "unknown_scorer": scorer})
        atomic_write_json(self.calibration_path(fold), calibration.to_dict(), indent=2)

    def read_calibration(self, fold: str) -> Calibration:
        """``calibration.json`` of ``fold`` (uncalibrated for a run made before escnet calibrated)."""
        return Calibration.from_dict(self._read_json(
            self.calibration_path(fold).relative_to(self.path).as_posix()))

    def save_held_out(self, fold: str, logits: np.ndarray, labels: np.ndarray, paths: list[str],
                      truth: list[str], scores: dict[str, np.ndarray]) -> None:
        """The held-out clips' logits ``(clips, classes)``, labels (-1: a class left out of
        training, named in ``truth``) and unknown ``scores`` (``{name: (clips,)}``)."""
        def write(f) -> None:
            np.savez(f, logits=np.asarray(logits, np.float32), labels=np.asarray(labels, np.int64),
                     paths=np.array(paths, dtype=str), truth=np.array(truth, dtype=str),
                     **{f"score:{k}": np.asarray(v, np.float32) for k, v in scores.items()})
        atomic_write(self.held_out_path(fold), write)

    def read_held_out(self, fold: str) -> dict[str, np.ndarray] | None:
        """``held_out.npz`` of ``fold`` as arrays (scores under ``score:NAME``), or ``None`` (a
        run made before escnet kept it)."""
        path = self.held_out_path(fold)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                held = {k: z[k] for k in z.files}
            if {"logits", "labels", "paths", "truth"} - set(held):
                raise ValueError("a part is missing")
            return held
        except (OSError, ValueError):
            raise EscnetError(f"{path}: damaged; delete it and the fold's predictions.csv, then "
                              "resume the run to rewrite them") from None

    def fold_scores(self, folds: list[str]) -> list[FoldScores] | None:
        """Each fold's held-out logits with its calibration, or ``None`` when a
        fold lacks them (a run made before escnet kept them)."""
        parts = []
        for fold in folds:
            held = self.read_held_out(fold)
            if held is None:
                return None
            scores = {k.removeprefix("score:"): v for k, v in held.items() if k.startswith("score:")}
            parts.append(FoldScores(held["logits"], held["labels"], scores, self.read_calibration(fold)))
        return parts or None

    def figures(self, folds: list[str]) -> dict:
        """Calibration and open-set figures of ``folds`` pooled (:func:`held_out_figures`), or
        ``{}`` when a fold lacks its held-out logits."""
        parts = self.fold_scores(folds)
        operating = self.read_calibration(folds[0]).unknown_score if folds else None
        return held_out_figures(parts, operating) if parts else {}

    # per-epoch history
    def write_history(self, fold: str, history: list[dict]) -> None:
        make_output_dir(self.fold_dir(fold))
        atomic_write_text(self.history_path(fold),
                          "".join(json.dumps(h, allow_nan=False) + "\n" for h in history))

    def read_history(self, fold: str) -> list[dict]:
        path = self.history_path(fold)
        if not path.exists():
            return []
        try:
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EscnetError(f"{path}: damaged (not JSON lines); the run's checkpoint still holds "
                              "its history: resume the run to rewrite it") from None

    @cached_property
    def histories(self) -> dict[str, list[dict]]:
        """Per-epoch logs of every fold that logged an epoch."""
        return {f: h for f in self.fold_names() if (h := self.read_history(f))}

    @property
    def finished(self) -> list[str]:
        """Folds that ran all their epochs and whose held-out predictions are saved."""
        epochs = self.config.train.num_epochs
        return [f for f, h in self.histories.items()
                if len(h) >= epochs and self.predictions_path(f).exists()]

    def model_folds(self) -> list[str]:
        """Folds with a ``last.pt``, in order; refused when there is none."""
        have = [f for f in self.fold_names() if self.checkpoint(f).exists()]
        if not have:
            raise CheckpointError(f"{self.path}: no fold-*/last.pt checkpoints; is it an escnet run?")
        return have

    def models(self, fold: str | None = None) -> list[Path]:
        """The checkpoints this run stands for as a model, the one rule for predict, export,
        embed and serve: with ``fold``, that fold's ``last.pt``, refused unless the fold has
        finished training (its ``last.pt`` file itself may be given to use it as it is);
        without, every finished fold's (their average), the unfinished left out with a
        warning; refused when no fold has finished."""
        have = self.model_folds()
        if fold is not None:
            if fold not in have:
                raise CheckpointError(f"fold={fold}: no fold-{fold}/last.pt in {self.path} (folds with a "
                                      f"model: {', '.join(have)})")
            if fold not in self.finished:
                raise CheckpointError(f"fold={fold}: {self.progress([fold])}, unfinished; resume the run "
                                      f"to finish it, or give {self.checkpoint(fold)} itself to use it "
                                      "as it is")
            return [self.checkpoint(fold)]
        finished = [f for f in have if f in self.finished]
        if not finished:  # an average of half-trained models is no model to answer with
            raise CheckpointError(f"{self.path}: no fold has finished training ({self.progress(have)}); "
                                  "resume the run, or give a fold's last.pt to use it as it is")
        if len(finished) < len(have):
            log.warning("%s: using the finished folds %s; left out %s", self.path, ", ".join(finished),
                        self.progress([f for f in have if f not in finished]))
        return [self.checkpoint(f) for f in finished]

    def model(self, fold: str | None = None) -> Path:
        """The one checkpoint :meth:`models` gives: a run of several finished folds needs ``fold``."""
        paths = self.models(fold)
        if len(paths) > 1:
            folds = ", ".join(p.parent.name.removeprefix("fold-") for p in paths)
            raise CheckpointError(f"{self.path}: folds {folds} have models; choose one: fold=K")
        return paths[0]

    def progress(self, folds: list[str]) -> str:
        """How far ``folds`` got: ``fold 2 at epoch 3/30, ...``."""
        epochs = self.config.train.num_epochs
        return ", ".join(f"fold {f} at epoch {len(self.histories.get(f, []))}/{epochs}" for f in folds)

    def accuracy(self, fold: str) -> float:
        """The last epoch's held-out accuracy of ``fold`` (the reported one)."""
        return self.histories[fold][-1]["test_accuracy"]

    def mean_std(self) -> tuple[float, float]:
        return mean_std([self.accuracy(f) for f in self.finished])

    def require_finished(self, whole: bool = False) -> list[str]:
        """The finished folds, or an error saying how far each fold got; with ``whole``, also
        when a fold the summary counts is gone (figures pooled over the rest would no longer
        agree with it)."""
        if not self.finished:
            state = self.progress(list(self.histories))
            raise EscnetError(f"{self.path}: no finished fold yet ({state or 'no epoch logged'})")
        if whole and (gone := [f for f in self.summary.get("folds", {}) if f not in self.finished]):
            raise EscnetError(f"{self.path}: summary.json counts fold {gone[0]}, whose "
                              f"{self.fold_dir(gone[0]).name} has no finished model: the run is "
                              "damaged; resume it to train that fold again")
        return self.finished

    # summary and evaluation
    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / self.SUMMARY, summary, indent=2)
        self.__dict__.pop("summary", None)

    @cached_property
    def summary(self) -> dict:
        """``summary.json``, or ``{}`` before the first fold ends."""
        return self._read_json(self.SUMMARY)

    def write_evaluation(self, result: dict) -> None:
        atomic_write_json(self.path / self.EVALUATION, result)

    def read_evaluation(self) -> dict:
        return self._read_json(self.EVALUATION)

    def write_robustness(self, result: dict) -> None:
        """``robustness.json`` and ``robustness.csv`` (a row per corruption) of
        :func:`escnet.engine.robustness.robustness`'s ``result``; the folder need not be a run
        (``escnet robustness --out DIR``)."""
        make_output_dir(self.path)
        atomic_write_json(self.robustness_path(".json"), result, indent=2)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["corruption", "family", "severity", "accuracy", "drop", "std_over_folds"])
        for name, r in result["corruptions"].items():
            writer.writerow([name, r["family"], r["severity"], f"{r['accuracy']:.4f}",
                             f"{r['drop']:.4f}", f"{r['std']:.4f}"])
        atomic_write_text(self.robustness_path(".csv"), buffer.getvalue())

    def read_robustness(self) -> dict:
        """``robustness.json`` (:mod:`escnet.engine.robustness`), or ``{}``."""
        return self._read_json(self.robustness_path(".json").name)

    def _read_json(self, name: str) -> dict:
        path = self.path / name
        if not path.exists():
            return {}
        try:
            value = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise EscnetError(f"{path}: damaged (not valid JSON); delete it and rerun `escnet "
                              "evaluate` on the run to rebuild the figures") from None
        if not isinstance(value, dict):
            raise EscnetError(f"{path}: damaged (not a JSON object)")
        return value

    @cached_property
    def classes(self) -> list[str]:
        """Class names, from the summary or, before the first fold ends, a checkpoint."""
        if "classes" in self.summary:
            return list(self.summary["classes"])
        for fold in self.fold_names():
            if self.checkpoint(fold).exists():
                return load_checkpoint(self.checkpoint(fold))["classes"]
        raise EscnetError(f"{self.path}: no summary.json and no checkpoint: its classes are unknown")

    @property
    def status(self) -> str:
        planned = len(self.config.data.folds) or len(self.summary.get("folds", {}))
        if self.summary.get("status") == "complete" and len(self.finished) >= planned:
            return "complete"
        n = len(self.finished)
        return f"partial ({n} fold{'s' if n != 1 else ''} finished)"

    # held-out predictions and the metrics derived from them
    def save_predictions(self, fold: str, preds: Predictions) -> None:
        """A fold's ``predictions.csv``, then its metrics files."""
        preds.save(self.predictions_path(fold))
        write_metrics(self.fold_dir(fold), preds, self.figures([fold]))

    def complete_fold_files(self, fold: str) -> None:
        """Rewrite the metrics files of a fold whose predictions exist but whose metrics do not
        (a kill between the two writes)."""
        if self.predictions_path(fold).exists() and not (self.fold_dir(fold) / "metrics.json").exists():
            write_metrics(self.fold_dir(fold), Predictions.load(self.predictions_path(fold), self.classes),
                          self.figures([fold]))

    def predictions(self, folds: list[str] | None = None) -> Predictions | None:
        """Pooled held-out predictions of ``folds`` (default: the finished ones), or ``None``
        when any of them has none."""
        folds = self.finished if folds is None else folds
        files = [self.predictions_path(f) for f in folds]
        if not files or not all(p.exists() for p in files):
            return None
        return Predictions.concat([Predictions.load(p, self.classes) for p in files])

    def write_pooled_metrics(self, folds: list[str], classes: list[str]) -> dict:
        """Metrics pooled over ``folds`` into the run's top folder."""
        self.__dict__["classes"] = classes
        return write_metrics(self.path, self.predictions(folds), self.figures(folds))

    def fold_metrics(self, fold: str) -> dict:
        path = self.fold_dir(fold) / "metrics.json"
        with contextlib.suppress(json.JSONDecodeError, OSError, UnicodeDecodeError):
            return json.loads(path.read_text())
        return {}
