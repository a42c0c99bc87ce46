"""TaskConfig: every setting of a run, in five sections (data, features, model, augment, train).

A config is built from defaults, then a preset, then a YAML/TOML file, then command-line
overrides (``section.key=value``), in that order. Values are coerced to the field's type and
checked; a bad value raises :class:`~escnet.errors.ConfigError` naming ``section.key``. The
resolved config is saved as ``config.yaml`` in every run directory, section by section.

A model's own settings live with the model (``model.args``, checked against the model's
signature by :func:`escnet.models.create_model`), so each model sees only its own knobs.
This module imports only :mod:`escnet.errors`, :mod:`escnet.files` and :mod:`escnet.machine`:
everything else reads configs. Facts about the machine (cores, devices) are not settings and
live in :mod:`escnet.machine`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from escnet.cards import family_of, find_card
from escnet.errors import ConfigError
from escnet.files import atomic_write_text, read_text
from escnet.machine import resolve_device

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

WAVEFORM_TRANSFORMS = ("gaussian_noise", "time_stretch", "pitch_shift", "gain", "background_noise",
                       "time_shift", "band_limit", "codec", "reverb")
"""Names of the waveform transforms (built by :mod:`escnet.transforms.waveform`)."""
NOISE_COLORS = ("white", "pink", "brown")


_BOUNDS = {"gt": (">", float.__gt__), "ge": (">=", float.__ge__), "lt": ("<", float.__lt__),
           "le": ("<=", float.__le__)}


def _rules(**rules: Any) -> dict[str, Any]:
    """Field metadata: bounds (``gt``, ``ge``, ``lt``, ``le``) or ``choices`` that the value (each
    item, for lists and tuples) must keep; :meth:`Section.validate` enforces them."""
    return rules


def _check(default: Any, **rules: Any) -> Any:
    """A dataclass field with ``default`` and :func:`_rules` (and ``stage="batch"`` for the
    settings of batch transforms)."""
    return field(default=default, metadata=_rules(**rules))


def _broken_rule(value: Any, rules: dict) -> str | None:
    """What ``value`` breaks of ``rules``, or ``None``."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if "choices" in rules and item not in rules["choices"]:
            return f"must be one of {', '.join(rules['choices'])}"
        bounds = [(word, op, rules[k]) for k, (word, op) in _BOUNDS.items() if k in rules]
        if item is not None and not all(op(float(item), float(limit)) for _, op, limit in bounds):
            return "must be " + " and ".join(f"{word} {limit}" for word, _, limit in bounds)
    return None


