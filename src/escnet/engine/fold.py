"""Training one held-out split (a fold), top to bottom: build the model (pretrained weights,
probing first), resume from ``last.pt``, then epoch after epoch train, score the held-out clips
and checkpoint; finally average with the start (WiSE-FT) and calibrate.

Randomness is re-seeded from ``(seed, fold, epoch)`` at the start of every epoch, so a run
resumed from ``last.pt`` ends with exactly the numbers of an uninterrupted one. The
cross-validation protocol around it is :mod:`escnet.engine.train`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from escnet.config import TaskConfig
from escnet.data.tables import ClipTable, Split
from escnet.engine import distributed
from escnet.engine.calibrate import finish_fold
from escnet.engine.data import TrainData, eval_loader, train_loader
from escnet.engine.distributed import ALONE, Ranks
from escnet.engine.evaluate import predict_loader, score
from escnet.errors import ConfigError, EscnetError
from escnet.models import SoundClassifier, count_parameters
from escnet.models.mobilenet import frame_seconds
from escnet.runs import RunDir
from escnet.transforms.batch import BatchAugment
from escnet.transforms.scenes import make_scenes

EpochCallback = Callable[[dict], None]


class DivergedError(EscnetError):
    """Training produced a non-finite loss; nothing of that epoch was saved."""


FRAME_HEAD_RATE = 10.0
"""A frame head (``model.args.frame_head``) and its context learn at this multiple of
``train.learning_rate``: the head starts as a copy of the clip head, which never had to say
where a sound is or that none is, and the context starts as the identity."""


def make_optimizer(model: torch.nn.Module, config: TaskConfig) -> torch.optim.Optimizer:
    t = config.train
    kind = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    backbone = getattr(model, "backbone", model)
    frames = backbone.frame_parameters() if hasattr(backbone, "frame_parameters") else []
    if not frames:
        return kind(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    own = {id(p) for p in frames}
    return kind([{"params": [p for p in model.parameters() if id(p) not in own]},
                 {"params": frames, "lr": t.learning_rate * FRAME_HEAD_RATE}],
                lr=t.learning_rate, weight_decay=t.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TaskConfig, steps: int):
    """Per-step schedule over ``steps`` optimiser steps, or ``None`` for a constant rate."""
    t = config.train
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    if t.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.learning_rate, total_steps=steps)
    return None


def seed_epoch(config: TaskConfig, fold_index: int, epoch: int) -> torch.Generator:
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


@dataclass
class Steps:
    """What one optimiser step updates: the optimiser, its schedule, the moving average of the
    weights (EMA) and, under DDP, the backbone wrapped in ``DistributedDataParallel`` (the
    featurizer has no weights)."""

    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    ema: AveragedModel | None = None
    backbone: torch.nn.Module | None = None


def train_one_epoch(model: SoundClassifier, loader, steps: Steps, config: TaskConfig,
                    device: torch.device, ranks: Ranks = ALONE, bar: str | None = None) -> dict:
    """One pass over ``loader``. Returns loss, accuracy, and seconds spent waiting for data;
    ``bar``: the progress bar's label (``None``: none).

    Batch augmentation (mixing, SpecAugment) happens here, on ``device``; the loss takes the
    mixed class probabilities, and accuracy counts the unmixed labels. The moving average, when
    there is one, is updated after every step. Under DDP loss and accuracy are those of all
    ranks' examples.
    """
    backbone = steps.backbone or model.backbone
    model.train()
    augment = BatchAugment(config)
    total_loss, correct, seen, data_wait = 0.0, 0, 0, 0.0
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and config.train.amp else contextlib.nullcontext())
    batches = tqdm(loader, desc=bar, leave=False, disable=bar is None, unit="batch")
    tick = time.perf_counter()
    for batch in batches:
        data_wait += time.perf_counter() - tick
        label = batch["label"].to(device)
        with autocast:
            logits, loss = (scene_loss if config.augment.scenes else clip_loss)(
                model, backbone, batch, config, device, augment)
        steps.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        steps.optimizer.step()
        if steps.scheduler is not None:
            steps.scheduler.step()
        if steps.ema is not None:
            steps.ema.update_parameters(model)
        total_loss += loss.item() * len(label)
        correct += (logits.argmax(1) == label).sum().item()
        seen += len(label)
        batches.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        tick = time.perf_counter()
    total_loss, correct, seen = ranks.total(total_loss, correct, seen)
    return {"train_loss": total_loss / seen, "train_accuracy": correct / seen, "data_seconds": data_wait}


def clip_loss(model: SoundClassifier, backbone: torch.nn.Module, batch: dict[str, torch.Tensor],
              config: TaskConfig, device: torch.device, augment: BatchAugment
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the cross-entropy of a batch of clips (waveforms, or log-mels computed once),
    after the batch transforms (mixing, crops, band limits, SpecAugment: elementwise, so
    autocast leaves them in float32, as it does the features)."""
    targets = F.one_hot(batch["label"].to(device), config.model.num_classes).float()
    if "features" in batch:
        feats, frames = batch["features"].to(device), None
    else:
        wav, targets = augment.waveforms(batch["wav"].to(device), targets)
        feats, frames = model.features(wav, batch["length"].to(device))
    feats, targets = augment.features(feats, targets)
    if frames is not None:  # a random crop leaves at most its own length valid
        frames = frames.clamp(max=feats.shape[-1])
    logits = backbone(feats, frames)
    return logits, F.cross_entropy(logits.float(), targets, label_smoothing=config.train.label_smoothing)


