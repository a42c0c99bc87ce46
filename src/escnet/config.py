"""TaskConfig: every data, feature, model and training setting of a run, in one dataclass.

A config is built from defaults, then a YAML/TOML file (``--config``), then command-line
overrides (``--set key=value`` and explicit flags), in that order. Values are coerced to the
field's type and validated; a bad value raises :class:`~escnet.errors.ConfigError` naming the
setting. The resolved config is saved as ``config.yaml`` in every run directory.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from escnet.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

CHOICES: dict[str, tuple[str, ...]] = {
    "subset": ("all", "esc10"),
    "protocol": ("folds", "random"),
    "optimizer": ("adam", "adamw"),
    "scheduler": ("none", "cosine", "onecycle"),
    "ast_pooling": ("cls", "mean"),
    "augment_policy": ("one", "each"),
    "shift_mode": ("circular", "pad"),
    "mixup_mode": ("features", "waveform"),
}
WAVEFORM_AUGMENTS = ("gaussian_noise", "time_stretch", "pitch_shift", "gain", "background_noise",
                     "time_shift")
NOISE_COLORS = ("white", "pink", "brown")


@dataclass
class TaskConfig:
    """All settings of a run. Defaults are the study report's (see ``SPEC.md``).

    ``length_wav`` (samples per clip) and ``length`` (frames per clip) of the report are derived
    from ``clip_seconds``, ``sample_rate`` and ``hop_length`` rather than stored, so they cannot
    disagree with them.
    """

    # --- data -----------------------------------------------------------------------------
    data_dir: str = ""
    """ESC-50 folder, a folder of class subfolders, a ``path,label[,fold]`` CSV, or a folder of
    ``{FOLD}-{CLIP_ID}-{TAKE}-{TARGET}.*`` files."""
    subset: str = "all"
    """``all`` or ``esc10`` (the 10-class subset flagged in ``meta/esc50.csv``)."""
    keyword: str = "?-*-*-*.*"
    """Glob for audio files when the folder has no ``meta/esc50.csv`` (the report used ``.wav``)."""
    protocol: str = "folds"
    """``folds``: k-fold cross-validation over the dataset's folds (the official protocol);
    ``random``: the report's single random split with ``train_ratio`` (leaks between takes of
    one recording on ESC-50: never the headline number)."""
    folds: list[int] = field(default_factory=list)
    """Held-out folds to run under ``protocol=folds``; empty means every fold of the dataset."""
    train_ratio: float = 0.9
    sample_rate: int = 44_100
    """Hz. Audio is resampled to this rate once, when the waveform cache is built."""
    clip_seconds: float = 5.0
    """Every clip is padded or cropped to this duration (s)."""
    cache_dir: str = ""
    """Where decoded waveforms are cached; empty means ``$ESCNET_CACHE`` or ``~/.cache/escnet``."""
    skip_bad: bool = False
    """Leave unreadable audio files out (and say how many) instead of stopping."""
    balanced_sampling: bool = False
    """Draw training examples with inverse class-frequency weights (the report's sampler)."""
    feature_cache: bool = True
    """Compute log-mels once per run (memory: clips × n_mels × frames × 4 bytes) instead of every
    epoch; applies while nothing changes the waveforms between epochs."""
    path2noise: str = ""
    """Folder of background-noise recordings for ``background_noise``; empty: coloured noise."""

    # --- features (log-mel) ---------------------------------------------------------------
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    f_min: float = 0.0
    """Hz."""
    f_max: float | None = None
    """Hz; ``None`` means ``sample_rate / 2``."""
    log_floor: float = 1e-5
    """Mel power is clamped at this value before the natural log."""

    # --- model ----------------------------------------------------------------------------
    model: str = "cnn10"
    """A name from ``escnet models``; the report's models keep the report's settings below."""
    num_classes: int = 50
    """Set from the dataset's classes when a run starts."""
    cnn_out_channels: int = 8
    kernel_size: tuple[int, int] = (5, 20)
    """(mel bins, frames)."""
    stride: tuple[int, int] = (2, 8)
    hidden_size: int = 64
    gru_num_layers: int = 2
    gru_dropout: float = 0.1
    bidirectional: bool = False
    vgg_batch_norm: bool = False
    """vgg19: VGG19-BN instead of VGG19."""
    cnn_width: int = 32
    """cnn10: channels of the first block (doubling in each of the 4); 64 is PANNs' CNN10."""
    cnn_dropout: float = 0.2
    """cnn10: dropout after each of the first 3 conv blocks (PANNs: 0.2)."""
    head_dropout: float = 0.5
    """cnn10: dropout before each of the 2 linear layers (PANNs: 0.5)."""
    ast_patch: int = 16
    """ast: patch side (mel bins = frames), no overlap."""
    ast_dim: int = 192
    ast_depth: int = 4
    ast_heads: int = 4
    ast_pooling: str = "cls"
    """ast: ``cls`` token or ``mean`` of the patch tokens."""
    pretrained: str = ""
    """Pretrained weights: a path, a URL, or a name the model knows (vgg19: ``imagenet``)."""
    pretrained_sha256: str = ""
    """Expected sha256 (or a prefix of at least 8 hex digits) of downloaded weights."""

    # --- augmentation (training only; never at evaluation or prediction) -------------------
    augment: list[str] = field(default_factory=list)
    """Waveform transforms, from ``gaussian_noise, time_stretch, pitch_shift, gain,
    background_noise, time_shift``; empty: none."""
    augment_policy: str = "one"
    """``one``: one transform per example, drawn uniformly from ``augment`` plus the identity
    (the report's policy, without its off-by-one); ``each``: every transform with ``augment_p``."""
    augment_p: float = 0.5
    """Probability of each transform under ``augment_policy=each``."""
    augment_copies: int = 0
    """0: transform every example afresh each epoch, in the DataLoader workers. K > 0: draw K
    augmented copies of every clip once (cached on disk) and train each epoch on one of them,
    picked at random, so an epoch costs no more than without augmentation."""
    noise_std: float = 0.01
    """gaussian_noise: standard deviation (full scale 1.0); the result is clipped to [-1, 1]."""
    time_stretch_rate: tuple[float, float] = (2.0, 2.0)
    """time_stretch: rate range (2.0 plays twice as fast); one value for a fixed rate."""
    pitch_shift_semitones: tuple[float, float] = (-5.0, -5.0)
    """pitch_shift: semitone range."""
    gain_db: tuple[float, float] = (-12.04, -12.04)
    """gain: dB range; the report's volume 0.25 is -12.04 dB."""
    snr_db: tuple[float, float] = (3.0, 30.0)
    """background_noise: signal-to-noise ratio range in dB."""
    noise_colors: list[str] = field(default_factory=lambda: list(NOISE_COLORS))
    """background_noise without ``path2noise``: coloured noises to draw from."""
    shift_max: float = 0.5
    """time_shift: largest shift as a fraction of the clip, either way."""
    shift_mode: str = "circular"
    """time_shift: ``circular`` (what leaves the end comes back at the start) or ``pad`` (zeros)."""
    spec_augment: bool = False
    """SpecAugment masks on each training batch of log-mels, on the device."""
    freq_masks: int = 2
    freq_mask_width: int = 8
    """Widest frequency mask, in mel bins (each width is uniform in 0..this)."""
    time_masks: int = 2
    time_mask_width: int = 20
    """Widest time mask, in frames."""
    mixup_alpha: float = 0.0
    """mixup: Beta(alpha, alpha) mixing weight per example; 0 turns it off."""
    mixup_mode: str = "features"
    """``features``: mix log-mels (works with the feature cache); ``waveform``: between-class
    mixing of the waveforms, weighted by their loudness (Tokozume et al., 2018)."""
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    """Evaluate, save and predict with an exponential moving average of the weights (and
    BatchNorm statistics), updated after every optimiser step with this decay (0.998 averages
    over about 500 steps); 0 turns it off."""
    crop_seconds: float = 0.0
    """Train on a random window of this many seconds of each clip's log-mel (a fresh offset per
    example and epoch: a time-shift augmentation that also makes steps cheaper); 0 or at least
    ``clip_seconds``: the whole clip. Evaluation always sees whole clips."""

    # --- training -------------------------------------------------------------------------
    batch_size: int = 128
    learning_rate: float = 3e-4
    weight_decay: float = 1e-5
    num_epochs: int = 20
    optimizer: str = "adam"
    scheduler: str = "none"
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    amp: bool = True
    """Mixed precision (bfloat16 autocast) when training on CUDA; ignored on CPU."""
    channels_last: bool = False
    """Keep conv weights (and so activations) in channels-last (NHWC) memory layout: about 1.5×
    faster cnn10 training on CPU (``benchmarks/train_step.py``); numbers differ from NCHW in the
    last float bits only."""
    tensorboard: bool = False
    """Also log per-epoch scalars of every fold to ``RUNDIR/tensorboard`` (needs ``tensorboard``)."""

    def __post_init__(self) -> None:
        self.validate()

    # Derived sizes, kept under the report's names.
    @property
    def length_wav(self) -> int:
        """Samples per clip: ``round(clip_seconds * sample_rate)``."""
        return round(self.clip_seconds * self.sample_rate)

    @property
    def waveform_augment(self) -> bool:
        """Whether training batches need waveforms changed each epoch (so no feature cache)."""
        return (bool(self.augment) and self.augment_copies == 0) or (
            self.mixup_alpha > 0 and self.mixup_mode == "waveform")

    @property
    def length(self) -> int:
        """Frames per clip for a centred STFT: ``length_wav // hop_length + 1``."""
        return self.length_wav // self.hop_length + 1

    @property
    def crop_frames(self) -> int:
        """Frames of a ``crop_seconds`` training window; 0 when training sees whole clips."""
        if not 0 < self.crop_seconds < self.clip_seconds:
            return 0
        return round(self.crop_seconds * self.sample_rate) // self.hop_length + 1

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""

        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"setting {name}={getattr(self, name)!r}: {why}")

        for name, options in CHOICES.items():
            need(getattr(self, name) in options, name, f"must be one of {', '.join(options)}")
        for name in ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "num_classes",
                     "cnn_out_channels", "hidden_size", "gru_num_layers", "batch_size",
                     "num_epochs", "cnn_width", "ast_patch", "ast_dim", "ast_depth", "ast_heads"):
            need(getattr(self, name) > 0, name, "must be > 0")
        for name in ("clip_seconds", "learning_rate", "log_floor"):
            need(getattr(self, name) > 0, name, "must be > 0")
        need(self.num_classes >= 2, "num_classes", "must be >= 2")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.num_workers >= 0, "num_workers", "must be >= 0")
        need(0 < self.train_ratio < 1, "train_ratio", "must be between 0 and 1 (exclusive)")
        need(0 <= self.gru_dropout < 1, "gru_dropout", "must be in [0, 1)")
        need(self.win_length <= self.n_fft, "win_length", f"must be <= n_fft ({self.n_fft})")
        need(self.f_min >= 0, "f_min", "must be >= 0")
        need(self.ast_dim % self.ast_heads == 0, "ast_dim",
             f"must be divisible by ast_heads ({self.ast_heads})")
        need(not self.pretrained_sha256 or len(self.pretrained_sha256) >= 8, "pretrained_sha256",
             "must be at least 8 hex digits")
        nyquist = self.sample_rate / 2
        if self.f_max is not None:
            need(self.f_min < self.f_max <= nyquist, "f_max",
                 f"must be in (f_min, sample_rate/2] = ({self.f_min}, {nyquist}]")
        else:
            need(self.f_min < nyquist, "f_min", f"must be < sample_rate/2 ({nyquist})")
        need(self.length_wav >= self.n_fft // 2 + 1, "clip_seconds",
             f"clip too short for n_fft={self.n_fft} at {self.sample_rate} Hz")
        for name in ("kernel_size", "stride"):
            value = getattr(self, name)
            need(len(value) == 2 and all(v > 0 for v in value), name,
                 "must be two positive integers (mel bins, frames)")
        need(all(f > 0 for f in self.folds), "folds", "fold numbers start at 1")
        need(len(set(self.folds)) == len(self.folds), "folds", "names a fold twice")
        unknown = [a for a in self.augment if a not in WAVEFORM_AUGMENTS]
        need(not unknown, "augment", f"unknown transform {', '.join(unknown)}; choose from "
             f"{', '.join(WAVEFORM_AUGMENTS)}")
        need(len(set(self.augment)) == len(self.augment), "augment", "names a transform twice")
        need(0 <= self.augment_p <= 1, "augment_p", "must be in [0, 1]")
        need(all(c in NOISE_COLORS for c in self.noise_colors) and self.noise_colors,
             "noise_colors", f"must be some of {', '.join(NOISE_COLORS)}")
        for name in ("time_stretch_rate", "pitch_shift_semitones", "gain_db", "snr_db"):
            lo, hi = getattr(self, name)
            need(lo <= hi, name, "must be a range low,high with low <= high")
        need(self.time_stretch_rate[0] > 0, "time_stretch_rate", "must be > 0")
        need(0 <= self.shift_max <= 1, "shift_max", "must be in [0, 1] (a fraction of the clip)")
        for name in ("augment_copies", "freq_masks", "freq_mask_width", "time_masks",
                     "time_mask_width"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.mixup_alpha >= 0, "mixup_alpha", "must be >= 0 (0 is off)")
        need(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        need(0 <= self.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 is off)")
        for name in ("cnn_dropout", "head_dropout"):
            need(0 <= getattr(self, name) < 1, name, "must be in [0, 1)")
        need(self.crop_seconds >= 0, "crop_seconds", "must be >= 0 (0 is off)")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             "device", "must be auto, cpu, cuda or cuda:N")
        if self.path2noise:
            need(Path(self.path2noise).is_dir(), "path2noise", "is not a folder")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (tuples become lists), for YAML/JSON and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def replace(self, **changes: Any) -> TaskConfig:
        """A copy with ``changes`` coerced and validated like any other override."""
        return from_dict({**self.to_dict(), **changes})


