"""Training: k-fold cross-validation (or one random split), one fold at a time, top to bottom.

:func:`train` reads the dataset, builds the waveform cache, then for each held-out fold
:func:`train_fold` trains from scratch, scores the fold after every epoch and checkpoints (with
``train.refit`` twice, :func:`train_split`); the run directory (:class:`escnet.runs.RunDir`)
gets the summary after every fold.

Randomness is re-seeded from ``(seed, fold, epoch)`` at the start of every epoch, so a run
resumed from ``last.pt`` ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from escnet.config import RESULT_FREE, TaskConfig
from escnet.data.cache import build_waveform_cache
from escnet.data.tables import ClipTable, Split, load_table, make_splits
from escnet.engine import distributed
from escnet.engine.calibrate import finish_fold
from escnet.engine.data import TrainData, eval_loader, prepare_data, train_loader
from escnet.engine.distributed import ALONE, Ranks
from escnet.engine.evaluate import predict_loader, score
from escnet.errors import ConfigError, EscnetError
from escnet.machine import keep_freed_memory, machine_description
from escnet.models import SoundClassifier, count_parameters, resolve_args
from escnet.runs import RunDir, mean_std
from escnet.transforms.batch import BatchAugment

EpochCallback = Callable[[dict], None]


class DivergedError(EscnetError):
    """Training produced a non-finite loss; nothing of that epoch was saved."""

log = logging.getLogger("escnet")


def make_optimizer(model: torch.nn.Module, config: TaskConfig) -> torch.optim.Optimizer:
    t = config.train
    kind = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TaskConfig, steps: int):
    """Per-step schedule over ``steps`` optimiser steps, or ``None`` for a constant rate."""
    t = config.train
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if t.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.learning_rate, total_steps=steps)
    return None


def _seed(config: TaskConfig, fold_index: int, epoch: int) -> torch.Generator:
    """Seed torch for this (fold, epoch) and return a generator for the data order."""
    seed = config.train.seed * 1_000_003 + fold_index * 1009 + epoch
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_ema(model: torch.nn.Module, config: TaskConfig) -> AveragedModel | None:
    """The moving average of ``model``'s weights and buffers, or ``None`` with ``ema_decay=0``.

    The decay after ``n`` updates is ``min(ema_decay, (1 + n) / (10 + n))`` (as TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``): a fixed 0.998 would leave half the
    average on the random initial weights after 350 steps, and score near chance until then.
    """
    decay_max = config.train.ema_decay
    if decay_max == 0:
        return None

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates) -> None:
        decay = min(decay_max, (1 + int(updates)) / (10 + int(updates)))
        for avg, cur in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur, 1 - decay)
            else:  # BatchNorm's step count
                avg.copy_(cur)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def train_one_epoch(model, loader, optimizer, scheduler, device, config, desc: str,
                    progress: bool, ema: AveragedModel | None = None, backbone=None,
                    ranks: Ranks = ALONE) -> dict:
    """One pass over ``loader``. Returns loss, accuracy, and seconds spent waiting for data.

    Batch augmentation (mixing, SpecAugment) happens here, on ``device``; the loss takes the
    mixed class probabilities, and accuracy counts the unmixed labels. ``ema``, when given,
    is updated after every step. Under DDP, ``backbone`` is ``model.backbone`` wrapped in
    :class:`~torch.nn.parallel.DistributedDataParallel` (the featurizer has no weights), and
    loss and accuracy are those of all ranks' examples.
    """
    backbone = backbone or model.backbone
    model.train()
    augment = BatchAugment(config)
    total_loss, correct, seen, data_wait = 0.0, 0, 0, 0.0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and config.train.amp else contextlib.nullcontext())
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    tick = time.perf_counter()
    for batch in bar:
        data_wait += time.perf_counter() - tick
        label = batch["label"].to(device)
        targets = F.one_hot(label, config.model.num_classes).float()
        if "features" in batch:
            feats, frames = batch["features"].to(device), None
        else:
            wav, targets = augment.waveforms(batch["wav"].to(device), targets)
            feats, frames = model.features(wav, batch["length"].to(device))
        feats, targets = augment.features(feats, targets)
        if frames is not None:  # a random crop leaves at most its own length valid
            frames = frames.clamp(max=feats.shape[-1])
        with autocast:
            logits = backbone(feats, frames)
            loss = F.cross_entropy(logits.float(), targets,
                                   label_smoothing=config.train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss.item() * len(label)
        correct += (logits.argmax(1) == label).sum().item()
        seen += len(label)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        tick = time.perf_counter()
    total_loss, correct, seen = ranks.total(total_loss, correct, seen)
    return {"train_loss": total_loss / seen, "train_accuracy": correct / seen,
            "data_seconds": data_wait}


def train_split(config: TaskConfig, data: TrainData, table: ClipTable, split: Split, run: RunDir,
                progress: bool = True, callbacks: Sequence[EpochCallback] = (), ranks: Ranks = ALONE
                ) -> dict:
    """One held-out split: :func:`train_fold`. With ``train.refit``, twice: first the holdout
    model (trained without the validation clips, calibrated on them) in ``run.holdout_run``,
    then the split's model, trained afresh with the same seeds on the training and validation
    clips together, which carries the holdout model's calibration. Epoch logs of the first
    come to ``callbacks`` with ``"stage": "holdout"``."""
    if not config.train.refit:
        return train_fold(config, data, table, split, run, progress, callbacks, ranks)
    tagged = [lambda entry, c=c: c(entry | {"stage": "holdout"}) for c in callbacks]
    train_fold(holdout_config(config), data, table, split, run.holdout_run, progress, tagged, ranks)
    every = split._replace(train=np.union1d(split.train, split.validation),
                           validation=split.validation[:0])
    return train_fold(config, data, table, every, run, progress, callbacks, ranks)


def holdout_config(config: TaskConfig) -> TaskConfig:
    """The settings of a ``train.refit`` run's holdout run: the same, without refitting."""
    return config.replace({"train.refit": False})


