"""The :class:`SoundClassifier`: the featurizer and a registry backbone, as checkpoints hold it."""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import nn

from escnet.cards import PretrainedCard, find_card
from escnet.config import TaskConfig, load_config
from escnet.data.cache import cache_root
from escnet.errors import ConfigError
from escnet.models.pretrained import load_pretrained, local_copy
from escnet.models.registry import count_macs, count_parameters, create_model
from escnet.models.unknown import resolve_score
from escnet.transforms.features import Featurizer


class SoundClassifier(nn.Module):
    """Waveforms in, logits out: :class:`~escnet.transforms.Featurizer` then a backbone.

    ``forward(wav (batch, samples), lengths (batch,) | None) → (batch, num_classes)``. This is
    the module checkpoints hold, so prediction needs nothing but the checkpoint.
    """

    def __init__(self, featurizer: Featurizer, backbone: nn.Module) -> None:
        super().__init__()
        self.featurizer = featurizer
        self.backbone = backbone

    @staticmethod
    def check(config: TaskConfig) -> int:
        """Fail with a :class:`ConfigError` on model settings that cannot train, before any
        memory is spent: the backbone is built and run on PyTorch's ``meta`` device (shapes
        only), so log-mels too small for its layers and weights larger than this machine's
        memory are found in milliseconds instead of as a traceback or the OOM killer.
        ``model.pretrained`` weights are fetched, verified and loaded into a backbone built for
        them. Returns the backbone's parameter count."""
        m, mels, frames = config.model, config.features.n_mels, config.length
        if m.args.get("audioset_head") and not m.pretrained:
            raise ConfigError("setting model.args.audioset_head=true: keeps the head of AudioSet "
                              "weights, but model.pretrained names none (e.g. mn04_as)")
        if config.train.wise_ft < 1 and not m.pretrained:
            raise ConfigError(f"setting train.wise_ft={config.train.wise_ft}: averages the trained "
                              "weights with pretrained ones, but model.pretrained names none")
        # what it is given: whole clips (scored), and training's crops where they are shorter
        given = [(frames, "features.n_mels, features.hop_length, data.clip_seconds")] + \
            [(config.crop_frames, "augment.crop_seconds")] * bool(config.crop_frames)
        with torch.device("meta"):
            try:
                backbone = create_model(m.name, n_mels=mels, frames=frames, num_classes=m.num_classes,
                                        **m.args)
            except (RuntimeError, ValueError, TypeError, OverflowError) as err:  # sizes past int64
                raise ConfigError(f"setting model.args: model {m.name} cannot be built with them "
                                  f"({str(err).splitlines()[0][:200]})") from None
            for length, settings in given:
                try:
                    backbone.eval()(torch.zeros(2, mels, length), None)  # shapes only: no statistics
                except (RuntimeError, ValueError) as err:
                    raise ConfigError(f"model {m.name} cannot take log-mels of {mels} mels × {length} "
                                      f"frames ({settings}): {str(err).splitlines()[0]}") from None
        frame_head = getattr(backbone, "frame_head", None) is not None
        if config.augment.scenes != frame_head:
            raise ConfigError("setting augment.scenes=true: trains a frame head, but the model has "
                              "none (model.args.frame_head=true, an mn model)" if config.augment.scenes
                              else "setting model.args.frame_head=true: its frame head learns from "
                              "soundscapes; set augment.scenes=true (or use --preset pretrained-events)")
        if config.augment.scenes and config.augment.mixup_alpha > 0:
            raise ConfigError(f"setting augment.mixup_alpha={config.augment.mixup_alpha}: soundscapes "
                              "(augment.scenes) already mix sounds; set it to 0")
        resolve_score(config.train.unknown_score, hasattr(backbone, "embed"), m.name, config.train.refit)
        params = count_parameters(backbone)
        # weights, gradients and two Adam moments: 16 bytes a parameter
        need, have = 16 * params, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > have:
            raise ConfigError(f"model {m.name} with args {m.args or '{}'} has {params / 1e9:.1f} G "
                              f"parameters: training needs about {need / 2**30:.0f} GB, this machine "
                              f"has {have / 2**30:.0f} GB (model.args)")
        if m.pretrained:
            backbone = create_model(m.name, n_mels=mels, frames=frames, num_classes=m.num_classes,
                                    **m.args)
            load_pretrained(backbone, m.pretrained, m.pretrained_sha256, cache_root(config),
                            find_card(m.pretrained, m.name, m.args))
        return params

    @classmethod
    def from_config(cls, config: TaskConfig, pretrained: bool = True) -> SoundClassifier:
        """The model ``config`` describes, with ``model.pretrained`` weights loaded unless
        ``pretrained`` is false (a checkpoint about to be loaded holds every weight)."""
        m = config.model
        backbone = create_model(m.name, n_mels=config.features.n_mels, frames=config.length,
                                num_classes=m.num_classes, **m.args)
        if pretrained and m.pretrained:
            load_pretrained(backbone, m.pretrained, m.pretrained_sha256, cache_root(config),
                            find_card(m.pretrained, m.name, m.args))
        if config.train.channels_last:  # conv weights in NHWC: oneDNN's fast layout on CPU
            backbone.to(memory_format=torch.channels_last)
        return cls(Featurizer.from_config(config), backbone)

    @classmethod
    def from_card(cls, card: PretrainedCard, clip_seconds: float | None = None) -> SoundClassifier:
        """The published model of a pretrained card as it was trained: its weights, its own head
        (``card.classes`` outputs: AudioSet's 527 tags) and its front-end, on clips of the card's
        length or ``clip_seconds`` (:func:`card_config`)."""
        return cls.from_config(card_config(card, clip_seconds)).eval()

    def features(self, wav: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-mels ``(batch, n_mels, frames)`` (float32 even under autocast) and valid frames."""
        with torch.autocast(wav.device.type, enabled=False):
            return self.featurizer(wav, lengths)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(batch, samples)`` → the backbone's pooled embedding ``(batch, dim)``
        (backbones with an ``embed``: the ``mn`` models)."""
        return self.backbone.embed(self.features(wav)[0])

    @property
    def tag_names(self) -> list[str] | None:
        """Names of the backbone's AudioSet head outputs, when it has one (``audioset_head``)."""
        return getattr(self.backbone, "tag_names", None)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(*self.features(wav, lengths))

    def outputs(self, wav: torch.Tensor) -> Outputs:
        """Waveforms ``(batch, samples)`` → :class:`Outputs`."""
        return outputs_of(self.backbone, self.features(wav)[0])

    def outputs_batch(self, batch: dict[str, torch.Tensor], device: torch.device) -> Outputs:
        """:class:`Outputs` for a batch from :func:`escnet.data.collate` (see :meth:`forward_batch`)."""
        if "features" in batch:
            return outputs_of(self.backbone, batch["features"].to(device))
        return self.outputs(batch["wav"].to(device))

    def forward_batch(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Logits for a batch from :func:`escnet.data.collate`: waveforms, or log-mels
        precomputed with this model's featurizer (then only the backbone runs)."""
        if "features" in batch:
            return self.backbone(batch["features"].to(device), None)
        return self(batch["wav"].to(device), batch["length"].to(device))


def card_config(card: PretrainedCard, clip_seconds: float | None = None) -> TaskConfig:
    """The settings of a card's own model: its weights with their head (``card.classes``), its
    front-end, clips of its length (or ``clip_seconds``: windows of other recordings)."""
    changes = {"model.pretrained": card.name, "model.num_classes": card.classes}
    if clip_seconds or card.clip_seconds:
        changes["data.clip_seconds"] = clip_seconds or card.clip_seconds
    return load_config(None, changes)


def describe_card(card: PretrainedCard) -> dict:
    """What ``escnet models --pretrained`` says of a card: its model's parameters and MACs per
    clip at its own front-end (counted on PyTorch's ``meta`` device: nothing is allocated or
    fetched), and where its file already is on this machine (``$ESCNET_WEIGHTS`` or the cache;
    ``None``: it would be downloaded)."""
    config = card_config(card)
    with torch.device("meta"):
        backbone = create_model(config.model.name, n_mels=config.features.n_mels, frames=config.length,
                                num_classes=config.model.num_classes, **config.model.args)
        macs = count_macs(backbone, config.features.n_mels, config.length)
    return {"name": card.name, "model": card.model, "parameters": count_parameters(backbone),
            "macs": macs, "clip_seconds": config.data.clip_seconds,
            "sample_rate": config.data.sample_rate if card.frontend else None,
            "frontend": config.features.frontend if card.frontend else "any log-mel",
            "audioset_map": card.audioset_map, "license": card.license,
            "sha256": card.weights.sha256, "local": local_copy(card.weights, cache_root(config))}


class Outputs(NamedTuple):
    """What a model makes of a batch, from one pass of its trunk."""

    logits: torch.Tensor
    """``(batch, classes)``."""
    embedding: torch.Tensor | None
    """``(batch, dim)``: the pooled embedding the head reads, for backbones with ``embed``."""
    tags: torch.Tensor | None
    """``(batch, 527)``: the frozen AudioSet head's tag probabilities, for backbones with one."""
    frames: torch.Tensor | None = None
    """``(batch, steps, classes)``: each class's probability (sigmoid) in each of ``steps``
    equal frames of the input, for backbones with a frame head (``model.args.frame_head``)."""


def outputs_of(backbone: nn.Module, x: torch.Tensor) -> Outputs:
    """:class:`Outputs` of ``backbone`` for log-mels ``(batch, n_mels, frames)`` (or, for a
    backbone with ``embed``, embeddings ``(batch, dim)`` computed before)."""
    if not hasattr(backbone, "embed"):
        return Outputs(backbone(x, None), None, None)
    trunk = None if x.dim() == 2 else backbone.trunk(x)
    embedding = x if trunk is None else trunk.mean(dim=(2, 3))
    audioset = getattr(backbone, "audioset", None)
    frames = (backbone.frame_logits(trunk).sigmoid()
              if trunk is not None and getattr(backbone, "frame_head", None) is not None else None)
    return Outputs(backbone.head(embedding), embedding,
                   audioset(embedding).sigmoid() if audioset is not None else None, frames)
