"""Training: the cross-validation protocol (or one random split), one fold at a time.

:func:`train` reads the dataset, builds the waveform cache (:class:`~escnet.runs.RunData`),
then for each held-out split trains a fold (:class:`~escnet.engine.fold.FoldTrainer`: from
scratch or pretrained weights, scored after every epoch, checkpointed, calibrated) and
rewrites the run's summary after every fold (:class:`escnet.runs.RunDir`). Folds may train in
parallel processes (:mod:`escnet.engine.parallel`) or, under ``torchrun``, each on every
process (:mod:`escnet.engine.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from escnet.config import RESULT_FREE, TaskConfig
from escnet.data.tables import ClipTable, Split, load_table
from escnet.engine import distributed
from escnet.engine.data import prepare_data
from escnet.engine.distributed import ALONE, Ranks
from escnet.engine.fold import EpochCallback, FoldTrainer, fold_result, holdout_config
from escnet.errors import ConfigError, EscnetError
from escnet.machine import keep_freed_memory, machine_description
from escnet.models import SoundClassifier, list_models, resolve_args
from escnet.runs import RunData, RunDir, mean_std
from escnet.runs.metrics import UNCALIBRATED, calibrated

log = logging.getLogger("escnet")

def resolve_model(config: TaskConfig, num_classes: int) -> TaskConfig:
    """``config`` with the dataset's class count and every model argument written out."""
    return config.replace({"model.num_classes": num_classes,
                           "model.args": resolve_args(config.model.name, config.model.args)})


def train(config: TaskConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          callbacks: Sequence[EpochCallback] = (), parallel_folds: int = 1) -> dict:
    """Train ``config.model`` under ``data.protocol``; write the run to ``out_dir``.

    With ``resume``, ``out_dir`` must hold a run made with the same config: finished folds are
    kept, an unfinished one continues from its ``last.pt``. ``callbacks`` get each epoch's log.
    ``parallel_folds`` > 1 trains that many folds at once, each in its own process
    (:mod:`escnet.engine.parallel`). Under ``torchrun`` every process calls this and trains each
    fold together (:mod:`.distributed`).

    Returns:
        The summary also written to ``out_dir/summary.json`` (``{}`` on ranks other than 0).
    """
    if parallel_folds < 1:
        raise ConfigError(f"parallel_folds={parallel_folds}: must be 1 or more")
    run = RunDir(out_dir)
    started = time.perf_counter()
    list_models()  # the model modules imported before malloc is tuned, on the heap they leave
    keep_freed_memory()  # reuse freed activations instead of page-faulting them in (machine.py)
    # fail on a bad dataset, model setting, weights or device before any slow work (a weights
    # download is one: the dataset is read first, without decoding) and before the run folder
    table = load_table(config)
    parameters = SoundClassifier.check(config)
    config.resolved_device()
    run.check_startable(resume)
    ranks = distributed.setup(config)
    try:
        if parallel_folds > 1 and ranks.active:
            raise ConfigError(f"parallel_folds={parallel_folds}: not under torchrun (each fold "
                              "already uses every process)")
        with run.lock() if ranks.main else contextlib.nullcontext():
            protocol = _Protocol.prepare(config, run, table, resume, progress and ranks.main, ranks,
                                         parallel_folds)
            protocol.parameters, protocol.started = parameters, started
            if parallel_folds > 1:
                summary = protocol.train_parallel(parallel_folds, callbacks)
            else:
                summary = protocol.train_folds(callbacks if ranks.main else ())
            ranks.barrier()  # gloo aborts a rank whose peer tears the group down under it
            return summary
    finally:
        ranks.close()


def train_fold_of_run(run_dir: str | Path, fold: str,
                      callbacks: Sequence[EpochCallback] = ()) -> dict:
    """Train (or finish) one fold of the run at ``run_dir``, with its saved settings: one
    process of :func:`escnet.engine.parallel.train_folds_in_parallel`. The data, seeds and files
    are those of a sequential run. Returns what the summary keeps of the fold."""
    run = RunDir(run_dir)
    list_models()
    keep_freed_memory()
    config = run.read_config()
    protocol = _Protocol.prepare(config, run, load_table(config), True, False, ALONE, 1, talk=False)
    split = next((s for s in protocol.splits if s.name == fold), None)
    if split is None:
        raise ConfigError(f"fold {fold}: not a fold of {run.path}")
    train_data = prepare_data(protocol.data.waves, protocol.data.table, protocol.config, False)[0]
    trainer = FoldTrainer(protocol.config, train_data, protocol.data.table, run, False, callbacks)
    return trainer.train_split(split)