class Section:
    """Base of the config sections: field bounds from :func:`_check`, plus :meth:`rules`."""

    section = ""

    def validate(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            why = _broken_rule(getattr(self, f.name), dict(f.metadata))
            if why:
                self.fail(f.name, why)
        self.rules()

    def rules(self) -> None:
        """Checks that involve several fields of the section."""

    def fail(self, key: str, why: str) -> typing.NoReturn:
        raise ConfigError(f"setting {self.section}.{key}={getattr(self, key)!r}: {why}")


@dataclass
class DataConfig(Section):
    """Where the clips come from, how they are split, and the waveform every clip becomes."""

    section = "data"
    data_dir: str = ""
    """ESC-50 folder, a folder of class subfolders, a ``path,label[,fold]`` CSV, or a folder of
    ``{FOLD}-{CLIP_ID}-{TAKE}-{TARGET}.*`` files."""
    subset: str = _check("all", choices=("all", "esc10"))
    """``all`` or ``esc10`` (the 10-class subset flagged in ``meta/esc50.csv``)."""
    keyword: str = "?-*-*-*.*"
    """Glob for audio files when the folder has no ``meta/esc50.csv`` (the report used ``.wav``)."""
    protocol: str = _check("folds", choices=("folds", "random"))
    """``folds``: k-fold cross-validation over the dataset's folds (the official protocol);
    ``random``: the report's single random split with ``train_ratio`` (leaks between takes of
    one recording on ESC-50: never the headline number)."""
    folds: list[int] = field(default_factory=list, metadata=_rules(ge=1))
    """Held-out folds to run under ``protocol=folds``; empty means every fold of the dataset."""
    train_ratio: float = _check(0.9, gt=0, lt=1)
    train_per_class: int = _check(0, ge=0)
    """Train on at most this many clips per class of each split's training clips, drawn by the
    seed (the same clips for every model: few-shot curves); 0: all. The held-out clips stay whole."""
    sample_rate: int = _check(44_100, ge=1000, le=384_000)
    """Hz. Audio is resampled to this rate once, when the waveform cache is built."""
    clip_seconds: float = _check(5.0, gt=0, le=600)
    """Every clip is padded or cropped to this duration (s)."""
    cache_dir: str = ""
    """Where decoded waveforms are cached; empty means ``$ESCNET_CACHE`` or ``~/.cache/escnet``."""
    skip_bad: bool = False
    """Leave unreadable audio files out (and say how many) instead of stopping."""
    allow_uneven_folds: bool = False
    """Accept a fold under a quarter the size of the others (with a warning) instead of
    refusing the dataset: such a fold is usually a stray fold number."""
    balanced_sampling: bool = False
    """Draw training examples with inverse class-frequency weights (the report's sampler)."""
    unknown_classes: int = _check(0, ge=0)
    """Open-set protocol: leave this many classes, drawn by ``train.seed``, out of training
    entirely; their clips in each held-out fold are scored as unknown sounds (``open_set`` in
    ``metrics.json``). 0: none (see also ``unknown_names``)."""
    unknown_names: list[str] = field(default_factory=list)
    """Open-set protocol: leave these classes (by name) out of training instead of drawn ones."""

    def rules(self) -> None:
        if len(set(self.folds)) != len(self.folds):
            self.fail("folds", "names a fold twice")
        if self.unknown_classes and self.unknown_names:
            self.fail("unknown_classes", "give a number of classes or unknown_names, not both")
        if any(not str(name).strip() for name in self.unknown_names):
            self.fail("unknown_names", "names an empty class; give class names separated by commas")


@dataclass
class FeatureConfig(Section):
    """The log-mel spectrogram every model reads (:class:`escnet.transforms.Featurizer`)."""

    section = "features"
    n_fft: int = _check(1024, gt=0, le=65_536)
    win_length: int = _check(1024, gt=0)
    hop_length: int = _check(256, gt=0)
    """Samples between frames; at most ``n_fft`` (frames overlap or touch)."""
    n_mels: int = _check(64, gt=0)
    """At most ``n_fft // 2 + 1``, the FFT's bins (more bands than bins leaves some empty)."""
    f_min: float = _check(0.0, ge=0)
    """Hz."""
    f_max: float | None = _check(None, gt=0)
    """Hz; ``None`` means ``sample_rate / 2``."""
    log_floor: float = _check(1e-5, gt=0)
    """Mel power is clamped at this value (``logmel``), or offset by it (``efficientat``), before
    the natural log."""
    frontend: str = _check("logmel", choices=("logmel", "efficientat", "panns"))
    """``logmel``: escnet's log-mel; ``efficientat``: the front-end of EfficientAT's pretrained
    models (with their settings: 32 kHz, n_fft 1024, win_length 800, hop_length 320, 128 mels,
    f_max 15000); ``panns``: PANNs' (32 kHz, n_fft 1024, hop 320, 64 mels, 50-14000 Hz,
    log_floor 1e-10). :class:`escnet.transforms.features.Featurizer` has the details."""

    def rules(self) -> None:
        if self.win_length > self.n_fft:
            self.fail("win_length", f"must be <= n_fft ({self.n_fft})")
        if self.hop_length > self.n_fft:
            self.fail("hop_length", f"must be <= n_fft ({self.n_fft}): frames would skip audio")
        if self.n_mels > self.n_fft // 2 + 1:
            self.fail("n_mels", f"must be <= n_fft // 2 + 1 = {self.n_fft // 2 + 1}, the FFT's bins")


@dataclass
class ModelConfig(Section):
    """Which model, its own arguments, and weights to start from."""

    section = "model"
    name: str = "cnn10"
    """A model from ``escnet models``."""
    args: dict[str, Any] = field(default_factory=dict)
    """The model's own arguments (``escnet models`` lists them); unset ones take the model's
    defaults, and the saved config lists them all."""
    num_classes: int = _check(50, ge=2)
    """Set from the dataset's classes when a run starts."""
    pretrained: str = ""
    """Pretrained weights: a path, a URL, or a name the model knows (vgg19: ``imagenet``)."""
    pretrained_sha256: str = ""
    """Expected sha256 (or a prefix of at least 8 hex digits) of downloaded weights."""

    def rules(self) -> None:
        digest = self.pretrained_sha256
        if digest and not (8 <= len(digest) <= 64 and all(c in "0123456789abcdefABCDEF" for c in digest)):
            self.fail("pretrained_sha256", "must be a SHA-256 in hex: 64 hex digits (or the first 8 "
                      "or more of them)")


@dataclass
class AugmentConfig(Section):
    """Training-only changes to the data; never applied at evaluation or prediction."""

    section = "augment"
    waveform: list[str] = field(default_factory=list, metadata=_rules(choices=WAVEFORM_TRANSFORMS))
    """Waveform transforms, from :data:`WAVEFORM_TRANSFORMS`; empty: none."""
    policy: str = _check("one", choices=("one", "each"))
    """``one``: one transform per example, drawn uniformly from ``waveform`` plus the identity
    (the report's policy, without its off-by-one); ``each``: every transform with ``p``."""
    p: float = _check(0.5, ge=0, le=1)
    """Probability of each transform under ``policy=each``."""
    copies: int = _check(0, ge=0, le=1000)
    """0: transform every example afresh each epoch, in the DataLoader workers. K > 0: draw K
    augmented copies of every clip once (cached on disk) and train each epoch on one of them,
    picked at random, so an epoch costs no more than without augmentation."""
    noise_std: float = _check(0.01, ge=0)
    """gaussian_noise: standard deviation (full scale 1.0); the result is clipped to [-1, 1]."""
    time_stretch_rate: tuple[float, float] = _check((2.0, 2.0), gt=0)
    """time_stretch: rate range (2.0 plays twice as fast); one value for a fixed rate."""
    pitch_shift_semitones: tuple[float, float] = (-5.0, -5.0)
    """pitch_shift: semitone range."""
    gain_db: tuple[float, float] = (-12.04, -12.04)
    """gain: dB range; the report's volume 0.25 is -12.04 dB."""
    snr_db: tuple[float, float] = (3.0, 30.0)
    """background_noise: signal-to-noise ratio range in dB."""
    noise_dir: str = ""
    """Folder of background-noise recordings for ``background_noise`` (the report's
    ``path2noise``); empty: coloured noise."""
    noise_colors: list[str] = field(default_factory=lambda: list(NOISE_COLORS),
                                    metadata=_rules(choices=NOISE_COLORS))
    """background_noise without ``noise_dir``: coloured noises to draw from."""
    shift_max: float = _check(0.5, ge=0, le=1)
    """time_shift: largest shift as a fraction of the clip, either way."""
    shift_mode: str = _check("circular", choices=("circular", "pad"))
    """time_shift: ``circular`` (what leaves the end comes back at the start) or ``pad`` (zeros)."""
    band_limit_hz: tuple[float, float] = _check((4000.0, 16000.0), ge=1000)
    """band_limit: the audio passes through a sample rate drawn from this range (Hz) and back,
    losing the band above half of it (phones, telephony, voice pipelines)."""
    codec_kbps: tuple[float, float] = _check((32.0, 128.0), ge=8, le=320)
    """codec: MP3 encoding and decoding (libsndfile) at a bit rate drawn from this range,
    kbit/s (libsndfile's level for that rate at 44.1 kHz; at other rates LAME takes the
    nearest it has)."""
    reverb_rt60: tuple[float, float] = _check((0.2, 1.2), gt=0, le=5)
    """reverb: one of eight rooms (seeded random shoebox rooms, 3 to 23 m) with reverberation
    times spread over this range, seconds. ``escnet robustness``'s two rooms are not among them."""
    band_limit_mels: float = _check(0.0, ge=0, le=1, stage="batch")
    """Probability per training example of band-limiting its log-mel: the bands above half a
    sample rate drawn from ``band_limit_hz`` set to silence's level. The cheap, cacheable form of
    ``band_limit`` (no resampling: it works on the feature cache and on crops)."""
    spec_augment: bool = _check(False, stage="batch")
    """SpecAugment masks on each training batch of log-mels, on the device."""
    freq_masks: int = _check(2, ge=0, stage="batch")
    freq_mask_width: int = _check(8, ge=0, stage="batch")
    """Widest frequency mask, in mel bins (each width is uniform in 0..this)."""
    time_masks: int = _check(2, ge=0, stage="batch")
    time_mask_width: int = _check(20, ge=0, stage="batch")
    """Widest time mask, in frames."""
    mixup_alpha: float = _check(0.0, ge=0, stage="batch")
    """mixup: Beta(alpha, alpha) mixing weight per example; 0 turns it off."""
    mixup_mode: str = _check("features", choices=("features", "waveform"), stage="batch")
    """``features``: mix log-mels (works with the feature cache); ``waveform``: between-class
    mixing of the waveforms, weighted by their loudness (Tokozume et al., 2018)."""
    crop_seconds: float = _check(0.0, ge=0, stage="batch")
    """Train on a random window of this many seconds of each clip's log-mel (a fresh offset per
    example and epoch: a time-shift augmentation that also makes steps cheaper); 0 or at least
    ``clip_seconds``: the whole clip. Evaluation always sees whole clips."""
    scenes: bool = _check(False, stage="batch")
    """Train on soundscapes made from each batch's clips (noise beds, random places and levels,
    up to two overlapping sounds; ``crop_seconds`` long, else a clip long) with frame-level
    targets, as well as their clip targets: for a model with a frame head
    (``model.args.frame_head``; :mod:`escnet.transforms.scenes`). Replaces mixup and crops."""

    def waveform_settings(self) -> dict[str, Any]:
        """What augmented copies of a clip are made of: every setting but the number of copies
        and those of the batch transforms, which run later."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name != "copies" and f.metadata.get("stage") != "batch"}

    def rules(self) -> None:
        if len(set(self.waveform)) != len(self.waveform):
            self.fail("waveform", "names a transform twice")
        if not self.noise_colors:
            self.fail("noise_colors", f"must be some of {', '.join(NOISE_COLORS)}")
        for key in ("time_stretch_rate", "pitch_shift_semitones", "gain_db", "snr_db", "band_limit_hz",
                    "codec_kbps", "reverb_rt60"):
            lo, hi = getattr(self, key)
            if lo > hi:
                self.fail(key, "must be a range low,high with low <= high")
        if self.noise_dir and not Path(self.noise_dir).is_dir():
            self.fail("noise_dir", "is not a folder")


@dataclass
class TrainConfig(Section):
    """The optimisation, and where and how fast it runs."""

    section = "train"
    batch_size: int = _check(128, gt=0, le=65_536)
    learning_rate: float = _check(3e-4, gt=0, le=10)
    weight_decay: float = _check(1e-5, ge=0, le=10)
    num_epochs: int = _check(20, gt=0, le=100_000)
    optimizer: str = _check("adam", choices=("adam", "adamw"))
    scheduler: str = _check("none", choices=("none", "cosine", "onecycle"))
    label_smoothing: float = _check(0.0, ge=0, lt=1)
    ema_decay: float = _check(0.0, ge=0, lt=1)
    """Evaluate, save and predict with an exponential moving average of the weights (and
    BatchNorm statistics), updated after every optimiser step with this decay (0.998 averages
    over about 500 steps); 0 turns it off."""
    probe_epochs: int = _check(0, ge=0, le=100_000)
    """Before training the whole model, train only its head for this many epochs on the
    pretrained trunk's embeddings, computed once (linear probing, then fine-tuning: LP-FT); 0:
    no probing. Needs a model with an embedding (``mn*``) and pretrained weights to be useful."""
    probe_learning_rate: float = _check(1e-3, gt=0, le=10)
    """Learning rate of the probing epochs (AdamW, cosine schedule)."""
    wise_ft: float = _check(1.0, gt=0, le=1)
    """Weight of the trained weights in the final model: below 1, after the last epoch they are
    averaged with the weights training started from, the pretrained trunk and its probed head
    (WiSE-FT, Wortsman et al. 2022); 1: the trained weights alone. Needs ``model.pretrained``."""
    validation_share: float = _check(0.1, ge=0, lt=0.5)
    """Share of each split's training clips held out (per class, whole source recordings
    together where file names say which, drawn by ``seed``) to fit the model's temperature
    (calibrated probabilities) and its unknown-sound threshold; never the test fold. 0: train
    on every clip and leave the model uncalibrated, without an unknown threshold."""
    refit: bool = False
    """Calibrate, then train again on every clip: each fold's model is first trained without its
    validation clips and calibrated on them (that run is kept in ``RUNDIR/holdout``), then
    trained afresh with the same seed on its training and validation clips together, and given
    the first model's temperature and thresholds. The accuracy of training on every clip with
    probabilities calibrated on clips no model choice saw, for twice the training time (as
    scikit-learn's ``CalibratedClassifierCV(ensemble=False)`` refits on all data). Only scores
    of the logits carry over (an embedding's distances belong to the first model), so
    ``unknown_score`` ``auto`` is ``energy`` here."""
    unknown_keep: float = _check(0.95, gt=0, le=1)
    """Share of known sounds the unknown-sound threshold keeps (set on the validation clips): a
    sound whose unknown score is below it is answered "unknown"."""
    unknown_confidence: float = _check(0.9, ge=0, lt=1)
    """Probability that the threshold keeps at least ``unknown_keep`` of known sounds drawn like
    the validation clips (it then keeps more of the validation clips themselves; with too few of
    them, all); 0: ``unknown_keep`` on average over validation sets only (the split-conformal
    quantile: one model may keep less by chance)."""
    unknown_score: str = "auto"
    """How known a sound is, a score of :data:`escnet.models.unknown.SCORES` (checked there, with
    the model, before any work): ``auto`` is ``energy+knn`` for a model with an embedding (the
    ``mn`` models), else ``energy`` (so with ``refit``); compared side by side in
    docs/RESULTS.md, "Unknown sounds"."""
    seed: int = _check(0, ge=0, le=2**32 - 1)
    """Fixes data order, augmentation, initialisation, folds assigned and validation clips."""
    num_workers: int = _check(0, ge=0, le=256)
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool = True
    """Mixed precision (bfloat16 autocast) when training on CUDA; ignored on CPU."""
    channels_last: bool = False
    """Keep conv weights (and so activations) in channels-last (NHWC) memory layout: faster cnn10
    training on CPU (``benchmarks/train_step.py``, docs/RESULTS.md); numbers differ from NCHW in
    the last float bits only."""
    feature_cache: bool = True
    """Compute log-mels once per run (memory: clips × n_mels × frames × 4 bytes) instead of every
    epoch; applies while nothing changes the waveforms between epochs."""
    tensorboard: bool = False
    """Also log per-epoch scalars of every fold to ``RUNDIR/tensorboard`` (needs ``tensorboard``)."""

    def rules(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            self.fail("device", "must be auto, cpu, cuda or cuda:N")
        if self.refit and self.validation_share == 0:
            self.fail("refit", "needs validation clips to calibrate on before refitting: set "
                      "train.validation_share above 0")


def frame_count(samples: Any, hop_length: int, frontend: str) -> Any:
    """Frames of a centred STFT of ``samples`` samples (an int, or a tensor of them): ``samples
    // hop_length + 1``. The ``efficientat`` front-end's pre-emphasis drops the first sample, as
    EfficientAT's own does, so there ``(samples - 1) // hop_length + 1`` (a 5 s clip at 32 kHz:
    500 frames, as upstream)."""
    return (samples - int(frontend == "efficientat")) // hop_length + 1


SECTIONS: dict[str, type[Section]] = {"data": DataConfig, "features": FeatureConfig,
                                      "model": ModelConfig, "augment": AugmentConfig,
                                      "train": TrainConfig}

# Settings that do not change a run's numbers: a resumed run may change them, and runs that
# differ only in them are one experiment.
RESULT_FREE = ("data.data_dir", "data.cache_dir", "train.num_workers", "train.tensorboard",
               "train.device", "train.unknown_keep", "train.unknown_score", "train.unknown_confidence")
"""(``unknown_keep``, ``unknown_score`` and ``unknown_confidence`` change only the calibration,
which ``escnet
calibrate`` redoes for a finished run.)"""


@dataclass
class TaskConfig:
    """All settings of a run, in sections. Defaults are the study report's (README,
    "Background").

    ``length_wav`` (samples per clip) and ``length`` (frames per clip) of the report are derived
    from ``data.clip_seconds``, ``data.sample_rate`` and ``features.hop_length`` rather than
    stored, so they cannot disagree with them.
    """

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def length_wav(self) -> int:
        """Samples per clip: ``round(clip_seconds * sample_rate)``."""
        return round(self.data.clip_seconds * self.data.sample_rate)

    @property
    def length(self) -> int:
        """Frames per clip (:func:`frame_count` of ``length_wav``)."""
        return frame_count(self.length_wav, self.features.hop_length, self.features.frontend)

    @property
    def crop_frames(self) -> int:
        """Frames of a ``crop_seconds`` training window; 0 when training sees whole clips."""
        if not 0 < self.augment.crop_seconds < self.data.clip_seconds:
            return 0
        return frame_count(round(self.augment.crop_seconds * self.data.sample_rate),
                           self.features.hop_length, self.features.frontend)

    @property
    def scene_seconds(self) -> float:
        """Seconds of the soundscapes training makes (``augment.scenes``): ``crop_seconds``,
        else a clip's length."""
        return min(self.augment.crop_seconds or self.data.clip_seconds, self.data.clip_seconds)

    @property
    def waveform_augment(self) -> bool:
        """Whether training batches need waveforms changed each epoch (so no feature cache)."""
        a = self.augment
        return ((bool(a.waveform) and a.copies == 0) or (a.mixup_alpha > 0 and a.mixup_mode == "waveform")
                or a.scenes)

    def resolved_device(self) -> str:
        """``train.device`` with ``auto`` decided (:func:`escnet.machine.resolve_device`)."""
        return resolve_device(self.train.device, "setting train.device")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        for section in self.sections():
            section.validate()
        f, nyquist = self.features, self.data.sample_rate / 2
        if f.f_max is not None and not f.f_min < f.f_max <= nyquist:
            f.fail("f_max", f"must be in (f_min, sample_rate/2] = ({f.f_min}, {nyquist}]")
        if f.f_max is None and f.f_min >= nyquist:
            f.fail("f_min", f"must be < data.sample_rate/2 ({nyquist})")
        if self.train.refit and self.data.train_per_class:
            self.train.fail("refit", "refitting adds the validation clips to the training clips, "
                            "which data.train_per_class limits; set train.refit=false (the fast "
                            "preset sets it) or drop data.train_per_class")
        if self.length_wav < f.n_fft // 2 + 1:
            self.data.fail("clip_seconds", f"clip too short for features.n_fft={f.n_fft} at "
                           f"{self.data.sample_rate} Hz")
        card = find_card(self.model.pretrained, self.model.name, self.model.args)
        for key, wanted in (card.settings() if card else {}).items():
            if (have := self._get(key)) != wanted:
                raise ConfigError(f"setting {key}={have!r} disagrees with model.pretrained="
                                  f"{card.name}, whose weights need {key}={wanted!r}; build the "
                                  "config with load_config, which sets it from the card")

    def _get(self, key: str) -> Any:
        """The value of ``section.key`` (``model.args.NAME``: ``None`` when not given)."""
        section, _, name = key.partition(".")
        if name.startswith("args."):
            return self.model.args.get(name[5:])
        return getattr(getattr(self, section), name)

    def sections(self) -> list[Section]:
        return [getattr(self, name) for name in SECTIONS]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain types (tuples become lists), for YAML/JSON and checkpoints."""
        return {name: {f.name: _plain(getattr(getattr(self, name), f.name))
                       for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` of every setting (``model.args`` as one value)."""
        return {f"{s}.{k}": v for s, values in self.to_dict().items() for k, v in values.items()}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())

    def to_yaml(self) -> str:
        """The config as YAML, sections in order, without anchors or aliases (which config
        files refuse: :func:`read_config_file`)."""
        return yaml.dump(self.to_dict(), Dumper=_PlainDumper, sort_keys=False)

    def replace(self, changes: dict[str, Any]) -> TaskConfig:
        """A copy with ``changes`` (``{"section.key": value}``) coerced and checked like any
        other override."""
        return from_dict(merge(self.to_dict(), changes), "")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- building configs from mappings, files and the command line ---------------------------

