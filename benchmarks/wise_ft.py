"""Weight-space ensembles of a fine-tuned run and its starting point (WiSE-FT, Wortsman et al.
2022): does a model halfway between the probe and the fine-tuned network do better than either?

Takes two runs of the same model and folds: ``--start``, the AudioSet trunk with its probed head
(the `pretrained` preset trained for one epoch at a learning rate of 1e-12: its probe phase,
then no change), and ``--tuned``, the fine-tuned run. For each ``--alpha`` it writes a copy of
``--tuned`` whose fold models are ``(1 - alpha) * start + alpha * tuned`` (floating-point
weights; the BatchNorm statistics are the pretrained ones in both) and scores it on each fold's
held-out clips with ``escnet evaluate``. Exploratory: the held-out folds choose nothing here
unless you let them.

    ESCNET_WEIGHTS=../shared/weights escnet train --preset pretrained --folds 1 --epochs 1 \\
        --lr 1e-12 --data ../shared/data/esc50 --out runs/probe-start
    ESCNET_WEIGHTS=../shared/weights python benchmarks/wise_ft.py --start runs/probe-start \\
        --tuned runs/pretrained-fold1 --alpha 0,0.3,0.5,0.7,1 --out runs/wise
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from escnet.engine.evaluate import evaluate_run
from escnet.runs import RunDir


def interpolate(start: dict, tuned: dict, alpha: float) -> dict:
    """``(1 - alpha) * start + alpha * tuned`` for floating-point tensors; the rest from ``tuned``."""
    return {k: (1 - alpha) * start[k] + alpha * v if v.is_floating_point() else v for k, v in tuned.items()}


def main() -> None:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--start", required=True, help="the run at the fine-tuning's starting point")
    p.add_argument("--tuned", required=True, help="the fine-tuned run (same model and folds)")
    p.add_argument("--alpha", default="0,0.5,1", help="comma-separated weights of the tuned model")
    p.add_argument("--out", required=True, help="folder for the interpolated runs")
    args = p.parse_args()
    start, tuned = RunDir(args.start), RunDir(args.tuned)
    folds = tuned.model_folds()
    results = {}
    for alpha in (float(a) for a in args.alpha.split(",")):
        copy = Path(args.out) / f"alpha-{alpha:g}"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(tuned.path, copy, ignore=shutil.ignore_patterns(".escnet.lock"))
        for fold in folds:
            first = torch.load(start.checkpoint(fold), map_location="cpu", weights_only=False)["model"]
            state = torch.load(copy / f"fold-{fold}" / "last.pt", map_location="cpu", weights_only=False)
            state["model"] = interpolate(first, state["model"], alpha)
            torch.save(state, copy / f"fold-{fold}" / "last.pt")
        scores = evaluate_run(copy, progress=False)
        results[alpha] = {f: round(r["accuracy"], 4) for f, r in scores["folds"].items()}
        results[alpha]["loss"] = {f: round(r["loss"], 4) for f, r in scores["folds"].items()}
        print(f"alpha {alpha:g}: accuracy {results[alpha]} ")
    (Path(args.out) / "wise_ft.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