def cache_root(config: TaskConfig) -> Path:
    """The waveform cache folder: ``cache_dir``, else ``$ESCNET_CACHE``, else ``~/.cache/escnet``."""
    if config.cache_dir:
        return Path(config.cache_dir)
    return Path(os.environ.get("ESCNET_CACHE") or Path.home() / ".cache" / "escnet")


_FIELD_TYPES = typing.get_type_hints(TaskConfig)
_DERIVED = {"length_wav": "clip_seconds", "length": "clip_seconds and hop_length"}


def _coerce(name: str, value: Any) -> Any:
    """Convert ``value`` (from YAML, TOML or a ``--set`` string) to the type of field ``name``."""
    kind = _FIELD_TYPES[name]
    args = typing.get_args(kind)
    bad = ConfigError(f"setting {name}={value!r}: expected {_type_name(kind)}")
    if isinstance(kind, types.UnionType):  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce_scalar(args[0], value, bad)
    origin = typing.get_origin(kind)
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
            return float(value)
    except (TypeError, ValueError):
        raise bad from None
    if kind is str:
        if not isinstance(value, (str, int, float)):
            raise bad
        return str(value)
    raise bad


def _type_name(kind: Any) -> str:
    return str(kind).replace("typing.", "") if not isinstance(kind, type) else kind.__name__


