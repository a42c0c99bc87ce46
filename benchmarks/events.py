"""Sound events on held-out soundscapes: event F1, latency in real time, concurrent live streams.

Builds seeded soundscapes (``escnet.data.soundscapes``: clips of the model's **held-out fold**,
cut to their active part, one after another with gaps, over pink noise) and, for each
``--model`` (an ``.onnx`` export or a run folder, trained without that fold):

1. **Files.** ``detect_events`` on each scene: event-based F1 (onset collar 0.5 s, offset
   collar max(0.5 s, 20 % of the event)) and segment-based F1 (1 s), micro-averaged
   (``escnet.deploy.event_metrics``); how often one true event was reported more than once
   ("repeats"); and the per-window accuracy inside the true events (the hops whose answer is
   the event's class; for a frame model, the class its filtered frames rate highest), beside
   the model's held-out clip accuracy; and the time from a true onset to the audio position
   where its event start was decided (the latency before any real-time or transport delay).
   The same on ``--overlap-scenes`` scenes of overlapping pairs (the second sound of a pair
   starts 20–60 % into the first), with how many pairs had both sounds reported.
2. **Latency.** ``escnet serve`` is started on the model; ``--concurrency`` clients stream the
   scenes over ``/v1/stream`` at real time in 0.1 s frames (as a microphone would). Latency is
   the time from the moment a true event's onset was sent to the arrival of its event-start
   message (matched: same label, start within the onset collar); the median over the scenes'
   events. Live events are also compared with the file's (the same audio gives the same events).
3. **Streams.** For each count in ``--streams``, that many clients stream at real time for
   ``--stream-seconds``; a stream falls behind when a scores message arrives more than 1 s after
   its window's audio was sent. Prints the largest count with no stream behind.

    python benchmarks/events.py --model runs/fast-fold1.onnx --data ../shared/data/esc50 \\
        --fold 1 --out runs/events
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf

from escnet.data.soundscapes import SceneEvent, soundscape
from escnet.data.tables import read_esc50
from escnet.deploy.event_metrics import Tally, event_counts, segment_counts
from escnet.deploy.events import CLIP_DEFAULTS, FRAME_DEFAULTS, Event, events_of, stream_file
from escnet.deploy.predict import load_model_file

RATE = 32_000
"""Scenes are written at this rate (each model resamples to its own)."""
FRAME_SECONDS = 0.1
BEHIND_SECONDS = 1.0


def build_scenes(data: str, fold: int, count: int, seconds: float, seed: int, out: Path,
                 overlap: bool = False) -> list[tuple[Path, list[SceneEvent]]]:
    table = read_esc50(Path(data))
    clips = [(str(p), table.classes[y])
             for p, y, f in zip(table.paths, table.labels, table.folds, strict=True) if int(f) == fold]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(clips))
    scenes, used = [], 0
    out.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        take = [clips[i] for i in order[used:used + 12]]
        wav, events = soundscape(take, RATE, seconds, rng, overlap=overlap)
        used = (used + len(events)) % (len(clips) - 12)
        path = out / f"scene-{k:02d}.wav"
        sf.write(path, wav, RATE, subtype="PCM_16")
        scenes.append((path, events))
    (out / "truth.json").write_text(json.dumps(
        {p.name: [e.to_dict() for e in ev] for p, ev in scenes}, indent=1))
    return scenes


def repeats(truth: list[SceneEvent], found: list[Event]) -> int:
    """True events that more than one found event of their label overlaps."""
    return sum(sum(1 for e in found if e.label == t.label and e.start < t.end and e.end > t.start) > 1
               for t in truth)


def both_reported(truth: list[SceneEvent], found: list[Event]) -> tuple[int, int]:
    """Of the pairs of overlapping true events, how many had both sounds reported (a found event
    of each one's label overlapping it in time), and how many pairs there were."""
    heard = [any(e.label == t.label and e.start < t.end and e.end > t.start for e in found) for t in truth]
    pairs = [(i, j) for i in range(len(truth)) for j in range(i + 1, len(truth))
             if truth[i].start < truth[j].end and truth[j].start < truth[i].end]
    return sum(heard[i] and heard[j] for i, j in pairs), len(pairs)


def file_mode(model_path: str, scenes) -> tuple[dict, dict]:
    model = load_model_file(model_path, threads=2)
    frames = model.info.frame_model
    event, segment, rep, hops, right, both, pairs = Tally(), Tally(), 0, 0, 0, 0, 0
    found_by_scene = {}
    tick = time.perf_counter()
    decisions: list[float] = []
    for path, truth in scenes:
        updates = list(stream_file(model, path))
        messages = [m for u in updates for m in u.events]
        decisions += [d for _, d in matched_starts(truth, [(m.decided, m.label, m.time) for m in messages
                                                           if m.state == "start"])]
        found = events_of(messages)
        found_by_scene[path.name] = found
        event += event_counts(truth, found, collar=0.5, offset_share=0.2)[0]
        segment += segment_counts(truth, found, sf.info(path).duration)[0]
        rep += repeats(truth, found)
        b, n = both_reported(truth, found)
        both, pairs = both + b, pairs + n
        for u in updates:  # the answer of each hop whose centre is inside a true event
            for s in u.scores:  # (a frame model's: the class its filtered frames rate highest)
                inside = [t for t in truth if t.start <= s.centre < t.end]
                if inside:
                    hops += 1
                    answer = model.info.classes[int(np.argmax(s.track))] if frames else s.label
                    right += any(answer == t.label for t in inside)
    seconds = time.perf_counter() - tick
    return {"event": event.to_dict(), "segment": segment.to_dict(), "repeats": rep,
            "true_events": sum(len(t) for _, t in scenes),
            "overlapping_pairs": pairs, "pairs_both_reported": both,
            "hop_accuracy_in_events": round(right / max(hops, 1), 4),
            "held_out_clip_accuracy": model.info.held_out_accuracy,
            "decision_latency_median_s": round(statistics.median(decisions), 3) if decisions else None,
            "unknown_threshold": model.info.unknown_threshold is not None,
            "frame_model": frames,
            "seconds": round(seconds, 1)}, found_by_scene


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "escnet", "serve", model, "--port", str(port),
                             "--max-streams", "256", "--idle-seconds", "30"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: see {log}") from None
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not get ready in 60 s")


async def play(port: int, path: Path, seconds: float | None = None) -> dict:
    """Stream ``path`` at real time (looping up to ``seconds`` if given); returns the send
    start, and every message with its arrival time."""
    import websockets

    wav, rate = sf.read(path, dtype="float32")
    if seconds is not None:
        reps = int(np.ceil(seconds * rate / wav.shape[0]))
        wav = np.tile(wav, reps)[: int(seconds * rate)]
    frame = int(FRAME_SECONDS * rate)
    received: list[tuple[float, dict]] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/v1/stream?sample_rate={rate}&format=f32",
                                  max_size=2**22) as ws:
        json.loads(await ws.recv())  # ready

        async def reader() -> None:
            async for text in ws:
                received.append((time.monotonic(), json.loads(text)))

        task = asyncio.create_task(reader())
        start = time.monotonic()
        for k in range(0, wav.shape[0], frame):
            delay = start + (k + frame) / rate - time.monotonic()  # a frame leaves once recorded
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(wav[k:k + frame].tobytes())
        await ws.send("end")
        await task
    return {"start": start, "messages": received}


