"""Accuracy with few training clips per class: the curve a user with a handful of recordings of
their own sounds needs.

For each preset and each number of clips per class (``data.train_per_class``: the same clips,
drawn by the seed, for every preset), trains on the official folds and scores each held-out fold
whole (a preset that refits, ``fast``, refits only on all clips: a few clips per class are
those alone). Prints a table (mean ± std over folds, wall time), writes ``few_shot.csv`` and draws
``few_shot.png`` (accuracy against clips per class, one line per preset) into ``--out``. Runs
already in ``--out`` are reused (an interrupted script resumes).

    ESCNET_WEIGHTS=../shared/weights python benchmarks/few_shot.py --data ../shared/data/esc50 \\
        --grid pretrained-probe=1,5,10,20,0 --grid pretrained=1,5 --grid fast=5 --out runs/few-shot
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--grid", action="append", metavar="PRESET=SHOTS",
                        help="a preset and its clips per class, e.g. fast=1,5,10 (0: all, 32 a fold); "
                        "repeat for several presets (default pretrained-probe=1,5,10,20,0)")
    parser.add_argument("--folds", default="1,2,3,4,5")
    parser.add_argument("--out", default="runs/few-shot")
    args = parser.parse_args()

    from escnet.config import load_config
    from escnet.engine.train import train
    from escnet.machine import keep_freed_memory, machine_description
    from escnet.runs import RunDir

    keep_freed_memory()
    out = Path(args.out)
    folds = [int(f) for f in args.folds.split(",")]
    rows = []
    for entry in args.grid or ["pretrained-probe=1,5,10,20,0"]:
        preset, _, shot_list = entry.partition("=")
        for shots in (int(s) for s in shot_list.split(",")):
            run = out / f"{preset}-{shots or 'all'}"
            # a few clips per class are those alone: refitting would add the validation clips
            few = {"data.train_per_class": shots, "train.refit": False} if shots else {}
            config = load_config(None, {"data.data_dir": args.data, "data.folds": folds, **few},
                                 preset=preset)
            tick = time.perf_counter()
            summary = train(config, run, resume=RunDir(run).exists, progress=False)
            accs = list(summary["folds"].values())
            rows.append({"preset": preset, "clips_per_class": shots or 32,
                         "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
                         "folds": len(accs), "seconds": round(time.perf_counter() - tick, 1)})
            r = rows[-1]
            print(f"{preset:<18} {r['clips_per_class']:>3} clips/class: {100 * r['accuracy_mean']:5.1f} % "
                  f"± {100 * r['accuracy_std']:.1f} ({r['folds']} folds, {r['seconds']:.0f} s)", flush=True)
    with (out / "few_shot.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _plot(rows, out / "few_shot.png")
    print(f"machine: {machine_description()}; wrote {out / 'few_shot.csv'} and few_shot.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = sorted((r for r in rows if r["preset"] == preset), key=lambda r: r["clips_per_class"])
        x = [r["clips_per_class"] for r in mine]
        y = np.array([100 * r["accuracy_mean"] for r in mine])
        e = np.array([100 * r["accuracy_std"] for r in mine])
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=preset)
    ax.set_xscale("log")
    ax.set_xticks([1, 5, 10, 20, 32], ["1", "5", "10", "20", "32 (all)"])
    ax.set_xlabel("training clips per class")
    ax.set_ylabel("held-out accuracy (%), mean ± std over folds")
    ax.set_title("ESC-50, few clips per class")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