_FIELDS = {name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
_TYPES = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
_DERIVED = {"length_wav": "data.clip_seconds", "length": "data.clip_seconds and features.hop_length"}


def known_settings() -> list[str]:
    """Every ``section.key`` a config has."""
    return [f"{s}.{k}" for s, fields in _FIELDS.items() for k in fields]


def similar_settings(name: str) -> list[str]:
    """Settings a mistyped or guessed ``name`` may have meant (``ema`` → ``train.ema_decay``)."""
    known = known_settings()
    if name in known:
        return [name]
    bare = name.rpartition(".")[2].replace("_", "")

    def rank(key: str) -> int:  # 0: same start, 1: same initials (lr), 2: a part, 3: unlike
        joined = key.replace("_", "")
        tests = (joined.startswith(bare[:3]), "".join(w[0] for w in key.split("_")) == bare,
                 bare in joined)
        return next((i for i, hit in enumerate(tests) if hit), 3)

    ranks = {k: rank(k.rpartition(".")[2]) for k in known}
    return sorted((k for k in known if ranks[k] < 3), key=lambda k: ranks[k])


def _split(key: str, source: str) -> tuple[str, str, str | None]:
    """``"model.args.width"`` → ``("model", "args", "width")``; an unknown key is an error."""
    parts = key.split(".")
    section, name = parts[0], ".".join(parts[1:2])
    if section == "model" and name == "args" and len(parts) == 3:
        return section, name, parts[2]
    if len(parts) == 2 and section in _FIELDS and name in _FIELDS[section]:
        return section, name, None
    if key in _DERIVED:
        raise ConfigError(f"{source}: {key} is derived from {_DERIVED[key]}; set those instead")
    close = similar_settings(key)
    hint = f" (did you mean {', '.join(close[:4])}?)" if close else ""
    raise ConfigError(f"{source}: unknown setting '{key}'{hint}; settings are section.key, "
                      f"sections {', '.join(SECTIONS)}")


def merge(base: dict[str, dict[str, Any]], changes: dict[str, Any],
          source: str = "config") -> dict[str, dict[str, Any]]:
    """``base`` (nested, as :meth:`TaskConfig.to_dict`) with ``changes`` applied.

    ``changes`` may be nested (a config file: ``{"train": {"seed": 1}}``) or dotted
    (``{"train.seed": 1}``, from ``--set``). Changing ``model.name`` without giving
    ``model.args`` starts from the new model's defaults: the old model's arguments do not
    apply to it.
    """
    flat: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(value, dict) and "." not in key and key not in SECTIONS:
            raise ConfigError(f"{source}: unknown section '{key}'; sections are {', '.join(SECTIONS)}")
        if isinstance(value, dict) and key in SECTIONS:
            if key == "model" and isinstance(value.get("args"), dict):
                value = {**value, "args": dict(value["args"])}
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    out = {s: dict(v) for s, v in base.items()}
    old_model = out["model"].get("name")
    if flat.get("model.name", old_model) != old_model and "model.args" not in flat:
        out["model"]["args"] = {}
    for key, value in flat.items():
        section, name, arg = _split(key, source)
        if arg is not None:
            out["model"]["args"] = {**out["model"].get("args", {}), arg: value}
        elif name == "args":
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: model.args must be a mapping of argument: value")
            out["model"]["args"] = {**out["model"].get("args", {}), **value}
        else:
            out[section][name] = value
    return out


def _refuse_flat(values: Any, source: str) -> None:
    """A nested mapping of sections, or an error; the old one-level format gets its own."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of section: settings")
    old = [k for k, v in values.items() if not isinstance(v, dict)]
    if old:
        raise ConfigError(f"{source}: a flat config written by an older escnet (settings such as "
                          f"'{old[0]}' outside the sections {', '.join(SECTIONS)}); this escnet "
                          "reads configs in sections: retrain, or move each setting into its section")


def from_dict(values: dict[str, Any], source: str = "config") -> TaskConfig:
    """Build a checked config from a nested mapping (as written by :meth:`TaskConfig.save`).

    A flat mapping of the old one-level format (``learning_rate: 0.001``) is refused, saying
    so, as are unknown sections and keys.
    """
    _refuse_flat(values, source)
    nested = merge({s: {} for s in SECTIONS}, values, source)
    try:
        sections = {}
        for name, cls in SECTIONS.items():
            sections[name] = cls(**{k: _coerce(name, k, v) for k, v in nested[name].items()})
        return TaskConfig(**sections)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}" if source else str(err)) from None


def _coerce(section: str, key: str, value: Any) -> Any:
    """Convert ``value`` (from YAML, TOML or a ``--set`` string) to the type of ``section.key``."""
    return coerce(f"{section}.{key}", _TYPES[section][key], value)


def coerce(name: str, kind: Any, value: Any) -> Any:
    """``value`` as type ``kind`` (``int``, ``float``, ``bool``, ``str``, ``X | None``,
    ``list[X]``, ``tuple[X, X]``, ``dict``); ``name`` is the setting named in errors.
    Floats must be finite."""
    args = typing.get_args(kind)
    bad = ConfigError(f"setting {name}={value!r}: expected {_type_name(kind)}")
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(name, args[0], value)
    origin = typing.get_origin(kind)
    if kind is Any:
        return value
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise bad
        return _plain(value)
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
        elif isinstance(value, int) and not isinstance(value, bool) and origin is list:
            value = [value]
        is_range = origin is tuple and args[0] is float  # one number for a range: a fixed value
        if is_range and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        if is_range and len(value) == 1:
            value = list(value) * len(args)
        items = [_coerce_scalar(args[0], v.strip() if isinstance(v, str) else v, bad) for v in value]
        if origin is tuple and len(items) != len(args):
            raise ConfigError(f"setting {name}={value!r}: expected {len(args)} values")
        return origin(items)
    return _coerce_scalar(kind, value, bad)


def _coerce_scalar(kind: type, value: Any, bad: ConfigError) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise bad
    if isinstance(value, bool):
        raise bad
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if kind is float:
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(f"{str(bad).rpartition(':')[0]}: must be a finite number")
            return number
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if kind is str:
        if not isinstance(value, (str, int, float)):
            raise bad
        return str(value)
    raise bad


def _type_name(kind: Any) -> str:
    return str(kind).replace("typing.", "") if not isinstance(kind, type) else kind.__name__


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["train.learning_rate=1e-3", ...]`` from ``--set`` into ``{key: raw YAML value}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r}: expected section.key=value, e.g. "
                              "train.learning_rate=1e-3")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by two settings twice rather than as an anchor and an alias."""

    def ignore_aliases(self, data) -> bool:
        return True


class _StrictLoader(yaml.SafeLoader):
    """YAML as a config file should be: a key given twice is refused (YAML would keep the
    last silently), and so are aliases (``*name``), which config files do not need and which
    let a few hundred bytes expand into gigabytes ("billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in an "
                                              "escnet config; write the value out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads 1e-4 as a string, YAML 1.2 and every user as a number: read it as one
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML file a user gave (``what`` it is, for messages), read as :func:`read_text`
    reads text and as :class:`_StrictLoader` parses it; a mistake names the file and line."""
    try:
        return yaml.load(read_text(path, what, ConfigError), _StrictLoader)
    except yaml.MarkedYAMLError as err:
        where = f"line {err.problem_mark.line + 1}: " if err.problem_mark else ""
        raise ConfigError(f"{path}: not valid YAML: {where}{err.problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".splitlines()[0]) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a mapping."""
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: config files must end in .yaml, .yml or .toml")
    if path.suffix != ".toml":
        values = read_yaml(path, "config file") or {}
    else:
        try:
            values = tomllib.loads(read_text(path, "config file", ConfigError))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML: {err}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of section: settings")
    return values


PRESET_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    """Names of the recipes shipped with escnet (``escnet train --preset NAME``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_values(name: str) -> dict[str, Any]:
    """The settings the shipped recipe ``name`` gives (``src/escnet/presets/NAME.yaml``)."""
    if name not in list_presets():
        raise ConfigError(f"preset {name!r}: unknown preset; choose from {', '.join(list_presets())}")
    return read_config_file(PRESET_DIR / f"{name}.yaml")


def preset_config(name: str) -> TaskConfig:
    """The shipped recipe ``name`` over the defaults (and the card of its weights)."""
    return load_config(preset=name)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: TaskConfig | None = None, preset: str | None = None) -> TaskConfig:
    """``base`` (default: the defaults), then ``preset``'s recipe, then the file at ``path``
    (if any), then ``overrides`` (``{"section.key": value}``), each checked in turn.

    Where ``model.pretrained`` names a pretrained card (:mod:`escnet.cards`), the card sets the
    model and the front-end after every layer; a setting given in any layer (or in ``base``,
    a run's own) that disagrees with the card is refused, naming both.
    """
    layers = [(f"preset {preset}", preset_values(preset))] if preset else []
    if path is not None:
        values = read_config_file(path)
        _refuse_flat(values, str(path))
        layers.append((str(path), values))
    layers.append(("command line", overrides or {}))
    config = base or TaskConfig()
    given = set(base.flat()) if base else set()  # settings someone chose: a card may not change them
    for source, values in layers:
        nested = merge(config.to_dict(), values, source)
        keys = _given_keys(values)
        given |= keys
        config = from_dict(_with_card(nested, given, keys, source), source)
    return config


def _given_keys(values: dict[str, Any]) -> set[str]:
    """``section.key`` (``model.args.name`` for model arguments) of every setting ``values``
    (nested, as a config file, or dotted, as ``--set``) gives."""
    keys = set()
    for key, value in values.items():
        if isinstance(value, dict) and key in SECTIONS:
            keys |= _given_keys({f"{key}.{k}": v for k, v in value.items()})
        elif key == "model.args" and isinstance(value, dict):
            keys |= {f"model.args.{k}" for k in value} | {key}
        else:
            keys.add(key)
    return keys


def _with_card(nested: dict[str, dict[str, Any]], given: set[str], layer: set[str],
               source: str) -> dict[str, dict[str, Any]]:
    """``nested`` with the settings of the card ``model.pretrained`` names (:mod:`escnet.cards`),
    refusing one that a setting in ``given`` disagrees with. A card that changes the model to
    one of another family starts it from its defaults (``model.args`` not in this ``layer``),
    as a changed ``model.name`` does."""
    m = nested["model"]
    card = find_card(str(m.get("pretrained") or ""), m.get("name"), m.get("args") or {})
    if card is None:
        return nested
    out = {s: dict(v) for s, v in nested.items()}
    out["model"]["args"] = dict(m.get("args") or {})
    if m.get("name") != card.model and family_of(str(m.get("name"))) != card.family and \
            "model.args" not in layer and not any(k.startswith("model.args.") for k in layer):
        out["model"]["args"] = {}
    for key, wanted in card.settings().items():
        section, name, arg = _split(key, source)
        holder = out["model"]["args"] if arg else out[section]
        slot = arg or name
        if key in given and slot in holder and _coerce_any(key, holder[slot]) != wanted:
            raise ConfigError(f"{source}: setting {key}={holder[slot]!r} disagrees with "
                              f"model.pretrained={card.name}, whose weights need {key}={wanted!r}; drop "
                              f"{key} (the card sets it) or choose other weights")
        holder[slot] = wanted
    return out


def _coerce_any(key: str, value: Any) -> Any:
    """``value`` coerced to the type of setting ``key`` (as given: a model argument)."""
    section, name, arg = _split(key, "config")
    return value if arg else _coerce(section, name, value)
