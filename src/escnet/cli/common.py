"""What the commands share: the config flags, flags built from settings dataclasses, progress
bars, event flags, and reading many files where one bad file costs only its own line."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from escnet.config import list_presets, load_config, parse_overrides
from escnet.errors import AudioError

T = TypeVar("T")

# Flags of every command that builds a config, and the setting each one sets.
CONFIG_FLAGS: dict[str, tuple[str, type, str]] = {
    "model": ("model.name", str, "model name (see `escnet models`)"),
    "data": ("data.data_dir", str, "ESC-50 folder, class-folder tree, or path,label[,fold] CSV"),
    "subset": ("data.subset", str, "all or esc10"),
    "folds": ("data.folds", str, "held-out folds to run, e.g. 1,2,3,4,5 (default: all)"),
    "epochs": ("train.num_epochs", int, "training epochs per fold"),
    "batch_size": ("train.batch_size", int, "clips per batch"),
    "lr": ("train.learning_rate", float, "learning rate"),
    "seed": ("train.seed", int, "seed for data order and initialisation"),
    "device": ("train.device", str, "auto, cpu, cuda or cuda:N"),
    "workers": ("train.num_workers", int, "DataLoader worker processes"),
    "cache_dir": ("data.cache_dir", str, "folder for the decoded-waveform cache"),
    "pretrained": ("model.pretrained", str, "weights to start from: a path, a URL, or the name of a "
                   "pretrained card (escnet models --pretrained), which also sets the model and "
                   "its front-end"),
    "split": ("data.protocol", str, "protocol: folds (official k-fold CV) or random (the report's "
              "train_ratio split)"),
    "unknown_classes": ("data.unknown_classes", str, "open-set protocol: leave K classes (drawn by "
                        "the seed) or the named ones (dog,rain) out of training; their held-out "
                        "clips are scored as unknown sounds"),
}
# On/off flags of the same commands: (setting, help).
SWITCHES = {"skip_bad": ("data.skip_bad", "leave unreadable audio files out"),
            "balanced": ("data.balanced_sampling", "class-balanced sampling"),
            "tensorboard": ("train.tensorboard", "log per-epoch scalars to RUNDIR/tensorboard"),
            "refit": ("train.refit", "calibrate on the validation clips, then train again on every "
                      "clip and keep that calibration (twice the training time)")}


def setting_flags() -> dict[str, str]:
    """``{"section.key": "--flag"}`` of every setting with a flag of its own."""
    flags = {key: f"--{flag.replace('_', '-')}" for flag, (key, _, _) in CONFIG_FLAGS.items()}
    return flags | {key: f"--{flag.replace('_', '-')}" for flag, (key, _) in SWITCHES.items()}


def add_config_flags(p: argparse.ArgumentParser, leave_out: tuple[str, ...] = ()) -> None:
    """The flags of every command that builds a config: ``--preset --config --set``, then a
    flag for each of the common settings (:data:`CONFIG_FLAGS`, :data:`SWITCHES`) but those in
    ``leave_out``. :func:`config_of` reads them back."""
    p.add_argument("--preset", help=f"a shipped recipe to start from: {', '.join(list_presets())} "
                   "(docs/RESULTS.md); --config, the flags and --set apply on top")
    p.add_argument("--config", help="YAML or TOML file of settings")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override any setting, e.g. train.learning_rate=1e-3 or model.args.width=64")
    group = p.add_argument_group("common settings (each is also a --set)")
    for flag, (_, kind, text) in CONFIG_FLAGS.items():
        if flag not in leave_out:
            group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=text)
    for flag, (_, text) in SWITCHES.items():
        if flag not in leave_out:
            group.add_argument(f"--{flag.replace('_', '-')}", dest=flag, action="store_true", help=text)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{"section.key": value}`` of the config flags given (:func:`add_config_flags`), then
    ``--set``'s, which come last and so win."""
    overrides: dict[str, Any] = {}
    for flag, (key, _, _) in CONFIG_FLAGS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    unknown = overrides.pop("data.unknown_classes", None)
    if unknown is not None:  # a count, or class names (the config refuses an empty list)
        if unknown.strip().isdigit():
            overrides["data.unknown_classes"] = int(unknown)
        else:
            overrides["data.unknown_names"] = [n.strip() for n in unknown.split(",")]
    overrides |= {key: True for flag, (key, _) in SWITCHES.items() if getattr(args, flag, False)}
    return overrides | parse_overrides(args.set or [])


def config_of(args: argparse.Namespace, **overrides: Any):
    """The config the command line describes: ``--preset``, ``--config``, flags, ``--set``, and
    ``overrides`` (a command's own, last)."""
    return load_config(args.config, config_overrides(args) | overrides, preset=args.preset)


