"""Training-step speed of one model on this machine's CPU, with each speed setting on and off.

Measures forward + backward + AdamW step on precomputed log-mels (as `escnet train` runs with
the feature cache) and eval-mode inference, in clips per second, for:

- ``glibc malloc defaults``: the baseline before :func:`escnet.runtime.keep_freed_memory`
  (which every later row, like `escnet train`, runs with);
- ``baseline``: float32, contiguous (NCHW) tensors, torch's default thread count, autograd on
  in eval (``torch.no_grad`` off);
- ``threads=1``: one intra-op thread instead of all cores;
- ``channels_last``: model and input in NHWC memory layout (oneDNN's preferred conv layout);
- ``compile``: ``torch.compile`` (inductor) of the model, compile time reported separately;
- ``channels_last+compile``: both;
- ``inference_mode``: eval under ``torch.inference_mode()`` (training unaffected).

Every line gives its ratio to the baseline measured in the same run.

    python benchmarks/train_step.py [--preset fast] [--batch 32] [--steps 5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from escnet.config import load_config, parse_overrides
from escnet.machine import keep_freed_memory, machine_description
from escnet.models import create_model


def measure(config, batch: int, steps: int, *, channels_last: bool = False,
            compile_model: bool = False, inference_mode: bool = True) -> dict[str, float]:
    """Median training and inference clips/s over ``steps`` steps after two warm-up steps."""
    torch.manual_seed(0)
    m = config.model
    model = create_model(m.name, n_mels=config.features.n_mels, frames=config.length,
                         num_classes=m.num_classes, **m.args)
    x = torch.randn(batch, config.features.n_mels, config.length)
    y = torch.randint(0, config.model.num_classes, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    run = model
    compile_seconds = 0.0
    if compile_model:
        tick = time.perf_counter()
        run = torch.compile(model)
        run(x).sum().backward()  # compiles forward and backward
        optimizer.zero_grad()
        compile_seconds = time.perf_counter() - tick
    no_grad = torch.inference_mode if inference_mode else contextlib.nullcontext
    train, infer = [], []
    for _ in range(steps + 2):
        model.train()
        tick = time.perf_counter()
        loss = F.cross_entropy(run(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train.append(time.perf_counter() - tick)
        model.eval()
        with no_grad():
            tick = time.perf_counter()
            run(x)
            infer.append(time.perf_counter() - tick)
    return {"train": batch / statistics.median(train[2:]),
            "infer": batch / statistics.median(infer[2:]), "compile_s": compile_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fast", help="config the model and features come from")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    config = load_config(None, parse_overrides(args.set), preset=args.preset)
    threads = torch.get_num_threads()
    print(f"machine: {machine_description()}")
    print(f"model {config.model.name} ({args.preset} preset): {config.features.n_mels} mels × "
          f"{config.length} "
          f"frames, batch {args.batch}, median of {args.steps} steps\n")
    print(f"{'setting':<22} {'train clip/s':>13} {'× base':>7} {'infer clip/s':>13} {'× base':>7}"
          f"  note")
    settings = {
        "channels_last": {"inference_mode": False, "channels_last": True},
        "compile": {"inference_mode": False, "compile_model": True},
        "channels_last+compile": {"inference_mode": False, "channels_last": True,
                                  "compile_model": True},
        "inference_mode": {},
        # last, so that changing the thread count cannot disturb the other rows
        "threads=1": {"inference_mode": False, "threads": 1},
    }
    defaults = measure(config, args.batch, args.steps, inference_mode=False)
    keep_freed_memory()  # every row from here on runs as `escnet train` does
    base = measure(config, args.batch, args.steps, inference_mode=False)

    def row(name: str, result: dict[str, float]) -> None:
        note = f"compile {result['compile_s']:.0f} s once" if result["compile_s"] else ""
        print(f"{name:<22} {result['train']:>13.1f} {result['train'] / base['train']:>7.2f} "
              f"{result['infer']:>13.1f} {result['infer'] / base['infer']:>7.2f}  {note}", flush=True)

    row("glibc malloc defaults", defaults)
    row("baseline", base)
    for name, kwargs in settings.items():
        torch.set_num_threads(kwargs.pop("threads", threads))
        try:
            row(name, measure(config, args.batch, args.steps, **kwargs))
        except Exception as error:  # e.g. no C++ compiler for inductor
            print(f"{name:<22} failed: {type(error).__name__}: {str(error).splitlines()[0]}")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
