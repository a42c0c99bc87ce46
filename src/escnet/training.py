"""Training: k-fold cross-validation (or one random split), one fold at a time, top to bottom.

A run directory holds::

    config.yaml            the resolved TaskConfig
    summary.json           per-fold and mean ± std accuracy (rewritten after every fold)
    fold-K/metrics.jsonl   one line per epoch
    fold-K/last.pt         everything needed to resume (model, optimiser, scheduler, history)
    fold-K/best.pt         the epoch with the best held-out accuracy (for inspection only:
                           the reported accuracy is the last epoch's, since picking the best
                           epoch on the test fold would be optimistic)
    fold-K/predictions.csv the last epoch's held-out predictions (path, label, predicted,
                           confidence), and fold-K/metrics.json, per_class.csv, confusion.csv
    metrics.json, per_class.csv, confusion.csv   the same pooled over the finished folds
    tensorboard/           per-epoch scalars, with ``tensorboard: true``

Randomness is re-seeded from ``(seed, fold, epoch)`` at the start of every epoch, so a run
resumed from ``last.pt`` ends with exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from escnet.augmentation import BatchAugment, WaveformAugment, augmented_copies
from escnet.config import TaskConfig, from_dict, read_config_file
from escnet.datasets import (
    ClipTable,
    PickCopies,
    build_waveform_cache,
    class_balanced_sampler,
    clip_dataset,
    collate,
    load_table,
    make_splits,
)
from escnet.errors import EscnetError, make_output_dir
from escnet.evaluation import eval_loader, predict_loader, score, to_predictions
from escnet.features import Featurizer, compute_features
from escnet.metrics import Predictions, write_metrics
from escnet.models import SoundClassifier
from escnet.runtime import keep_freed_memory

EpochCallback = Callable[[dict], None]
CHECKPOINT_FORMAT = 1


def read_run_config(run_dir: Path) -> TaskConfig:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise EscnetError(f"{run_dir}: not an escnet run (no config.yaml)")
    return from_dict(read_config_file(path), str(path))


def make_optimizer(model: torch.nn.Module, config: TaskConfig) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TaskConfig, steps: int):
    """Per-step schedule over ``steps`` optimiser steps, or ``None`` for a constant rate."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if config.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate,
                                                   total_steps=steps)
    return None


def _seed(config: TaskConfig, fold_index: int, epoch: int) -> torch.Generator:
    """Seed torch for this (fold, epoch) and return a generator for the data order."""
    seed = config.seed * 1_000_003 + fold_index * 1009 + epoch
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class TrainData:
    """What training batches are drawn from.

    ``clips``: the cached waveforms ``(clips, samples)`` or their log-mels
    ``(clips, n_mels, frames)``; the held-out fold is always scored on these. ``copies``: the
    same layout, augmented copies of every clip; when present, each epoch trains on one copy of
    each clip, drawn at random. ``augment``: waveform augmentation run per item (no copies).
    """

    clips: object
    copies: list = field(default_factory=list)
    augment: WaveformAugment | None = None


def train_loader(data: TrainData, table: ClipTable, indices: np.ndarray, config: TaskConfig,
                 generator: torch.Generator) -> DataLoader:
    """Shuffled (or class-balanced) loader over ``indices`` of the training clips.

    The order, the copy of each clip and the augmentation seeds all come from ``generator``
    here, before any worker starts, so they do not depend on ``num_workers``.
    """
    source = data.clips
    if data.copies:
        choice = torch.randint(len(data.copies), (len(table),), generator=generator).numpy()
        source = PickCopies(data.copies, choice)
    # DataLoader draws a worker seed from its generator before shuffling; making the same draw
    # keeps the data order earlier escnet versions produced with num_workers=0.
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    if config.balanced_sampling:
        order = np.array(list(class_balanced_sampler(table.labels[indices], generator)))
    else:
        order = torch.randperm(len(indices), generator=generator).numpy()
    dataset = clip_dataset(source, table.labels, indices[order], data.augment,
                           generator.initial_seed())
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, collate_fn=collate,
                      num_workers=config.num_workers, drop_last=len(indices) > config.batch_size)