@dataclass
class _Protocol:
    """A run's cross-validation as it goes: the resolved config, its data (the cache built), the
    splits, who trains and writes it; the seconds spent so far."""

    config: TaskConfig
    run: RunDir
    data: RunData
    resume: bool
    progress: bool
    ranks: Ranks
    cache_seconds: float
    extra_seconds: tuple[float, float] = (0.0, 0.0)
    """Seconds spent on augmented copies and on log-mels computed once."""
    parameters: int = 0
    started: float = 0.0

    @property
    def splits(self) -> list[Split]:
        return list(self.data.splits.values())

    @classmethod
    def prepare(cls, config: TaskConfig, run: RunDir, table: ClipTable, resume: bool, progress: bool,
                ranks: Ranks, parallel_folds: int, talk: bool = True) -> _Protocol:
        """Check the run folder, open the data (rank 0 builds the waveform cache, the others
        then read it) and (the process that owns the run) save the resolved config."""
        run.check_startable(resume)  # a taken output folder, or one that is not a run to resume
        holdout = run.holdout_run if config.train.refit else None
        if resume:  # a damaged or foreign checkpoint fails now, not after the folds before it
            for r in (run, holdout) if holdout and holdout.exists else (run,):
                for fold in r.fold_names():
                    if r.checkpoint(fold).exists():
                        r.load_checkpoint(fold)
        data = RunData.open(config, progress, talk and ranks.main, table)
        tick = time.perf_counter()
        if not ranks.main:
            ranks.barrier()
        data.waves  # noqa: B018  (decoded once into the cache)
        if ranks.main:
            ranks.barrier()
        cache_seconds = time.perf_counter() - tick
        data.config = config = resolve_model(config, len(data.table.known_classes))
        if talk and ranks.main and config.train.validation_share > 0:
            for split in data.splits.values():
                if not len(split.validation):
                    log.warning("fold %s: no clip of its training folds could be held out to calibrate "
                                "on (too few clips per class for train.validation_share=%g): its model "
                                "will be uncalibrated and never answer \"unknown\"", split.name,
                                config.train.validation_share)
        left = [s.name for s in data.splits.values() if s.name not in (run.finished if resume else [])]
        if parallel_folds > 1 and parallel_folds > len(left):  # before the run folder is made
            raise ConfigError(f"parallel_folds={parallel_folds}: only {len(left)} fold(s) left to train")
        if talk and ranks.main:
            run.create(config, resume, RESULT_FREE)
            if holdout:
                holdout.create(holdout_config(config), resume and holdout.exists, RESULT_FREE)
        ranks.barrier()
        return cls(config, run, data, resume, progress, ranks, cache_seconds)

    def train_folds(self, callbacks: Sequence[EpochCallback]) -> dict:
        """Every fold in turn, in this process (and, under torchrun, its peers)."""
        train_data, *extra = prepare_data(self.data.waves, self.data.table, self.config, self.progress)
        self.extra_seconds = tuple(extra)
        if self.config.train.tensorboard and self.ranks.main:
            callbacks = [*callbacks, tensorboard_logger(self.run.tensorboard_dir)]
        trainer = FoldTrainer(self.config, train_data, self.data.table, self.run, self.progress,
                              callbacks, self.ranks)
        folds: dict[str, dict] = {}
        summary: dict = {}
        for split in self.splits:
            folds[split.name] = trainer.train_split(split)
            if self.ranks.main:
                summary = self.write_summary(self.run, self.config, folds)
        return summary

    def train_parallel(self, k: int, callbacks: Sequence[EpochCallback]) -> dict:
        """The unfinished folds, ``k`` processes at a time; then the summary of them all."""
        from escnet.engine.parallel import train_folds_in_parallel

        left = [s.name for s in self.splits if s.name not in (self.run.finished if self.resume else [])]
        trained = train_folds_in_parallel(self.run, left, k, callbacks)
        folds = {s.name: trained.get(s.name) or fold_result(self.run.read_history(s.name), self.parameters)
                 for s in self.splits}
        return self.write_summary(self.run, self.config, folds)

    def write_summary(self, run: RunDir, config: TaskConfig, folds: dict[str, dict]) -> dict:
        """The pooled metrics of the folds done so far, and the summary (with ``train.refit``,
        the holdout run's too)."""
        table = self.data.table
        pooled = run.write_pooled_metrics(list(folds), table.known_classes)
        summary = _summary(config, table, folds, len(self.splits), self.cache_seconds + self.extra_seconds[0],
                           self.extra_seconds[1], time.perf_counter() - self.started)
        summary["macro_f1_pooled"] = pooled["macro_f1"]
        for key in ("calibration", "open_set"):  # the pooled figures, for the end-of-run lines
            if key in pooled:
                summary[key] = pooled[key]
        if config.train.refit:  # what holding the validation clips out would have scored
            held = run.holdout_run
            done = {f: fold_result(held.read_history(f), r["parameters"]) for f, r in folds.items()}
            first = self.write_summary(held, holdout_config(config), done)
            summary["holdout"] = {k: first[k] for k in ("folds", "accuracy_mean", "accuracy_std")}
        run.write_summary(summary)
        return summary


