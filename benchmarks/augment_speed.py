"""What waveform augmentation costs per training epoch, and which way of running it to use.

Measures, on real clips with the settings of ``--config``:

1. each waveform transform alone, in ms per clip (one process);
2. one training epoch over ``--clips`` clips of the config's model, each with its ratio to the
   reference measured in the same run, **no augmentation with cached log-mels**:
   - the augmentation policy run per item, in the main process (``num_workers=0``);
   - the same in one DataLoader worker per core;
   - ``augment_copies``: K augmented copies made once (cost shown per copy), then epochs on
     cached log-mels of a randomly chosen copy, as without augmentation.
   SpecAugment and mixup stay as in the config in every case (they cost the same in all).

    python benchmarks/augment_speed.py --data ../shared/data/esc50 [--config configs/cnn10-cpu-aug.yaml]
        [--clips 400] [--set key=value ...]
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
from common import bench_config, bench_parser, timed_epoch

from escnet.data.cache import build_waveform_cache
from escnet.data.tables import load_table
from escnet.engine.data import prepare_data, train_loader
from escnet.machine import machine_description
from escnet.transforms.waveform import WaveformAugment


def epoch_seconds(config, waves, table) -> tuple[float, float, float]:
    """Seconds to prepare the data (copies, features), and of one epoch with its data wait."""
    tick = time.perf_counter()
    data, _, _ = prepare_data(waves, table, config, progress=False)
    prepare = time.perf_counter() - tick
    loader = train_loader(data, table, np.arange(len(table)), config,
                          torch.Generator().manual_seed(0))
    return prepare, *timed_epoch(config, loader)


def main() -> None:
    parser = bench_parser(__doc__, clips=400)
    parser.set_defaults(config="configs/cnn10-cpu-aug.yaml")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="escnet-bench-")  # copies are timed from scratch
    config = bench_config(args, **{"data.cache_dir": cache})
    table = load_table(config)
    rows = np.random.default_rng(0).permutation(len(table))[: args.clips]
    mask = np.zeros(len(table), dtype=bool)
    mask[rows] = True
    table = table.select(mask)
    waves, table = build_waveform_cache(table, config, progress=False)
    config = config.replace({"model.num_classes": len(table.classes)})
    print(f"machine: {machine_description()}, {os.cpu_count()} cores")
    print(f"config: {args.config}; {len(table)} clips at {config.data.sample_rate} Hz, model "
          f"{config.model.name}, batch {config.train.batch_size}\n")

    print("transform         ms per clip")
    sample = [np.array(waves[i], dtype=np.float32) for i in range(min(50, len(table)))]
    for name in config.augment.waveform:
        every = config.replace({"augment.policy": "each", "augment.p": 1.0}).augment
        augment = WaveformAugment(every, config.data.sample_rate, [name])
        tick = time.perf_counter()
        for i, wav in enumerate(sample):
            augment(wav, 0, i)
        print(f"{name:<17} {1000 * (time.perf_counter() - tick) / len(sample):>11.2f}")
    policy = WaveformAugment(config)
    tick = time.perf_counter()
    for i, wav in enumerate(sample):
        policy(wav, 0, i)
    ms = 1000 * (time.perf_counter() - tick) / len(sample)
    print(f"{'policy ' + config.augment.policy:<17} {ms:>11.2f}  (the mix the config draws from)\n")

    cores = os.cpu_count() or 1
    copies = max(1, config.augment.copies)
    cases = {
        "no augmentation, cached log-mels (reference)": config.replace({"augment.waveform": []}),
        "per item, main process": config.replace({"augment.copies": 0, "train.num_workers": 0}),
        f"per item, {cores} workers": config.replace({"augment.copies": 0, "train.num_workers": cores}),
        f"{copies} copies made once, cached log-mels": config.replace({"augment.copies": copies}),
    }
    print(f"{'one epoch of ' + str(len(table)) + ' clips':<46} {'prepare s':>9} {'epoch s':>8} "
          f"{'data wait s':>11} {'epoch ratio':>11}")
    epoch_seconds(cases[next(iter(cases))], waves, table)  # warm-up: first-call costs
    reference = None
    for label, case in cases.items():
        prepare, seconds, wait = epoch_seconds(case, waves, table)
        reference = reference or seconds
        print(f"{label:<46} {prepare:>9.1f} {seconds:>8.1f} {wait:>11.1f} {seconds / reference:>10.2f}×")
    print(f"\n'prepare' is paid once per run (all folds): the copies' share is "
          f"{len(table)} clips × {copies} copies; an ESC-50 run makes them for 2000 clips.")


if __name__ == "__main__":
    main()