def make_ema(model: torch.nn.Module, config: TaskConfig) -> AveragedModel | None:
    """The moving average of ``model``'s weights and buffers, or ``None`` with ``ema_decay=0``.

    The decay after ``n`` updates is ``min(ema_decay, (1 + n) / (10 + n))`` (as TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``): a fixed 0.998 would leave half the
    average on the random initial weights after 350 steps, and score near chance until then.
    """
    if config.ema_decay == 0:
        return None

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates) -> None:
        decay = min(config.ema_decay, (1 + int(updates)) / (10 + int(updates)))
        for avg, cur in zip(averaged, current, strict=True):
            if avg.is_floating_point():
                avg.lerp_(cur, 1 - decay)
            else:  # BatchNorm's step count
                avg.copy_(cur)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def train_one_epoch(model, loader, optimizer, scheduler, device, config, desc: str,
                    progress: bool, ema: AveragedModel | None = None) -> dict:
    """One pass over ``loader``. Returns loss, accuracy, and seconds spent waiting for data.

    Batch augmentation (mixing, SpecAugment) happens here, on ``device``; the loss takes the
    mixed class probabilities, and accuracy counts the unmixed labels. ``ema``, when given,
    is updated after every step.
    """
    model.train()
    augment = BatchAugment(config)
    total_loss, correct, seen, data_wait = 0.0, 0, 0, 0.0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and config.amp
                else contextlib.nullcontext())
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch")
    tick = time.perf_counter()
    for batch in bar:
        data_wait += time.perf_counter() - tick
        label = batch["label"].to(device)
        targets = F.one_hot(label, config.num_classes).float()
        if "features" in batch:
            feats, frames = batch["features"].to(device), None
        else:
            wav, targets = augment.waveforms(batch["wav"].to(device), targets)
            feats, frames = model.features(wav, batch["length"].to(device))
        feats, targets = augment.features(feats, targets)
        if frames is not None:  # a random crop leaves at most its own length valid
            frames = frames.clamp(max=feats.shape[-1])
        with autocast:
            logits = model.backbone(feats, frames)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=config.label_smoothing)
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
    return {"train_loss": total_loss / seen, "train_accuracy": correct / seen,
            "data_seconds": data_wait}


