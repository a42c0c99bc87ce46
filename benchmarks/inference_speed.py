"""Inference speed of a trained model: PyTorch eager (the reference) against ONNX Runtime, float32
and int8, all measured in this run on this machine.

Exports the run's fold model (``escnet export --quantize int8``, which also scores float32 and int8
on the held-out fold), then, on real 5 s clips:

- latency per clip, batch 1, one thread: median and p99 for eager / ORT float32 / ORT int8;
- clips per second on two threads, batches of 16 (ORT: two one-clip calls at a time);
- peak resident memory of a process that loads the model and classifies 64 clips;
- a WAV file (an ESC-50 clip at 44.1 kHz) to probabilities: decode, resample, model, one thread;
- the timeline of a long recording (real clips and silences, 44.1 kHz WAV, default hop of half a
  clip) on two threads, as multiples of real time, and its peak resident memory.

    escnet train --preset fast --folds 1 --data ../shared/data/esc50 --out runs/fast-fold1
    python benchmarks/inference_speed.py --run runs/fast-fold1 [--hours 1] [--repeats 300]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def _latency(model, clips: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median and p99 milliseconds of ``model(clip[None])``, after 20 warm-up calls."""
    for i in range(20):
        model(clips[i % len(clips)][None])
    times = []
    for i in range(repeats):
        tick = time.perf_counter()
        model(clips[i % len(clips)][None])
        times.append(time.perf_counter() - tick)
    return 1e3 * float(np.median(times)), 1e3 * float(np.percentile(times, 99))


def _throughput(model, clips: np.ndarray, batch: int = 16, seconds: float = 5.0) -> float:
    model(clips[:batch])
    done, tick = 0, time.perf_counter()
    while time.perf_counter() - tick < seconds:
        start = (done % (len(clips) - batch + 1))
        model(clips[start : start + batch])
        done += batch
    return done / (time.perf_counter() - tick)


def _load(kind: str, path: str, threads: int):
    if kind == "eager":
        import torch

        from escnet.deploy.torch_model import TorchModel
        from escnet.machine import keep_freed_memory

        keep_freed_memory()  # as escnet train and predict run
        torch.set_num_threads(threads)
        return TorchModel([Path(path)])
    from escnet.deploy.onnx_model import OnnxModel

    return OnnxModel(path, threads)


def _worker(args: argparse.Namespace) -> None:
    """In a fresh process: peak memory of one task (so one backend's memory does not count for
    another's)."""
    if args.task == "timeline":
        from escnet.deploy.predict import Predictor

        predictor = Predictor(_load("onnx", args.model, 2))
        tick = time.perf_counter()
        timeline = predictor.timeline(args.input)
        seconds = time.perf_counter() - tick
        out = {"seconds": seconds, "audio_seconds": timeline.duration, "windows": len(timeline.starts)}
    else:
        model = _load(args.task, args.model, 1)
        clips = np.load(args.input)
        for i in range(0, len(clips), 16):
            model(clips[i : i + 16])
        out = {}
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    out["peak_rss_mb"] = peak_kb / 1024
    print(json.dumps(out))


