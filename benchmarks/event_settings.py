"""Event settings side by side: event F1, segment F1 and decision latency of every combination
of the given settings, on seeded soundscapes of one ESC-50 fold (files only).

How the defaults of ``escnet.deploy.events`` were chosen: on scenes of a fold the model was
*trained* on or, better, of a fold another model of the same recipe held out, never on the
fold the figures in docs/RESULTS.md come from. Each window is scored once (the model's
answers are kept by the audio they were given), so a grid costs little more than one pass.

    python benchmarks/event_settings.py --model runs/events-fold2.onnx --data ../shared/data/esc50 \\
        --fold 2 --on 0.3,0.5,0.7 --smooth 1,3 --lookahead 0,1
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import statistics
from dataclasses import asdict
from pathlib import Path

import numpy as np
import soundfile as sf
from events import RATE, both_reported, build_scenes, matched_starts

from escnet.deploy.event_metrics import Tally, event_counts, segment_counts
from escnet.deploy.events import EventSettings, events_of, stream_file
from escnet.deploy.onnx_model import Scores
from escnet.deploy.predict import Model, load_model_file

GRID = {"on": float, "off": float, "smooth": int, "min_duration": float, "max_gap": float,
        "lookahead": int, "window": float, "hop": float}


class Remembered:
    """``model`` with each window's answer kept by the window's bytes: a second pass over the
    same audio costs no model call."""

    def __init__(self, model: Model) -> None:
        self.model, self.info, self.kept = model, model.info, {}

    def logmel(self, window: np.ndarray) -> None:
        return None

    def score(self, windows: np.ndarray) -> Scores:
        keys = [hashlib.sha1(w.tobytes()).digest() for w in windows]
        new = [i for i, k in enumerate(keys) if k not in self.kept]
        if new:
            got = self.model.score(windows[new])
            for j, i in enumerate(new):
                self.kept[keys[i]] = [None if part is None else part[j] for part in got]
        rows = [self.kept[k] for k in keys]
        return Scores(*(None if rows[0][f] is None else np.stack([r[f] for r in rows])
                        for f in range(len(Scores._fields))))


def evaluate(model: Model, scenes, settings: EventSettings) -> dict:
    event, segment, decided, both, pairs = Tally(), Tally(), [], 0, 0
    for path, truth in scenes:
        messages = [m for u in stream_file(model, path, settings) for m in u.events]
        found = events_of(messages)
        event += event_counts(truth, found, collar=0.5, offset_share=0.2)[0]
        segment += segment_counts(truth, found, sf.info(path).duration)[0]
        decided += [d for _, d in matched_starts(truth, [(m.decided, m.label, m.time)
                                                         for m in messages if m.state == "start"])]
        b, n = both_reported(truth, found)
        both, pairs = both + b, pairs + n
    return {"event_f1": event.f1, "segment_f1": segment.f1,
            "decided_median_s": statistics.median(decided) if decided else None,
            "pairs_both_reported": both, "overlapping_pairs": pairs}


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", required=True, help="an .onnx export or a run folder")
    p.add_argument("--data", required=True, help="the ESC-50 folder")
    p.add_argument("--fold", type=int, required=True, help="the fold the scenes are made of")
    p.add_argument("--scenes", type=int, default=10)
    p.add_argument("--overlap-scenes", type=int, default=6)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/event-settings", help="folder for the scenes")
    for name in GRID:
        p.add_argument(f"--{name.replace('_', '-')}", help="values to try, comma-separated "
                       "(default: the model's own)")
    args = p.parse_args()
    out = Path(args.out)
    plain = build_scenes(args.data, args.fold, args.scenes, args.seconds, args.seed, out / "plain")
    overlapping = build_scenes(args.data, args.fold, args.overlap_scenes, args.seconds, args.seed + 1,
                               out / "overlap", overlap=True)
    model = Remembered(load_model_file(args.model, threads=2))
    given = {k: [kind(v) for v in getattr(args, k).split(",")] for k, kind in GRID.items()
             if getattr(args, k)}
    print(f"fold {args.fold}: {len(plain)} scenes ({sum(len(e) for _, e in plain)} events), "
          f"{len(overlapping)} of overlapping pairs, {RATE} Hz; {args.model}")
    for values in itertools.product(*given.values()):
        settings = EventSettings(**dict(zip(given, values, strict=True)))
        resolved = settings.for_model(model.info)
        a, b = evaluate(model, plain, settings), evaluate(model, overlapping, settings)
        chosen = {k: v for k, v in asdict(resolved).items() if k in given}
        print(f"{chosen}: event F1 {_f(a['event_f1'])}, segment F1 {_f(a['segment_f1'])}, decided "
              f"{_f(a['decided_median_s'])} s | overlapping: event F1 {_f(b['event_f1'])}, segment "
              f"F1 {_f(b['segment_f1'])}, both reported {b['pairs_both_reported']}/{b['overlapping_pairs']}",
              flush=True)


if __name__ == "__main__":
    main()
