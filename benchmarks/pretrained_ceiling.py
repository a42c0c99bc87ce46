"""Is it the recipe or the pretrained network that limits accuracy? Two checks, each printing
five-fold figures (exploratory: the held-out folds choose nothing here); the third, test-time
shifts, is ``escnet evaluate RUN --tta 5``.

``--probe-layers``: logistic-regression probes (scikit-learn's ``LogisticRegression``, inputs
standardised on the training folds) on the frozen trunk's outputs averaged over frequency and
time, taken from several sets of its layers (the last alone, as the `pretrained-probe` preset
does; the last 3; the last 6; every layer; the last with the AudioSet head's hidden layer). If
earlier layers held what the last one lost, the wider probes would score higher.

``--runs A B ...``: finished runs on the same clips (their ``held_out.npz``): each one's errors,
the errors all of them make, the accuracy of their calibrated probabilities averaged (an
ensemble), and that of an oracle that is right whenever any of them is: no way of combining
these models can score more.

    ESCNET_WEIGHTS=../shared/weights python benchmarks/pretrained_ceiling.py \\
        --data ../shared/data/esc50 --probe-layers \\
        --runs runs/probe runs/pretrained-wise
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

LAYER_SETS = {"last (the preset's embedding)": [-1], "last 3": [-3, -2, -1],
              "last 6": [-6, -5, -4, -3, -2, -1], "every layer": None,
              "last + AudioSet hidden layer": [-1, "audioset"]}


def pooled_layers(config, progress: bool = True) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Every layer's output of the frozen pretrained trunk averaged over frequency and time, one
    ``(clips, channels)`` array per layer, then the AudioSet head's hidden layer; labels; folds."""
    from escnet.data.cache import build_waveform_cache
    from escnet.data.tables import load_table
    from escnet.engine.train import resolve_model
    from escnet.models import SoundClassifier

    table = load_table(config)
    waves, table = build_waveform_cache(table, config, progress)
    model = SoundClassifier.from_config(resolve_model(config, len(table.known_classes))).eval()
    trunk = model.backbone
    if trunk.audioset is None:
        raise SystemExit("--probe-layers needs model.args.audioset_head=true and AudioSet weights")
    parts: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(waves), 32):
            x = model.features(torch.from_numpy(np.array(waves[start : start + 32], np.float32)))[0]
            x, pooled = x.unsqueeze(1), []
            for layer in trunk.features:
                x = layer(x)
                pooled.append(x.mean(dim=(2, 3)))
            pooled.append(trunk.audioset[:2](pooled[-1]))
            parts.append([p.numpy() for p in pooled])
    layers = [np.concatenate(column) for column in zip(*parts, strict=True)]
    return layers, table.labels, table.folds


def probe(x: np.ndarray, labels: np.ndarray, folds: np.ndarray, c: float) -> list[float]:
    """Held-out accuracy of a standardised logistic regression, one per fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    accs = []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        clf.fit(x[train], labels[train])
        accs.append(float((clf.predict(x[test]) == labels[test]).mean()))
    return accs


def held_out(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's held-out clips over all folds: paths, labels, calibrated probabilities."""
    from escnet.runs import RunDir
    rundir = RunDir(run)
    paths, labels, probs = [], [], []
    for fold in rundir.fold_names():
        held = rundir.read_held_out(fold)
        if held is None:
            raise SystemExit(f"{run}: fold {fold} kept no held-out predictions")
        paths.append(held["paths"])
        labels.append(held["labels"])
        probs.append(rundir.read_calibration(fold).probabilities(held["logits"]))
    return np.concatenate(paths), np.concatenate(labels), np.concatenate(probs)


def compare_runs(runs: list[Path]) -> dict:
    """Errors of each run, errors they all make, and the accuracy of their probabilities averaged
    and of the oracle, over the clips they all scored (matched by path)."""
    loaded = [held_out(r) for r in runs]
    order = [np.argsort(p) for p, _, _ in loaded]
    paths = loaded[0][0][order[0]]
    for (p, _, _), o in zip(loaded, order, strict=True):
        if not np.array_equal(p[o], paths):
            raise SystemExit("--runs: the runs did not score the same clips")
    labels = loaded[0][1][order[0]]
    probs = [pr[o] for (_, _, pr), o in zip(loaded, order, strict=True)]
    wrong = np.array([p.argmax(1) != labels for p in probs])
    return {"clips": len(labels), "errors": [int(w.sum()) for w in wrong],
            "shared_errors": int(wrong.all(0).sum()),
            "ensemble": float((np.mean(probs, 0).argmax(1) == labels).mean()),
            "oracle": float(1 - wrong.all(0).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--data", help="the dataset (for --probe-layers)")
    p.add_argument("--preset", default="pretrained-probe", help="what --probe-layers reads its trunk from")
    p.add_argument("--probe-layers", action="store_true")
    p.add_argument("--c", type=float, default=1.0, help="inverse regularisation of the probes")
    p.add_argument("--runs", nargs="+", type=Path, default=[])
    args = p.parse_args()

    from escnet.config import load_config
    from escnet.machine import machine_description

    print(f"machine: {machine_description()}")
    if args.probe_layers:
        if not args.data:
            raise SystemExit("--probe-layers needs --data")
        config = load_config(None, {"data.data_dir": args.data, "model.args.freeze": True,
                                    "model.args.audioset_head": True}, preset=args.preset)
        layers, labels, folds = pooled_layers(config)
        trunk, hidden = layers[:-1], layers[-1]
        print(f"linear probes on the frozen trunk's pooled layers (C={args.c}):")
        for name, chosen in LAYER_SETS.items():
            x = np.concatenate(trunk if chosen is None else
                               [hidden if k == "audioset" else trunk[k] for k in chosen], 1)
            accs = probe(x, labels, folds, args.c)
            folds_text = " ".join(f"{100 * a:5.2f}" for a in accs)
            print(f"  {name:<30} {x.shape[1]:>5} features: {folds_text}  mean {100 * np.mean(accs):.2f} %",
                  flush=True)
    if args.runs:
        c = compare_runs(args.runs)
        print(f"held-out predictions, {c['clips']} clips:")
        for run, errors in zip(args.runs, c["errors"], strict=True):
            print(f"  {run}: {errors} errors ({100 * (1 - errors / c['clips']):.2f} %)")
        print(f"  errors all of them make: {c['shared_errors']}; probabilities averaged: "
              f"{100 * c['ensemble']:.2f} %; oracle (right when any is): {100 * c['oracle']:.2f} %")


if __name__ == "__main__":
    main()