async def latency_run(port: int, scenes, concurrency: int) -> list[dict]:
    gate = asyncio.Semaphore(concurrency)

    async def one(path: Path) -> dict:
        async with gate:
            return await play(port, path)

    return await asyncio.gather(*(one(p) for p, _ in scenes))


def matched_starts(truth: list[SceneEvent], starts: list[tuple[float, str, float]]
                   ) -> list[tuple[SceneEvent, float]]:
    """Each true event with a start message of its label placed within the onset collar
    (``starts``: ``(when it was decided or arrived, label, start time)``), and the time from
    its onset to the earliest such message."""
    out = []
    for e in truth:
        hit = [when for when, label, start in starts if label == e.label and abs(start - e.start) <= 0.5]
        if hit:
            out.append((e, min(hit) - e.start))
    return out


def latencies(scenes, runs: list[dict]) -> tuple[list[float], int]:
    out, missed = [], 0
    for (_, truth), run in zip(scenes, runs, strict=True):
        starts = [(t - run["start"], m["label"], m["time"]) for t, m in run["messages"]
                  if m["type"] == "event" and m["state"] == "start"]
        hits = matched_starts(truth, starts)
        out += [d for _, d in hits]
        missed += len(truth) - len(hits)
    return out, missed


def live_events(run: dict) -> list[Event]:
    return sorted((Event(m["label"], m["start"], m["time"], m["confidence"]) for _, m in run["messages"]
                   if m["type"] == "event" and m["state"] == "end"), key=lambda e: (e.start, e.label))