def _in_process(task: str, model: str, data: str) -> dict:
    line = subprocess.run([sys.executable, __file__, "--worker", task, "--model", model, "--input", data],
                          check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(line)


def _long_recording(path: Path, clips: list[Path], hours: float) -> None:
    """A 44.1 kHz mono WAV of ESC-50 clips and 0–10 s silences, ``hours`` long, written block by
    block."""
    from escnet.data.audio import load_audio

    rng = np.random.default_rng(0)
    sources = [load_audio(p, 44_100) for p in clips[:64]]
    total, written = int(hours * 3600 * 44_100), 0
    with sf.SoundFile(path, "w", 44_100, 1, "PCM_16") as out:
        while written < total:
            piece = np.concatenate([sources[rng.integers(len(sources))],
                                    np.zeros(int(rng.uniform(0, 10) * 44_100), np.float32)])
            piece = piece[: total - written]
            out.write(piece)
            written += len(piece)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run folder (e.g. the fast preset on fold 1)")
    parser.add_argument("--fold", help="its fold to export (default: its only one)")
    parser.add_argument("--data", help="the run's dataset, if it moved")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--hours", type=float, default=1.0, help="length of the timeline recording")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.task = args.worker
        return _worker(args)
    if not args.run:
        parser.error("--run RUNDIR is required")

    import torch

    from escnet.data.cache import build_waveform_cache
    from escnet.data.tables import load_table
    from escnet.deploy.export import export
    from escnet.deploy.predict import Predictor
    from escnet.machine import machine_description
    from escnet.runs import RunDir

    tmp = Path(tempfile.mkdtemp(prefix="escnet-bench-"))
    result = export(args.run, tmp / "model.onnx", args.fold, quantize="int8", data_dir=args.data)
    fold = result.info.folds[0]
    checkpoint = RunDir(args.run).checkpoint(fold)
    config = RunDir(args.run).config
    if args.data:
        config = config.replace({"data.data_dir": args.data})
    table = load_table(config)
    waves, table = build_waveform_cache(table, config, progress=False)
    test = np.flatnonzero(table.folds == int(fold)) if fold.isdigit() else np.arange(len(table))
    clips = np.array(waves[test[:64]], dtype=np.float32)
    np.save(tmp / "clips.npy", clips)
    paths = {"eager": str(checkpoint), "float32": str(tmp / "model.onnx"),
             "int8": str(tmp / "model.int8.onnx")}

    print(f"machine: {machine_description()}")
    torch.set_num_threads(1)
    print(f"model: {result.info.model} from {args.run} fold {fold}, {result.info.sample_rate} Hz, "
          f"{result.info.clip_seconds:g} s clips; ONNX Runtime float32 within "
          f"{result.max_difference:.1g} of PyTorch")
    print(f"held-out accuracy: PyTorch {100 * result.info.held_out_accuracy:.2f} %, ORT float32 "
          f"{100 * result.accuracy['float32']:.2f} %, ORT int8 {100 * result.accuracy['int8']:.2f} %")
    print(f"\n{'backend':<10} {'median ms':>9} {'p99 ms':>7} {'× eager':>8} {'clips/s 2 thr':>14} "
          f"{'peak MB':>8} {'file MB':>8}")
    rows = {}
    for name, path in paths.items():
        kind = "eager" if name == "eager" else "onnx"
        median, p99 = _latency(_load(kind, path, 1), clips, args.repeats)
        rate = _throughput(_load(kind, path, 2), clips)
        torch.set_num_threads(1)
        rss = _in_process(kind if kind == "eager" else "onnx", path, str(tmp / "clips.npy"))
        rows[name] = median
        size = Path(path).stat().st_size / 2**20
        print(f"{name:<10} {median:>9.2f} {p99:>7.2f} {rows['eager'] / median:>7.2f}× {rate:>14.0f} "
              f"{rss['peak_rss_mb']:>8.0f} {size:>8.2f}")

    wav = next((p for p in table.paths if p.suffix == ".wav"), None)
    if wav is None:  # a dataset without WAVs: write one of its clips as a 44.1 kHz WAV
        from escnet.data.audio import load_audio

        wav = tmp / "clip.wav"
        sf.write(wav, load_audio(table.paths[0], 44_100), 44_100)
    for name in ("float32", "int8"):
        predictor = Predictor(_load("onnx", paths[name], 1))
        median, p99 = _latency(lambda _c, p=predictor: p.predict_file(wav), clips, 100)
        print(f"WAV file → probabilities ({name}, {sf.info(str(wav)).samplerate} Hz "
              f"{sf.info(str(wav)).duration:.1f} s, decode + resample + model, 1 thread): "
              f"median {median:.2f} ms, p99 {p99:.2f} ms")

    long = tmp / "long.wav"
    _long_recording(long, list(table.paths), args.hours)
    for name in ("float32", "int8"):
        t = _in_process("timeline", paths[name], str(long))
        print(f"timeline ({name}, 2 threads, {t['audio_seconds'] / 3600:.2f} h at 44.1 kHz, "
              f"{t['windows']} windows): {t['seconds']:.1f} s = {t['audio_seconds'] / t['seconds']:.0f}× "
              f"real time, peak {t['peak_rss_mb']:.0f} MB resident")


if __name__ == "__main__":
    main()
