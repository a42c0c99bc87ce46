"""Do a frame model's frames hear two sounds at once? On soundscapes made exactly as training
makes them (``escnet.transforms.scenes.make_scenes``: 3 s, noise beds, a second sound within
10 dB of the first), from clips of the folds given, so that the model's own training clips and
clips it never heard can be compared: where the scenes hold two sounds in a frame, how often
each frame says both (above 0.5), one, or neither, how loud the weaker of the two is and where
it ranks among the frame's classes (second or higher: a threshold could find it); where
they hold one, how often its class is above 0.5; and the clip head's probability for the lesser
of two sounds that overlap for at least a second (its training target is that sound's share of
the scene, about a third to a half), and on two whole clips of different classes mixed at equal
RMS.

    python benchmarks/frame_overlap.py --model runs/events-fold2 --data ../shared/data/esc50 \\
        --folds 3,4,5 --folds 2        # the model's training folds, then its held-out fold

A model that hears only the louder sound on its own training scenes is not held back by the
decoding (thresholds, smoothing) nor by unseen clips: docs/RESULTS.md, "Frame-level events".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from escnet.data.audio import load_audio
from escnet.data.tables import read_esc50
from escnet.deploy.predict import load_model_file
from escnet.models.mobilenet import TIME_STRIDE
from escnet.transforms.scenes import GRID_SECONDS, make_scenes

SOUNDS = 0.99
"""A frame holds a sound when that sound covers at least this share of it."""
OVERLAP_SECONDS = 1.0
"""Scenes whose two sounds overlap at least this long count for the clip head's row."""


def load_clips(paths: list[str], rate: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n, samples)`` float32: each clip decoded once at ``rate`` Hz, cut or zero-padded to
    ``samples``, and ``(n,)`` its valid samples."""
    clips = [load_audio(p, rate)[:samples] for p in paths]
    return (np.stack([np.pad(c, (0, samples - len(c))) for c in clips]).astype(np.float32),
            np.array([len(c) for c in clips]))


def measure(model, paths: list[str], labels: list[int], seconds: float, batch: int,
            hop_seconds: float) -> dict[str, float]:
    info = model.info
    wav, lengths = load_clips(paths, info.sample_rate, info.clip_samples)
    single, pairs, weaker, ranks = [], [], [], []
    for i in range(0, len(paths), batch):
        scenes = make_scenes(torch.from_numpy(wav[i:i + batch]), torch.from_numpy(lengths[i:i + batch]),
                             torch.tensor(labels[i:i + batch]), len(info.classes), info.sample_rate,
                             seconds)
        scores = model.score(scenes.wav.numpy())
        frames = scores.frames  # (batch, steps, classes)
        targets = scenes.frame_targets(frames.shape[1], TIME_STRIDE * hop_seconds).numpy()
        sounding = targets >= SOUNDS
        for b, k in zip(*np.nonzero(sounding.sum(-1) == 1), strict=True):
            single.append(frames[b, k, np.flatnonzero(sounding[b, k])[0]] > 0.5)
        for b, k in zip(*np.nonzero(sounding.sum(-1) == 2), strict=True):
            pairs.append(np.sort(frames[b, k, np.flatnonzero(sounding[b, k])]))
            ranks.append(int((frames[b, k] >= pairs[-1][0]).sum()))  # 1 = the frame's top class
        activity = scenes.activity.numpy()
        for b in range(len(activity)):
            both = np.flatnonzero(activity[b].any(-1))
            if len(both) == 2 and activity[b, both].min(0).sum() * GRID_SECONDS >= OVERLAP_SECONDS:
                weaker.append(np.sort(scores.probabilities[b, both])[0])
    mixed, mixed_frames = equal_mixes(model, wav, labels, batch)
    pairs_ = np.array(pairs).reshape(-1, 2)
    above = (pairs_ > 0.5).sum(1)
    return {"one-sound frames": len(single), "its class > 0.5": float(np.mean(single)),
            "two-sound frames": len(pairs_), "both > 0.5": float(np.mean(above == 2)),
            "one > 0.5": float(np.mean(above == 1)), "neither": float(np.mean(above == 0)),
            "weaker's frame, median": float(np.median(pairs_[:, 0])),
            "weaker's rank, median": float(np.median(ranks)),
            "weaker ranked 2nd or higher": float(np.mean(np.array(ranks) <= 2)),
            "overlapping scenes": len(weaker), "clip head: lesser sound, median": float(np.median(weaker)),
            "clip head: lesser sound >= 0.2": float(np.mean(np.array(weaker) >= 0.2)),
            "equal-RMS mixes": len(mixed), "clip head: lesser clip, median": float(np.median(mixed)),
            "frames: lesser clip's mean, median": float(np.median(mixed_frames))}


def equal_mixes(model, wav: np.ndarray, labels: list[int], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """For two clips of ``wav`` ``(n, samples)`` (consecutive, of different classes) mixed at
    equal RMS, each at -26 dBFS: the clip head's probability for the lesser of the two, and the
    lesser of their frames' mean probabilities, one of each per pair."""
    unit = wav / np.maximum(np.sqrt(np.mean(wav ** 2, axis=1, keepdims=True)), 1e-9)
    pairs = [(k, k + 1) for k in range(0, len(wav) - 1, 2) if labels[k] != labels[k + 1]]
    lesser, framed = [], []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        scores = model.score(np.stack([0.05 * (unit[a] + unit[b]) for a, b in chunk]).astype(np.float32))
        means = scores.frames.mean(axis=1)  # (pairs, classes)
        for j, (a, b) in enumerate(chunk):
            lesser.append(min(scores.probabilities[j, labels[a]], scores.probabilities[j, labels[b]]))
            framed.append(min(means[j, labels[a]], means[j, labels[b]]))
    return np.array(lesser), np.array(framed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a frame model: a run folder or an .onnx export")
    p.add_argument("--data", required=True, help="the ESC-50 folder")
    p.add_argument("--folds", action="append", required=True,
                   help="folds whose clips make the scenes, comma-separated; repeat for another row")
    p.add_argument("--clips", type=int, default=256, help="clips drawn from each group of folds")
    p.add_argument("--seconds", type=float, default=3.0, help="scene length (the preset's crop)")
    p.add_argument("--hop", type=float, default=0.01, help="the model's log-mel hop, seconds")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = load_model_file(args.model, threads=2)
    if not model.info.frame_model:
        raise SystemExit(f"{args.model}: not a frame model (train one with --preset pretrained-events)")
    table = read_esc50(Path(args.data))
    index = {name: k for k, name in enumerate(model.info.classes)}
    print(f"{args.model}: scenes of {args.seconds:g} s as training makes them, {args.clips} clips a row")
    for group in args.folds:
        folds = {int(f) for f in group.split(",")}
        rows = [(str(path), index[table.classes[y]])
                for path, y, f in zip(table.paths, table.labels, table.folds, strict=True) if int(f) in folds]
        order = np.random.default_rng(args.seed).permutation(len(rows))[:args.clips]
        torch.manual_seed(args.seed)
        result = measure(model, [rows[i][0] for i in order], [rows[i][1] for i in order],
                         args.seconds, 32, args.hop)
        print(f"folds {group}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in result.items()))


if __name__ == "__main__":
    main()