async def streams_run(port: int, scenes, count: int, seconds: float) -> dict:
    runs = await asyncio.gather(*(play(port, scenes[k % len(scenes)][0], seconds) for k in range(count)))
    lags = [[t - (r["start"] + m["time"]) for t, m in r["messages"] if m["type"] == "scores"] for r in runs]
    worst = [max(x) for x in lags if x]
    return {"streams": count, "lag_median_s": round(statistics.median(v for x in lags for v in x), 3),
            "lag_worst_s": round(max(worst), 3), "behind": sum(w > BEHIND_SECONDS for w in worst)}


def main() -> None:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="an .onnx export or a run folder")
    p.add_argument("--data", required=True, help="the ESC-50 folder")
    p.add_argument("--fold", type=int, default=1, help="the models' held-out fold (default 1)")
    p.add_argument("--scenes", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0, help="length of each scene")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=4, help="latency: scenes streamed at once")
    p.add_argument("--streams", default="8,16,24,32", help="counts of concurrent streams to try")
    p.add_argument("--stream-seconds", type=float, default=20.0)
    p.add_argument("--overlap-scenes", type=int, default=8,
                   help="scenes of overlapping pairs (files only; 0: none)")
    p.add_argument("--skip-live", action="store_true", help="files only (no server)")
    p.add_argument("--out", required=True, help="folder for the scenes and the results")
    args = p.parse_args()
    out = Path(args.out)
    scenes = build_scenes(args.data, args.fold, args.scenes, args.seconds, args.seed, out / "scenes")
    print(f"{len(scenes)} scenes of {args.seconds:g} s from fold {args.fold}: "
          f"{sum(len(e) for _, e in scenes)} events; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; event settings: clip models {CLIP_DEFAULTS}, frame models "
          f"{FRAME_DEFAULTS}")
    overlapping = build_scenes(args.data, args.fold, args.overlap_scenes, args.seconds, args.seed + 1,
                               out / "overlap-scenes", overlap=True) if args.overlap_scenes else []
    if overlapping:
        print(f"{len(overlapping)} scenes of overlapping pairs: {sum(len(e) for _, e in overlapping)} events")
    results = {}
    for model in args.model:
        files, found = file_mode(model, scenes)
        row = {"files": files}
        ev = files["event"]
        print(f"\n{model}\n  files: event F1 {ev['f1']:.3f} (P {ev['precision']:.3f}, "
              f"R {ev['recall']:.3f}), segment F1 {files['segment']['f1']:.3f}; "
              f"repeats {files['repeats']} of {files['true_events']}; hop accuracy in events "
              f"{files['hop_accuracy_in_events']:.3f} (held-out clips {files['held_out_clip_accuracy']}); "
              f"onset → start decided, median {files['decision_latency_median_s']} s; {files['seconds']} s")
        if overlapping:
            row["overlap"] = over = file_mode(model, overlapping)[0]
            ev = over["event"]
            print(f"  overlapping pairs: event F1 {ev['f1']:.3f} (P {ev['precision']:.3f}, "
                  f"R {ev['recall']:.3f}), segment F1 {over['segment']['f1']:.3f}; both sounds "
                  f"reported in {over['pairs_both_reported']} of {over['overlapping_pairs']} pairs")
        if not args.skip_live:
            port = free_port()
            server = start_server(model, port, out / f"serve-{Path(model).stem}.log")
            try:
                runs = asyncio.run(latency_run(port, scenes, args.concurrency))
                lat, missed = latencies(scenes, runs)
                same = sum([e.to_dict() for e in live_events(r)] == [e.to_dict() for e in found[p.name]]
                           for (p, _), r in zip(scenes, runs, strict=True))
                row["latency"] = {"median_s": round(statistics.median(lat), 3) if lat else None,
                                  "p90_s": round(float(np.percentile(lat, 90)), 3) if lat else None,
                                  "matched": len(lat), "unmatched": missed, "concurrency": args.concurrency,
                                  "scenes_same_events_as_file": same}
                print(f"  live: onset → start message median {row['latency']['median_s']} s, p90 "
                      f"{row['latency']['p90_s']} s ({len(lat)} events matched, {args.concurrency} streams "
                      f"at once); live events = file events in {same} of {len(scenes)} scenes")
                row["streams"] = []
                for count in (int(c) for c in args.streams.split(",")):
                    r = asyncio.run(streams_run(port, scenes, count, args.stream_seconds))
                    row["streams"].append(r)
                    print(f"  {count:3d} streams: lag median {r['lag_median_s']} s, worst "
                          f"{r['lag_worst_s']} s, {r['behind']} behind")
                    if r["behind"]:
                        break
            finally:
                server.terminate()
                server.wait(30)
        results[model] = row
    (out / "events.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out / 'events.json'}")


if __name__ == "__main__":
    main()