def train_fold(config: TaskConfig, data: TrainData, table: ClipTable, name: str,
               train_idx: np.ndarray, test_idx: np.ndarray, fold_dir: Path, progress: bool = True,
               callbacks: Sequence[EpochCallback] = ()) -> dict:
    """Train on ``train_idx``, test on ``test_idx`` after each epoch; resume from ``last.pt``."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    fold_index = int(name) if name.isdigit() else 0  # same seeds whichever folds are run
    device = torch.device(config.resolved_device())
    _seed(config, fold_index, 0)
    model = SoundClassifier(config).to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(train_loader(data, table, train_idx, config, torch.Generator()))
    scheduler = make_scheduler(optimizer, config, steps_per_epoch * config.num_epochs)
    ema = make_ema(model, config)
    scored = model if ema is None else ema.module  # the weights evaluated, saved and predicted with
    history: list[dict] = []
    last_path = fold_dir / "last.pt"
    if last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=True)
        scored.load_state_dict(state["model"])
        if ema is not None:
            model.load_state_dict(state["trained"])
            ema.n_averaged.fill_(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
    tests = eval_loader(data.clips, table.labels, test_idx, config)
    held_out = None  # the latest epoch's (logits, labels) on the test fold
    for epoch in range(len(history) + 1, config.num_epochs + 1):
        start = time.perf_counter()
        loader = train_loader(data, table, train_idx, config, _seed(config, fold_index, epoch))
        log = {"fold": name, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        log |= train_one_epoch(model, loader, optimizer, scheduler, device, config,
                               f"fold {name} epoch {epoch}/{config.num_epochs}", progress, ema)
        held_out = predict_loader(scored, tests, device)
        log |= {f"test_{k}": v for k, v in score(*held_out).items()}
        log["seconds"] = time.perf_counter() - start
        history.append(log)
        _save_epoch(fold_dir, model, ema, optimizer, scheduler, config, table, history)
        if progress:
            tqdm.write(f"fold {name} epoch {epoch:>3}/{config.num_epochs}: "
                       f"train loss {log['train_loss']:.3f} acc {log['train_accuracy']:.3f} | "
                       f"test loss {log['test_loss']:.3f} acc {log['test_accuracy']:.3f} | "
                       f"{log['seconds']:.1f} s")
        for callback in callbacks:
            callback(log)
    preds_path = fold_dir / "predictions.csv"
    if not preds_path.exists():  # the last epoch's held-out predictions, for metrics and reports
        logits, labels = held_out or predict_loader(scored, tests, device)
        preds = to_predictions(logits, labels, [str(table.paths[i]) for i in test_idx], table.classes)
        preds.save(preds_path)
        write_metrics(fold_dir, preds)
    best = max(history, key=lambda h: h["test_accuracy"])
    return {"accuracy": history[-1]["test_accuracy"], "best_epoch": best["epoch"],
            "best_epoch_accuracy": best["test_accuracy"], "epochs": len(history),
            "epoch_seconds": [h["seconds"] for h in history],
            "parameters": sum(p.numel() for p in model.parameters())}


def _save_epoch(fold_dir: Path, model, ema: AveragedModel | None, optimizer, scheduler,
                config: TaskConfig, table: ClipTable, history: list[dict]) -> None:
    """Write metrics and checkpoints atomically (temp file + rename) so a kill loses one epoch
    at most and never leaves a half-written checkpoint.

    ``model`` in a checkpoint is always the weights that were scored (the average, with EMA);
    with EMA, ``last.pt`` also keeps the trained weights and the update count to resume from.
    """
    scored = model if ema is None else ema.module
    weights = {"format": CHECKPOINT_FORMAT, "model": scored.state_dict(),
               "config": config.to_dict(), "classes": table.classes,
               "epoch": history[-1]["epoch"], "test_accuracy": history[-1]["test_accuracy"]}
    if history[-1]["test_accuracy"] >= max(h["test_accuracy"] for h in history):
        _atomic_save(weights, fold_dir / "best.pt")
    resume = {} if ema is None else {"trained": model.state_dict(),
                                     "ema_updates": int(ema.n_averaged)}
    _atomic_save({**weights, **resume, "optimizer": optimizer.state_dict(),
                  "scheduler": scheduler.state_dict() if scheduler is not None else None,
                  "history": history}, fold_dir / "last.pt")
    tmp = fold_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    tmp.replace(fold_dir / "metrics.jsonl")


def _atomic_save(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(config: TaskConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
          callbacks: Sequence[EpochCallback] = ()) -> dict:
    """Train ``config.model`` under ``config.protocol``; write the run to ``out_dir``.

    With ``resume``, ``out_dir`` must hold a run made with the same config: finished folds are
    kept, an unfinished one continues from its ``last.pt``.

    Returns:
        The summary also written to ``out_dir/summary.json``.
    """
    out_dir = Path(out_dir)
    started = time.perf_counter()
    keep_freed_memory()  # reuse freed activations instead of page-faulting them in (runtime.py)
    SoundClassifier(config)  # fail on a bad model setting before any slow work
    table = load_table(config)
    tick = time.perf_counter()
    waves, table = build_waveform_cache(table, config, progress)
    cache_seconds = time.perf_counter() - tick
    for note in table.notes:
        tqdm.write(f"escnet: {note}", file=sys.stderr)
    config = config.replace(num_classes=len(table.classes))
    splits = make_splits(table, config)
    _prepare_run_dir(out_dir, config, resume)
    data, augment_seconds, feature_seconds = prepare_data(waves, table, config, progress)
    if config.tensorboard:
        callbacks = [*callbacks, tensorboard_logger(out_dir / "tensorboard")]
    folds: dict[str, dict] = {}
    for name, train_idx, test_idx in splits:
        folds[name] = train_fold(config, data, table, name, train_idx, test_idx,
                                 out_dir / f"fold-{name}", progress, callbacks)
        pooled = write_metrics(out_dir, Predictions.concat(
            [Predictions.load(out_dir / f"fold-{n}" / "predictions.csv", table.classes) for n in folds]))
        summary = _summary(config, table, folds, len(splits), cache_seconds + augment_seconds,
                           feature_seconds, time.perf_counter() - started)
        summary["macro_f1_pooled"] = pooled["macro_f1"]
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def prepare_data(waves, table: ClipTable, config: TaskConfig, progress: bool = True
                 ) -> tuple[TrainData, float, float]:
    """Augmented copies (if asked for), then log-mels computed once where nothing changes the
    waveforms between epochs. Returns the data and the seconds spent on copies and features."""
    tick = time.perf_counter()
    make_copies = bool(config.augment) and config.augment_copies > 0
    copies = augmented_copies(waves, table, config, progress) if make_copies else []
    augment_seconds = time.perf_counter() - tick
    if not config.feature_cache or config.waveform_augment:
        augment = WaveformAugment(config) if config.augment and not copies else None
        return TrainData(waves, copies, augment), augment_seconds, 0.0
    tick = time.perf_counter()
    featurizer, device = Featurizer.from_config(config), torch.device(config.resolved_device())
    data = TrainData(compute_features(featurizer, waves, device),
                     [compute_features(featurizer, c, device) for c in copies])
    return data, augment_seconds, time.perf_counter() - tick


# Settings that do not change a run's numbers, so a resumed run may change them.
RESUME_FREE = ("num_workers", "tensorboard", "cache_dir", "device")


def _prepare_run_dir(out_dir: Path, config: TaskConfig, resume: bool) -> None:
    saved = out_dir / "config.yaml"
    if resume:
        old = read_run_config(out_dir)
        changed = [k for k, v in config.to_dict().items()
                   if old.to_dict()[k] != v and k not in RESUME_FREE]
        if changed:
            raise EscnetError(f"{out_dir}: cannot resume with different settings "
                              f"({', '.join(changed)}); drop those options or start a new run")
    elif saved.exists():
        raise EscnetError(f"{out_dir}: already holds a run; continue it with --resume {out_dir} "
                          "or choose another --out")
    make_output_dir(out_dir)
    config.save(saved)


def tensorboard_logger(folder: Path) -> EpochCallback:
    """A callback writing each epoch's numbers as TensorBoard scalars ``fold-K/name``."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise EscnetError("setting tensorboard=true: needs the tensorboard package "
                          "(pip install tensorboard)") from None
    writer = SummaryWriter(str(folder))

    def log(entry: dict) -> None:
        for key, value in entry.items():
            if key not in ("fold", "epoch"):
                writer.add_scalar(f"fold-{entry['fold']}/{key}", value, entry["epoch"])
        writer.flush()

    return log


def _summary(config: TaskConfig, table: ClipTable, folds: dict[str, dict], planned: int,
             cache_seconds: float, feature_seconds: float, wall_seconds: float) -> dict:
    accs = [f["accuracy"] for f in folds.values()]
    epoch_seconds = [s for f in folds.values() for s in f["epoch_seconds"]]
    return {
        "model": config.model,
        "protocol": config.protocol,
        "status": "complete" if len(folds) == planned else f"partial ({len(folds)}/{planned} folds)",
        "folds": {name: f["accuracy"] for name, f in folds.items()},
        "accuracy_mean": float(np.mean(accs)),
        "accuracy_std": float(np.std(accs)),  # population std over folds (ddof=0)
        "best_epoch_accuracy": {name: f["best_epoch_accuracy"] for name, f in folds.items()},
        "epochs": config.num_epochs,
        "parameters": next(iter(folds.values()))["parameters"],
        "classes": table.classes,
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
    return "\n".join(lines)


def machine_description() -> str:
    """CPU model, thread count and torch version, recorded with every result."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"