def tensorboard_logger(folder: Path) -> EpochCallback:
    """A callback writing each epoch's numbers as TensorBoard scalars ``fold-K/name``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise EscnetError("setting train.tensorboard=true: needs the tensorboard package "
                          "(pip install tensorboard)") from None
    writer = SummaryWriter(str(folder))

    def write(entry: dict) -> None:
        tag = f"fold-{entry['fold']}" + (f"-{entry['stage']}" if "stage" in entry else "")
        for key, value in entry.items():
            if key not in ("fold", "epoch", "stage"):
                writer.add_scalar(f"{tag}/{key}", value, entry["epoch"])
        writer.flush()

    return write


def _summary(config: TaskConfig, table: ClipTable, folds: dict[str, dict], planned: int,
             cache_seconds: float, feature_seconds: float, wall_seconds: float) -> dict:
    """The summary's figures (without the pooled metrics)."""
    mean, std = mean_std([f["accuracy"] for f in folds.values()])
    epoch_seconds = [s for f in folds.values() for s in f["epoch_seconds"]]
    return {
        "model": config.model.name,
        "protocol": config.data.protocol,
        "status": "complete" if len(folds) == planned else f"partial ({len(folds)}/{planned} folds)",
        "folds": {name: f["accuracy"] for name, f in folds.items()},
        "accuracy_mean": mean,
        "accuracy_std": std,
        "best_epoch_accuracy": {name: f["best_epoch_accuracy"] for name, f in folds.items()},
        "epochs": config.train.num_epochs,
        "parameters": next(iter(folds.values()))["parameters"],
        "classes": table.known_classes,
        "unknown_classes": table.classes[len(table.known_classes):],
        "clips": len(table),
        "data": table.source,
        "cache_seconds": round(cache_seconds, 2),  # decode + resample + augmented copies, once
        "feature_seconds": round(feature_seconds, 2),  # log-mels of every clip, once per run
        "first_epoch_seconds": round(epoch_seconds[0], 2),
        "epoch_seconds_median": round(float(np.median(epoch_seconds)), 2),
        "wall_seconds": round(wall_seconds, 1),
        "machine": machine_description(),
        "device": config.resolved_device(),
    }


def format_summary(summary: dict) -> str:
    """Human-readable lines for the end of a run."""
    lines = [f"{summary['model']} — {summary['protocol']} protocol, {summary['status']}"]
    for name, acc in summary["folds"].items():
        lines.append(f"  fold {name}: {100 * acc:.1f} %")
    lines.append(f"  mean: {100 * summary['accuracy_mean']:.1f} % "
                 f"± {100 * summary['accuracy_std']:.1f} (std over folds)")
    cal = summary.get("calibration")
    if cal and not calibrated(cal):
        lines.append(f"  {UNCALIBRATED}")
        return "\n".join(lines)
    if held := summary.get("holdout"):
        lines.append(f"  (calibrated on models trained without their validation clips, which made "
                     f"{100 * held['accuracy_mean']:.1f} % ± {100 * held['accuracy_std']:.1f}: "
                     "holdout/)")
    if cal:
        lines.append(f"  calibration (held-out, pooled): ECE {cal['ece_before']:.3f} → "
                     f"{cal['ece_after']:.3f}, NLL {cal['nll_before']:.3f} → {cal['nll_after']:.3f}")
    if (o := summary.get("open_set")) and "false_acceptance" in o:
        lines.append(f"  unknown classes: AUROC {o['auroc']:.3f}; at the threshold "
                     f"{100 * o['known_kept']:.1f} % of known clips kept, "
                     f"{100 * o['false_acceptance']:.1f} % of unknown clips accepted")
    return "\n".join(lines)


def format_epoch(entry: dict, epochs: int) -> str:
    """One line for an epoch's log."""
    stage = f" ({entry['stage']} model)" if "stage" in entry else ""
    return (f"fold {entry['fold']}{stage} epoch {entry['epoch']:>3}/{epochs}: train loss "
            f"{entry['train_loss']:.3f} acc {entry['train_accuracy']:.3f} | test loss "
            f"{entry['test_loss']:.3f} acc {entry['test_accuracy']:.3f} | {entry['seconds']:.1f} s")
