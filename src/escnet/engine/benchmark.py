"""The report's whole study in one call: train several models on one protocol, then compare them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from escnet.config import TaskConfig
from escnet.engine.train import train
from escnet.errors import ConfigError
from escnet.files import command_folder
from escnet.models import list_models
from escnet.reports.compare import compare
from escnet.runs import RunDir


def benchmark(models: list[str], base: TaskConfig, out_dir: str | Path, progress: bool = True,
              on_summary: Callable[[dict], None] | None = None) -> list[dict]:
    """Train each of ``models`` with the settings of ``base`` into ``out_dir/MODEL``, then
    :func:`~escnet.reports.compare.compare` them into ``out_dir`` (new, empty, or a benchmark's
    before: :func:`~escnet.files.command_folder`). A run already there is resumed (a finished
    one only re-reads its data), so an interrupted benchmark continues where it stopped.
    ``on_summary`` gets each model's summary as it finishes."""
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ConfigError(f"models: unknown model {', '.join(unknown)}; choose from "
                          f"{', '.join(list_models())}")
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:
        raise ConfigError(f"models: {', '.join(twice)} named twice; name each model once")
    out = command_folder(out_dir, "out", "benchmark")  # before any training: never a user's folder
    dirs = []
    for name in models:
        config = base.replace({"model.name": name})
        run_dir = out / name
        summary = train(config, run_dir, resume=RunDir(run_dir).exists, progress=progress)
        if on_summary is not None:
            on_summary(summary)
        dirs.append(run_dir)
    return compare(dirs, out, "benchmark")