def train_fold(config: TaskConfig, data: TrainData, table: ClipTable, split: Split, run: RunDir,
               progress: bool = True, callbacks: Sequence[EpochCallback] = (), ranks: Ranks = ALONE
               ) -> dict:
    """Train on ``split.train``, test on ``split.test`` after each epoch; resume from
    ``last.pt``. Then calibrate on ``split.validation`` and keep the held-out logits (with
    those of ``split.unknown``). Under DDP every rank runs this; only rank 0 writes."""
    name, train_idx, test_idx = split.name, split.train, split.test
    fold_index = int(name) if name.isdigit() else 0  # same seeds whichever folds are run
    device = torch.device(config.resolved_device())
    _seed(config, fold_index, 0)
    model = SoundClassifier.from_config(config).to(device)
    backbone = None
    if ranks.active:  # the same initial weights on every rank (same seed), gradients averaged
        # BatchNorm over the global batch: PyTorch's SyncBatchNorm on GPUs, escnet's on CPU
        model.backbone = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
                          if device.type == "cuda" else distributed.group_batch_norm(model.backbone))
        backbone = torch.nn.parallel.DistributedDataParallel(
            model.backbone, device_ids=[device.index or 0] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(train_loader(data, table, train_idx, config, torch.Generator(),
                                       ranks.rank, ranks.world))
    scheduler = make_scheduler(optimizer, config, steps_per_epoch * config.train.num_epochs)
    ema = make_ema(model, config)
    scored = model if ema is None else ema.module  # the weights evaluated, saved and predicted with
    history: list[dict] = []
    if config.train.probe_epochs and not run.checkpoint(name).exists():
        probe_head(model, data, table, train_idx, config, device)  # (EMA copies it at its first update)
    if run.checkpoint(name).exists():
        state = run.load_checkpoint(name, "last", device)
        scored.load_state_dict(state["model"])
        if ema is not None:
            model.load_state_dict(state["trained"])
            ema.n_averaged.fill_(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
    tests = eval_loader(data.clips, table.labels, ranks.shard(test_idx), config)
    epochs = config.train.num_epochs
    for epoch in range(len(history) + 1, epochs + 1):
        start = time.perf_counter()
        loader = train_loader(data, table, train_idx, config, _seed(config, fold_index, epoch),
                              ranks.rank, ranks.world)
        entry = {"fold": name, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        entry |= train_one_epoch(model, loader, optimizer, scheduler, device, config,
                                 f"fold {name} epoch {epoch}/{epochs}", progress, ema, backbone, ranks)
        held_out = _held_out(scored, tests, device, ranks)
        entry |= {f"test_{k}": v for k, v in score(*held_out).items()}
        bad = [k for k in ("train_loss", "test_loss") if not math.isfinite(entry[k])]
        if bad:  # before anything of this epoch is saved
            raise DivergedError(f"fold {name} epoch {epoch}: the {bad[0].replace('_', ' ')} became "
                                f"{entry[bad[0]]} (not finite); lower train.learning_rate or check "
                                "the data; the run keeps its last good epoch and resumes from it")
        entry["seconds"] = time.perf_counter() - start
        history.append(entry)
        if ranks.main:  # with EMA, the average is scored and saved; resuming needs the trained weights
            training = {"optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None}
            if ema is not None:
                training |= {"trained": model.state_dict(), "ema_updates": int(ema.n_averaged)}
            run.save_epoch(name, history, scored.state_dict(), table.known_classes, training,
                           model.tag_names)
        for callback in callbacks:
            callback(entry)
    if config.train.wise_ft < 1 and history and "wise_ft" not in history[-1]:
        _average_with_start(scored, config, data, table, split, fold_index, device)
        held_out = _held_out(scored, tests, device, ranks)
        last = history[-1]
        last |= {"wise_ft": config.train.wise_ft, "test_accuracy_trained": last["test_accuracy"],
                 "test_loss_trained": last["test_loss"]}
        last |= {f"test_{k}": v for k, v in score(*held_out).items()}
        if ranks.main:  # the averaged weights are the model from now on (resume, export, predict)
            saved = run.load_checkpoint(name, "last", device)
            training = {k: saved[k] for k in ("optimizer", "scheduler", "trained", "ema_updates")
                        if k in saved}
            run.save_epoch(name, history, scored.state_dict(), table.known_classes, training,
                           model.tag_names)
    if ranks.main and not run.predictions_path(name).exists():  # the last epoch's, for reports
        finish_fold(scored, data.clips, table, split, run, config, device)
    if ranks.main:
        run.complete_fold_files(name)
    ranks.barrier()  # the fold's files are written before any rank goes on
    return fold_result(history, count_parameters(model))


def _average_with_start(model: SoundClassifier, config: TaskConfig, data: TrainData, table: ClipTable,
                        split: Split, fold_index: int, device: torch.device) -> None:
    """WiSE-FT: ``model``'s weights become ``wise_ft × trained + (1 - wise_ft) × start``, where
    ``start`` is rebuilt as training built it (same seed: the pretrained trunk, then the probed
    head), so a resumed run gets the same average as an uninterrupted one."""
    _seed(config, fold_index, 0)
    start = SoundClassifier.from_config(config).to(device)
    if config.train.probe_epochs:
        probe_head(start, data, table, split.train, config, device)
    first, alpha = start.state_dict(), config.train.wise_ft
    model.load_state_dict({k: (1 - alpha) * first[k] + alpha * v if v.is_floating_point() else v
                           for k, v in model.state_dict().items()})


def probe_head(model: SoundClassifier, data: TrainData, table: ClipTable, train_idx: np.ndarray,
               config: TaskConfig, device: torch.device) -> None:
    """Linear probing before fine-tuning (LP-FT; Kumar et al., ICLR 2022): train only the
    model's head, ``train.probe_epochs`` epochs on the training clips' embeddings under the
    pretrained trunk (computed once, BatchNorm in eval mode), so that fine-tuning starts from a
    head that already fits instead of sending a random head's gradients into the trunk.

    AdamW at ``train.probe_learning_rate`` on a cosine schedule, ``train.batch_size``,
    ``train.weight_decay`` and ``train.label_smoothing``; no augmentation. Seeded by the fold's
    epoch-0 seed, like the initial weights.
    """
    backbone = model.backbone
    if not hasattr(backbone, "embed"):
        raise ConfigError(f"setting train.probe_epochs={config.train.probe_epochs}: model "
                          f"{config.model.name} has no embedding to probe (the mn models have one)")
    model.eval()
    with torch.inference_mode():
        parts = [backbone.embed(batch["features"].to(device)) if "features" in batch else
                 model.embed(batch["wav"].to(device))
                 for batch in eval_loader(data.clips, table.labels, train_idx, config)]
    embeddings = torch.cat(parts).clone()  # out of inference mode, so autograd may use it
    labels = torch.from_numpy(table.labels[train_idx]).to(device)
    head, t = backbone.head, config.train
    head.train()
    optimizer = torch.optim.AdamW(head.parameters(), lr=t.probe_learning_rate, weight_decay=t.weight_decay)
    steps = math.ceil(len(labels) / t.batch_size) * t.probe_epochs
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(t.probe_epochs):
        for batch in torch.randperm(len(labels)).split(t.batch_size):
            loss = F.cross_entropy(head(embeddings[batch]), labels[batch], label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


def _held_out(model, tests, device: torch.device, ranks: Ranks) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of the whole held-out fold: each rank scores its share (every
    ``world``-th clip from its rank), put back in the fold's order."""
    logits, labels = predict_loader(model, tests, device)
    if not ranks.active:
        return logits, labels
    parts = ranks.gather((logits, labels))
    n = sum(len(p[1]) for p in parts)
    order = np.concatenate([np.arange(n)[r :: ranks.world] for r in range(ranks.world)])
    whole_logits = np.empty((len(order), logits.shape[1]), logits.dtype)
    whole_labels = np.empty(len(order), labels.dtype)
    whole_logits[order] = np.concatenate([p[0] for p in parts])
    whole_labels[order] = np.concatenate([p[1] for p in parts])
    return whole_logits, whole_labels


def fold_result(history: list[dict], parameters: int) -> dict:
    """What the summary keeps of a fold: its last epoch's accuracy, its best epoch, timings."""
    best = max(history, key=lambda h: h["test_accuracy"])
    return {"accuracy": history[-1]["test_accuracy"], "best_epoch": best["epoch"],
            "best_epoch_accuracy": best["test_accuracy"], "epochs": len(history),
            "epoch_seconds": [h["seconds"] for h in history], "parameters": parameters}


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
        raise ConfigError(f"--parallel-folds {parallel_folds}: must be 1 or more")
    run = RunDir(out_dir)
    started = time.perf_counter()
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
            raise ConfigError("--parallel-folds: not under torchrun (each fold already uses every process)")
        with run.lock() if ranks.main else contextlib.nullcontext():
            return _train_locked(config, run, table, resume, progress, callbacks, parallel_folds,
                                 parameters, ranks, started)
    finally:
        ranks.close()


def _train_locked(config: TaskConfig, run: RunDir, table: ClipTable, resume: bool, progress: bool,
                  callbacks: Sequence[EpochCallback], parallel_folds: int, parameters: int,
                  ranks: Ranks, started: float) -> dict:
    """:func:`train`'s work, while this process holds the run folder."""
    prepared = _prepare(config, run, resume, progress and ranks.main, ranks, ranks.main,
                        parallel_folds, table)
    if parallel_folds > 1:
        result = _train_parallel(prepared, run, resume, parallel_folds, parameters, callbacks, started)
    else:
        result = _train_folds(prepared, run, progress and ranks.main,
                              callbacks if ranks.main else (), ranks, started)
    ranks.barrier()  # gloo aborts a rank whose peer tears the group down under it
    return result


def train_fold_of_run(run_dir: str | Path, fold: str,
                      callbacks: Sequence[EpochCallback] = ()) -> dict:
    """Train (or finish) one fold of the run at ``run_dir``, with its saved settings: one
    process of :func:`escnet.engine.parallel.train_folds_in_parallel`. The data, seeds and files
    are those of a sequential run. Returns what the summary keeps of the fold."""
    run = RunDir(run_dir)
    keep_freed_memory()
    prepared = _prepare(run.read_config(), run, True, False, ALONE, talk=False)
    split = next((s for s in prepared.splits if s.name == fold), None)
    if split is None:
        raise ConfigError(f"fold {fold}: not a fold of {run.path}")
    data, _, _ = prepare_data(prepared.waves, prepared.table, prepared.config, False)
    return train_split(prepared.config, data, prepared.table, split, run, False, callbacks)


@dataclass
class _Prepared:
    """What every fold of a run starts from: the resolved config, the table and its cached
    waveforms, the splits, and the seconds the cache took."""

    config: TaskConfig
    table: ClipTable
    waves: np.ndarray
    splits: list[Split]
    cache_seconds: float


def _prepare(config: TaskConfig, run: RunDir, resume: bool, progress: bool, ranks: Ranks,
             talk: bool, parallel_folds: int = 1, table: ClipTable | None = None) -> _Prepared:
    """Check the run folder, read the dataset (unless its ``table`` was read already), build
    the waveform cache and (with ``talk``, the process that owns the run) save the resolved
    config."""
    run.check_startable(resume)  # a taken output folder, or one that is not a run to resume
    holdout = run.holdout_run if config.train.refit else None
    if resume:  # a damaged or foreign checkpoint fails now, not after the folds before it
        for r in (run, holdout) if holdout and holdout.exists else (run,):
            for fold in r.fold_names():
                if r.checkpoint(fold).exists():
                    r.load_checkpoint(fold)
    if table is None:
        table = load_table(config)
    make_splits(table, config)  # a fold setting the dataset cannot meet fails before the cache
    for note in table.notes if talk else ():  # the layout found, folds assigned, warnings
        log.info(note)
    said = len(table.notes)
    tick = time.perf_counter()
    if not ranks.main:  # rank 0 decodes, the others then read its cache
        ranks.barrier()
    waves, table = build_waveform_cache(table, config, progress)
    if ranks.main:
        ranks.barrier()
    cache_seconds = time.perf_counter() - tick
    for note in table.notes[said:] if talk else ():  # files left out
        log.info(note)
    config = resolve_model(config, len(table.known_classes))
    splits = make_splits(table, config)
    left = [s.name for s in splits if s.name not in (run.finished if resume else [])]
    if parallel_folds > 1 and parallel_folds > len(left):  # before the run folder is made
        raise ConfigError(f"--parallel-folds {parallel_folds}: only {len(left)} fold(s) left to train")
    if talk:
        run.create(config, resume, RESULT_FREE)
        if holdout:
            holdout.create(holdout_config(config), resume and holdout.exists, RESULT_FREE)
    ranks.barrier()
    return _Prepared(config, table, waves, splits, cache_seconds)


def _train_folds(p: _Prepared, run: RunDir, progress: bool, callbacks: Sequence[EpochCallback],
                 ranks: Ranks, started: float) -> dict:
    """Every fold in turn, in this process (and, under torchrun, its peers)."""
    data, augment_seconds, feature_seconds = prepare_data(p.waves, p.table, p.config, progress)
    if p.config.train.tensorboard and ranks.main:
        callbacks = [*callbacks, tensorboard_logger(run.tensorboard_dir)]
    folds: dict[str, dict] = {}
    summary: dict = {}
    for split in p.splits:
        folds[split.name] = train_split(p.config, data, p.table, split, run, progress, callbacks, ranks)
        if ranks.main:
            summary = _write_summary(run, p.config, p.table, folds, len(p.splits), p.cache_seconds,
                                     augment_seconds, feature_seconds, started)
    return summary


def _train_parallel(p: _Prepared, run: RunDir, resume: bool, k: int, parameters: int,
                    callbacks: Sequence[EpochCallback], started: float) -> dict:
    """The unfinished folds, ``k`` processes at a time; then the summary of them all."""
    from escnet.engine.parallel import train_folds_in_parallel

    left = [s.name for s in p.splits if s.name not in (run.finished if resume else [])]
    trained = train_folds_in_parallel(run, left, k, callbacks)
    folds = {s.name: trained.get(s.name) or fold_result(run.read_history(s.name), parameters)
             for s in p.splits}
    return _write_summary(run, p.config, p.table, folds, len(p.splits), p.cache_seconds, 0.0, 0.0,
                          started)


def _write_summary(run: RunDir, config: TaskConfig, table: ClipTable, folds: dict[str, dict],
                   planned: int, cache_seconds: float, augment_seconds: float,
                   feature_seconds: float, started: float) -> dict:
    """The pooled metrics of the folds done so far, and the summary (with ``train.refit``,
    the holdout run's too)."""
    pooled = run.write_pooled_metrics(list(folds), table.known_classes)
    summary = _summary(config, table, folds, planned, cache_seconds + augment_seconds,
                       feature_seconds, time.perf_counter() - started)
    summary["macro_f1_pooled"] = pooled["macro_f1"]
    for key in ("calibration", "open_set"):  # the pooled figures, for the end-of-run lines
        if key in pooled:
            summary[key] = pooled[key]
    if config.train.refit:  # what holding the validation clips out would have scored
        held = run.holdout_run
        done = {f: fold_result(held.read_history(f), r["parameters"]) for f, r in folds.items()}
        first = _write_summary(held, holdout_config(config), table, done, planned, cache_seconds,
                               augment_seconds, feature_seconds, started)
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
    if held := summary.get("holdout"):
        lines.append(f"  (calibrated on models trained without their validation clips, which made "
                     f"{100 * held['accuracy_mean']:.1f} % ± {100 * held['accuracy_std']:.1f}: "
                     "holdout/)")
    if cal := summary.get("calibration"):
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
