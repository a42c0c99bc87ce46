"""Training and inference speed of every registered model on this machine's CPU (or GPU).

Prints, per model: parameters, MACs per clip, training clips/s (forward + backward + Adam step
on precomputed log-mels, as `escnet train` runs with the feature cache), the estimated time of
one ESC-50 training epoch (1600 clips), and inference clips/s; each with its ratio to the
reference model measured in the same run (the report's CRNN, `--reference crnn`).

    python benchmarks/model_speed.py [--models a,b] [--batch 32] [--steps 3] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from escnet.config import TaskConfig, load_config, parse_overrides
from escnet.machine import machine_description
from escnet.models import count_macs, create_model, list_models


def build(name: str, config: TaskConfig) -> torch.nn.Module:
    """Model ``name`` at its default arguments for ``config``'s input."""
    return create_model(name, n_mels=config.features.n_mels, frames=config.length,
                        num_classes=config.model.num_classes)


def clips_per_second(name: str, config: TaskConfig, batch: int, steps: int) -> tuple[float, float]:
    """Best-of-``steps`` training and inference throughput (clips/s) after one warm-up step."""
    torch.manual_seed(0)
    model = build(name, config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, config.features.n_mels, config.length)
    y = torch.randint(0, config.model.num_classes, (batch,))
    train, infer = [], []
    for _ in range(steps + 1):
        model.train()
        tick = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        train.append(time.perf_counter() - tick)
        model.eval()
        with torch.inference_mode():
            tick = time.perf_counter()
            model(x)
            infer.append(time.perf_counter() - tick)
    return batch / min(train[1:]), batch / min(infer[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--reference", default="crnn")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(None, parse_overrides(args.set))
    names = [args.reference] + [m for m in args.models.split(",") if m != args.reference]
    print(f"machine: {machine_description()}")
    print(f"input: {config.data.clip_seconds:g} s at {config.data.sample_rate} Hz = "
          f"{config.features.n_mels} mels × "
          f"{config.length} frames; batch {args.batch}; best of {args.steps} steps\n")
    print(f"{'model':<10} {'params':>12} {'GMAC/clip':>10} {'train clip/s':>13} {'× ref':>7} "
          f"{'epoch (1600)':>13} {'infer clip/s':>13} {'× ref':>7}")
    ref = None
    for name in names:
        model = build(name, config)
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, config.features.n_mels, config.length) / 1e9
        del model
        train, infer = clips_per_second(name, config, args.batch, args.steps)
        ref = ref or (train, infer)
        print(f"{name:<10} {params:>12,} {macs:>10.3f} {train:>13.1f} {train / ref[0]:>7.3f} "
              f"{1600 / train:>11.0f} s {infer:>13.1f} {infer / ref[1]:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