def scene_loss(model: SoundClassifier, backbone: torch.nn.Module, batch: dict[str, torch.Tensor],
               config: TaskConfig, device: torch.device, augment: BatchAugment
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip logits and the loss of a batch turned into soundscapes (``augment.scenes``,
    :func:`~escnet.transforms.scenes.make_scenes`, ``crop_seconds`` long or a clip long): the
    clip head's cross-entropy against each scene's share of its sounds (scenes with a sound),
    plus the frame head's binary cross-entropy against the share of each frame a class sounds,
    summed over classes (as a cross-entropy is) and averaged over frames."""
    scenes = make_scenes(batch["wav"].to(device), batch["length"].to(device), batch["label"].to(device),
                         config.model.num_classes, config.data.sample_rate, config.scene_seconds)
    feats, _ = model.features(scenes.wav)
    feats, _ = augment.features(feats, scenes.clip_targets)  # band limits; no crop, no mixup
    logits, frame_logits = backbone(feats, None, with_frames=True)
    sounding = scenes.clip_targets.sum(1) > 0
    clip = -(scenes.clip_targets[sounding] * F.log_softmax(logits.float()[sounding], 1)).sum(1).mean()
    step = frame_seconds(config.features.hop_length, config.data.sample_rate)
    frames = F.binary_cross_entropy_with_logits(
        frame_logits.float(), scenes.frame_targets(frame_logits.shape[1], step),
        reduction="none")
    return logits, clip + frames.sum(-1).mean()


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
    if hasattr(backbone, "start_frame_head"):  # frame training starts from the probed head
        backbone.start_frame_head()


def fold_result(history: list[dict], parameters: int) -> dict:
    """What the summary keeps of a fold: its last epoch's accuracy, its best epoch, timings."""
    best = max(history, key=lambda h: h["test_accuracy"])
    return {"accuracy": history[-1]["test_accuracy"], "best_epoch": best["epoch"],
            "best_epoch_accuracy": best["test_accuracy"], "epochs": len(history),
            "epoch_seconds": [h["seconds"] for h in history], "parameters": parameters}


def holdout_config(config: TaskConfig) -> TaskConfig:
    """The settings of a ``train.refit`` run's holdout run: the same, without refitting."""
    return config.replace({"train.refit": False})


@dataclass
class _Model:
    """A fold's model while it trains: ``scored`` is what is evaluated, saved and predicted
    with (the moving average with EMA, else ``model`` itself)."""

    model: SoundClassifier
    steps: Steps
    history: list[dict] = field(default_factory=list)

    @property
    def scored(self) -> SoundClassifier:
        return self.model if self.steps.ema is None else self.steps.ema.module


@dataclass
class FoldTrainer:
    """Trains the splits of one run: the run's settings, its training data and table, where it
    is written, and who is told each epoch's log. Under DDP every rank trains each split
    together; only rank 0 writes."""

    config: TaskConfig
    data: TrainData
    table: ClipTable
    run: RunDir
    progress: bool = True
    callbacks: Sequence[EpochCallback] = ()
    ranks: Ranks = ALONE

    def train_split(self, split: Split) -> dict:
        """One held-out split: :meth:`train_fold`. With ``train.refit``, twice: first the
        holdout model (trained without the validation clips, calibrated on them) in
        ``run.holdout_run``, then the split's model, trained afresh with the same seeds on the
        training and validation clips together, which carries the holdout model's
        calibration. Epoch logs of the first come to the callbacks with ``"stage": "holdout"``."""
        if not self.config.train.refit:
            return self.train_fold(split)
        tagged = [lambda entry, c=c: c(entry | {"stage": "holdout"}) for c in self.callbacks]
        first = FoldTrainer(holdout_config(self.config), self.data, self.table, self.run.holdout_run,
                            self.progress, tagged, self.ranks)
        first.train_fold(split)
        every = split._replace(train=np.union1d(split.train, split.validation),
                               validation=split.validation[:0])
        return self.train_fold(every)

    def train_fold(self, split: Split) -> dict:
        """Train on ``split.train``, test on ``split.test`` after each epoch; resume from
        ``last.pt``. Then calibrate on ``split.validation`` and keep the held-out logits (with
        those of ``split.unknown``). Returns what the summary keeps of the fold."""
        fold_index = int(split.name) if split.name.isdigit() else 0  # same seeds whichever folds run
        device = torch.device(self.config.resolved_device())
        state = self._start(split, fold_index, device)
        tests = eval_loader(self.data.clips, self.table.labels, self.ranks.shard(split.test), self.config)
        for epoch in range(len(state.history) + 1, self.config.train.num_epochs + 1):
            self._epoch(state, split, fold_index, epoch, tests, device)
        if self.config.train.wise_ft < 1 and state.history and "wise_ft" not in state.history[-1]:
            self._wise_ft(state, split, fold_index, tests, device)
        if self.ranks.main and not self.run.predictions_path(split.name).exists():  # for reports
            finish_fold(state.scored, self.data.clips, self.table, split, self.run, self.config, device)
        if self.ranks.main:
            self.run.complete_fold_files(split.name)
        self.ranks.barrier()  # the fold's files are written before any rank goes on
        return fold_result(state.history, count_parameters(state.model))

    def _start(self, split: Split, fold_index: int, device: torch.device) -> _Model:
        """The fold's model as training starts or resumes: seeded initial (or pretrained and
        probed) weights, the optimiser and its schedule, the moving average; ``last.pt``'s state
        when the fold was under way."""
        config, ranks = self.config, self.ranks
        seed_epoch(config, fold_index, 0)
        model = SoundClassifier.from_config(config).to(device)
        backbone = None
        if ranks.active:  # the same initial weights on every rank (same seed), gradients averaged
            # BatchNorm over the global batch: PyTorch's SyncBatchNorm on GPUs, escnet's on CPU
            model.backbone = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.backbone)
                              if device.type == "cuda" else distributed.group_batch_norm(model.backbone))
            backbone = torch.nn.parallel.DistributedDataParallel(
                model.backbone, device_ids=[device.index or 0] if device.type == "cuda" else None)
        optimizer = make_optimizer(model, config)
        per_epoch = len(train_loader(self.data, self.table, split.train, config, torch.Generator(),
                                     ranks.rank, ranks.world))
        steps = Steps(optimizer, make_scheduler(optimizer, config, per_epoch * config.train.num_epochs),
                      make_ema(model, config), backbone)
        state = _Model(model, steps)
        checkpoint = self.run.checkpoint(split.name)
        if config.train.probe_epochs and not checkpoint.exists():  # the EMA copies it at its first update
            probe_head(model, self.data, self.table, split.train, config, device)
        if checkpoint.exists():
            saved = self.run.load_checkpoint(split.name, "last", device)
            state.scored.load_state_dict(saved["model"])
            if steps.ema is not None:
                model.load_state_dict(saved["trained"])
                steps.ema.n_averaged.fill_(saved["ema_updates"])
            optimizer.load_state_dict(saved["optimizer"])
            if steps.scheduler is not None:
                steps.scheduler.load_state_dict(saved["scheduler"])
            state.history = saved["history"]
        return state

    def _epoch(self, state: _Model, split: Split, fold_index: int, epoch: int, tests,
               device: torch.device) -> None:
        """Train one epoch, score the held-out clips, and save it all (a non-finite loss stops
        the run before anything of the epoch is saved)."""
        config, ranks, epochs = self.config, self.ranks, self.config.train.num_epochs
        start = time.perf_counter()
        loader = train_loader(self.data, self.table, split.train, config,
                              seed_epoch(config, fold_index, epoch), ranks.rank, ranks.world)
        entry = {"fold": split.name, "epoch": epoch, "lr": state.steps.optimizer.param_groups[0]["lr"]}
        entry |= train_one_epoch(state.model, loader, state.steps, config, device, ranks,
                                 f"fold {split.name} epoch {epoch}/{epochs}" if self.progress else None)
        entry |= {f"test_{k}": v for k, v in score(*_held_out(state.scored, tests, device, ranks)).items()}
        bad = [k for k in ("train_loss", "test_loss") if not math.isfinite(entry[k])]
        if bad:
            raise DivergedError(f"fold {split.name} epoch {epoch}: the {bad[0].replace('_', ' ')} became "
                                f"{entry[bad[0]]} (not finite); lower train.learning_rate or check "
                                "the data; the run keeps its last good epoch and resumes from it")
        entry["seconds"] = time.perf_counter() - start
        state.history.append(entry)
        if ranks.main:  # with EMA, the average is scored and saved; resuming needs the trained weights
            steps = state.steps
            training = {"optimizer": steps.optimizer.state_dict(),
                        "scheduler": steps.scheduler.state_dict() if steps.scheduler is not None else None}
            if steps.ema is not None:
                training |= {"trained": state.model.state_dict(), "ema_updates": int(steps.ema.n_averaged)}
            self.run.save_epoch(split.name, state.history, state.scored.state_dict(),
                                self.table.known_classes, training, state.model.tag_names)
        for callback in self.callbacks:
            callback(entry)

    def _wise_ft(self, state: _Model, split: Split, fold_index: int, tests, device: torch.device) -> None:
        """WiSE-FT: the scored weights become ``wise_ft × trained + (1 - wise_ft) × start``, where
        ``start`` is rebuilt as training built it (same seed: the pretrained trunk, then the
        probed head), so a resumed run gets the same average as an uninterrupted one; the last
        epoch's log gets the averaged model's scores."""
        config = self.config
        seed_epoch(config, fold_index, 0)
        start = SoundClassifier.from_config(config).to(device)
        if config.train.probe_epochs:
            probe_head(start, self.data, self.table, split.train, config, device)
        first, alpha, scored = start.state_dict(), config.train.wise_ft, state.scored
        scored.load_state_dict({k: (1 - alpha) * first[k] + alpha * v if v.is_floating_point() else v
                                for k, v in scored.state_dict().items()})
        last = state.history[-1]
        last |= {"wise_ft": alpha, "test_accuracy_trained": last["test_accuracy"],
                 "test_loss_trained": last["test_loss"]}
        last |= {f"test_{k}": v for k, v in score(*_held_out(scored, tests, device, self.ranks)).items()}
        if self.ranks.main:  # the averaged weights are the model from now on (resume, export, predict)
            saved = self.run.load_checkpoint(split.name, "last", device)
            training = {k: saved[k] for k in ("optimizer", "scheduler", "trained", "ema_updates")
                        if k in saved}
            self.run.save_epoch(split.name, state.history, scored.state_dict(), self.table.known_classes,
                                training, state.model.tag_names)


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