def similar_settings(name: str) -> list[str]:
    """Settings a mistyped or guessed ``name`` may have meant (``ema`` → ``ema_decay``)."""
    known = sorted(f.name for f in dataclasses.fields(TaskConfig))
    if name in known:
        return [name]
    return [k for k in known if k.startswith(name[:3]) or name in k]


def from_dict(values: dict[str, Any], source: str = "config") -> TaskConfig:
    """Build a validated config from a mapping; unknown keys are an error naming ``source``."""
    known = {f.name for f in dataclasses.fields(TaskConfig)}
    for key in values:
        if key in _DERIVED:
            raise ConfigError(f"{source}: {key} is derived from {_DERIVED[key]}; set those instead")
        if key not in known:
            close = similar_settings(key)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown setting '{key}'{hint}")
    try:
        return TaskConfig(**{k: _coerce(k, v) for k, v in values.items()})
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ``["lr=1e-3", ...]`` from ``--set`` into a mapping of raw YAML values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set learning_rate=1e-3")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            values = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: config files must end in .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {err}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of setting: value")
    return values


PRESET_DIR = Path(__file__).parent / "presets"


def list_presets() -> list[str]:
    """Names of the recipes shipped with escnet (``escnet train --preset NAME``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_config(name: str) -> TaskConfig:
    """The shipped recipe ``name`` (``src/escnet/presets/NAME.yaml``) over the defaults."""
    if name not in list_presets():
        raise ConfigError(f"--preset {name}: unknown preset; choose from {', '.join(list_presets())}")
    path = PRESET_DIR / f"{name}.yaml"
    return from_dict(read_config_file(path), f"preset {name}")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: TaskConfig | None = None, preset: str | None = None) -> TaskConfig:
    """``base`` (default: the defaults, or ``preset``'s recipe), then the file at ``path`` (if
    any), then ``overrides``."""
    if preset:
        base = preset_config(preset)
    values = read_config_file(path) if path is not None else {}
    file_config = from_dict({**(base or TaskConfig()).to_dict(), **values}, str(path or "config"))
    return from_dict({**file_config.to_dict(), **(overrides or {})}, "command line")
