"""Helpers shared by the benchmark scripts (run as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import argparse
import time

import torch

from escnet.config import TaskConfig, load_config, parse_overrides
from escnet.engine.fold import Steps, make_optimizer, train_one_epoch
from escnet.machine import keep_freed_memory
from escnet.models import SoundClassifier


def timed_epoch(config: TaskConfig, loader, featurizer: torch.nn.Module | None = None
                ) -> tuple[float, float]:
    """Seconds of one training epoch over ``loader`` from fixed initial weights, and the part of
    them spent waiting for data. ``featurizer`` replaces escnet's for waveform batches."""
    torch.manual_seed(0)
    model = SoundClassifier.from_config(config)
    if featurizer is not None:
        model.featurizer = featurizer
    optimizer = make_optimizer(model, config)
    tick = time.perf_counter()
    log = train_one_epoch(model, loader, Steps(optimizer), config, torch.device("cpu"))
    return time.perf_counter() - tick, log["data_seconds"]


def bench_parser(doc: str, clips: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--data``, ``--clips``, ``--preset``, ``--config``
    and ``--set key=value``."""
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    out.add_argument("--data", required=True, help="ESC-50 folder (or any dataset escnet reads)")
    out.add_argument("--clips", type=int, default=clips, help="how many clips to time")
    out.add_argument("--preset", help="start from a shipped recipe (default: the report's settings)")
    out.add_argument("--config", help="YAML or TOML file of settings")
    out.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    return out


def bench_config(args: argparse.Namespace, **settings) -> TaskConfig:
    """Defaults, then ``--preset``, ``--config``, ``--set``, then ``settings`` and ``--data``.

    Also sets malloc up as ``escnet train`` does (:func:`escnet.machine.keep_freed_memory`), so
    the timings are those of a training run."""
    keep_freed_memory()
    overrides = {**parse_overrides(args.set), **settings, "data.data_dir": args.data}
    return load_config(args.config, overrides, preset=args.preset)
