"""A recording's :class:`~escnet.deploy.predict.Timeline` as CSV, JSON or a PNG plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from escnet.deploy.predict import Timeline
from escnet.figures import pyplot
from escnet.files import atomic_write, atomic_write_text, new_output

COLUMNS = ("file", "start", "end", "label", "probability", "level_db")


def timeline_csv(timelines: list[Timeline]) -> str:
    """One row per window: ``file, start, end, label, probability, level_db`` (seconds; label
    and probability empty for a window gated as silence)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for t in timelines:
        for row in t.rows():
            writer.writerow([t.path, *("" if row[c] is None else row[c] for c in COLUMNS[1:])])
    return out.getvalue()


def timeline_json(timelines: list[Timeline], top_k: int = 3) -> str:
    """``[{"file", "duration", "classes", "windows": [{start, end, label, probability,
    level_db, top}]}]``; silence has ``label`` and ``probability`` null."""
    return json.dumps([{"file": t.path, "duration": round(t.duration, 3), "silence_db": t.silence_db,
                        "windows": t.rows(top_k)} for t in timelines], indent=1, allow_nan=False)


TIMELINE_SUFFIXES = (".csv", ".json")


def write_timeline(timelines: list[Timeline], path: str | Path) -> Path:
    """Write ``.csv`` or ``.json`` (by the suffix); an existing file is never replaced."""
    path = new_output(path, "out", TIMELINE_SUFFIXES)
    text = timeline_csv(timelines) if path.suffix.lower() == ".csv" else timeline_json(timelines)
    atomic_write_text(path, text)
    return path


def plot_timeline(timeline: Timeline, path: str | Path, classes: int = 8) -> Path:
    """A heat map of the ``classes`` most probable classes' probabilities over time, with
    silent windows shaded, as a PNG."""
    path = new_output(path, "plot", (".png",))
    plt = pyplot(f"plot={path}: drawing")
    probs = np.nan_to_num(timeline.probabilities, nan=0.0)
    shown = np.argsort(-probs.max(axis=0))[:classes][::-1]
    centres = (timeline.starts + timeline.ends) / 2
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(shown) + 1.6), layout="constrained")
    edges = np.concatenate([[0.0], (centres[1:] + centres[:-1]) / 2, [timeline.duration]])
    mesh = ax.pcolormesh(edges, np.arange(len(shown) + 1), probs[:, shown].T, cmap="magma",
                         vmin=0, vmax=1)
    for i in np.flatnonzero(timeline.silent):
        ax.axvspan(edges[i], edges[i + 1], color="#8fb3d9", alpha=0.6, lw=0)
    ax.set_yticks(np.arange(len(shown)) + 0.5, [timeline.classes[i] for i in shown])
    ax.set_xlabel("time (s)")
    ax.set_title(f"{Path(timeline.path).name}: class probability per window "
                 f"(blue: silent, below {timeline.silence_db:g} dBFS)", fontsize=10)
    fig.colorbar(mesh, ax=ax, label="probability", pad=0.01)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path
