"""Finished events as a table: CSV (``file,label,start,end,confidence``) or JSON."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from escnet.deploy.events.tracker import Event
from escnet.files import atomic_write_text, new_output

EVENT_COLUMNS = ("file", "label", "start", "end", "confidence")


def events_csv(results: list[tuple[str | Path, list[Event]]]) -> str:
    """``file,label,start,end,confidence``: a row per event (seconds from the file's start)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EVENT_COLUMNS)
    for path, events in results:
        for e in events:
            writer.writerow([str(path), *e.to_dict().values()])
    return out.getvalue()


def write_events(results: list[tuple[str | Path, list[Event]]], path: str | Path) -> Path:
    """``.csv`` (:func:`events_csv`) or ``.json`` (``[{"file", "events": [...]}]``); an
    existing file is never replaced."""
    path = new_output(path, "out", (".csv", ".json"))
    text = events_csv(results) if path.suffix.lower() == ".csv" else json.dumps(
        [{"file": str(p), "events": [e.to_dict() for e in events]} for p, events in results], indent=1)
    return atomic_write_text(path, text)
