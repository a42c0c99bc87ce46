"""Transforms: the log-mel featurizer, waveform augmentation per example, batch augmentation."""

from escnet.transforms.batch import BatchAugment, mixup, random_crop, spec_augment
from escnet.transforms.features import Featurizer
from escnet.transforms.waveform import WaveformAugment

__all__ = ["BatchAugment", "Featurizer", "WaveformAugment", "mixup", "random_crop", "spec_augment"]