def bars(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal: redirected to a file (nohup, Slurm, CI) their
    carriage-return frames would fill it; the one line per epoch is printed either way."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def add_settings_flags(p: argparse.ArgumentParser, settings: type, leave_out: tuple[str, ...] = ()
                       ) -> None:
    """A flag for each field of a settings dataclass that has ``help`` in its metadata (its
    default and help from the field: declared once); a tuple field is a repeatable flag,
    named in the singular."""

    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        if f.name in leave_out or "help" not in f.metadata:
            continue
        kind = hints[f.name]
        if typing.get_origin(kind) is tuple:
            p.add_argument(f"--{f.name.removesuffix('s').replace('_', '-')}", dest=f.name,
                           action="append", metavar=f.metadata.get("metavar"), help=f.metadata["help"])
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=f.default,
                           metavar=f.metadata.get("metavar"),
                           help=f"{f.metadata['help']} (default %(default)s)")


def settings_of(args: argparse.Namespace, settings: type[T], **given: Any) -> T:
    """The settings dataclass from the flags :func:`add_settings_flags` added (and ``given``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(settings)
              if "help" in f.metadata and getattr(args, f.name, None) is not None}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return settings(**values, **given)


EVENT_FLAGS = ("window", "smooth", "on", "off", "min_duration", "max_gap", "lookahead")


def add_event_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The flags of :class:`~escnet.deploy.events.EventSettings` (but ``hop``, which commands
    describe their own way), with the defaults of clip models and of frame models."""
    from escnet.deploy.events import CLIP_DEFAULTS as c
    from escnet.deploy.events import FRAME_DEFAULTS as f

    def default(name: str) -> str:
        clip, frame = getattr(c, name), getattr(f, name)
        frame = "the length of the scenes it trained on" if frame is None else f"{frame:g}"
        return f"default {clip:g}" + (f"; a frame model's {frame}" if frame != f"{clip:g}" else "")

    p.add_argument("--window", type=float, metavar="SECONDS",
                   help=f"{prefix}seconds of audio per scored window ({default('window')})")
    p.add_argument("--on", type=float, metavar="P", help=f"{prefix}an event starts when its filtered "
                   f"probability reaches this ({default('on')})")
    p.add_argument("--off", type=float, metavar="P", help=f"{prefix}...and ends below this "
                   f"({default('off')})")
    p.add_argument("--smooth", type=int, metavar="HOPS", help=f"{prefix}hops filtered before the "
                   f"thresholds: their mean, a frame model's median ({default('smooth')})")
    p.add_argument("--min-duration", type=float, metavar="SECONDS", help=f"{prefix}shorter events "
                   f"are dropped ({default('min_duration')})")
    p.add_argument("--max-gap", type=float, metavar="SECONDS", help=f"{prefix}a dip this short "
                   f"continues an event ({default('max_gap')})")
    p.add_argument("--lookahead", type=int, metavar="FRAMES", help=f"{prefix}a frame model: frames "
                   f"heard after the one read each hop, more context and that much later "
                   f"({default('lookahead')})")


def event_flags_given(args: argparse.Namespace) -> bool:
    return any(getattr(args, f) is not None for f in EVENT_FLAGS)


def event_settings(args: argparse.Namespace):
    """The event settings the flags give, over the defaults (hop included)."""
    from dataclasses import replace

    from escnet.deploy.events import DEFAULTS

    return replace(DEFAULTS, **{f: getattr(args, f) for f in ("hop", *EVENT_FLAGS)
                                if getattr(args, f, None) is not None})


def add_device_flags(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """Where a model runs: ``--device`` (PyTorch models) and, with ``threads``, ``--threads``
    (ONNX Runtime)."""
    p.add_argument("--device", default="cpu", help="PyTorch models: cpu, cuda or cuda:N (default cpu)")
    if threads:
        p.add_argument("--threads", type=int, help="ONNX Runtime: windows scored at once (default: "
                       "one per core)")


def add_silence_flag(p: argparse.ArgumentParser, what: str = "get no label") -> None:
    from escnet.deploy.windows import SILENCE_DB

    p.add_argument("--silence-db", type=float, default=SILENCE_DB, metavar="DBFS",
                   help=f"windows quieter than this RMS level {what} (default {SILENCE_DB:g})")


def text(value: str) -> str:
    """``value`` fit for a line of text output: control characters (a newline in a class name
    or file name) written as escapes, so one item stays one line."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode()
                   for c in str(value))


def each_readable(files: Iterable[str], work: Callable[[str], T]) -> tuple[list[T], int]:
    """``work`` on every file; an unreadable one (:class:`AudioError`) costs only its own line
    on stderr. Returns the results and how many files could not be read."""
    results, unreadable = [], 0
    for path in files:
        try:
            results.append(work(path))
        except AudioError as err:
            print(f"escnet: error: {text(str(err))}", file=sys.stderr)
            unreadable += 1
    return results, unreadable


def unreadable_status(unreadable: int, total: int) -> int:
    """Say how many files could not be read (listed above) and give the exit status."""
    if unreadable:
        print(f"escnet: {unreadable} of {total} files could not be read (listed above)", file=sys.stderr)
    return 2 if unreadable else 0
