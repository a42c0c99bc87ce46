"""Foreign audio: what share of sounds no one trained on does a model answer "unknown"?

Builds a fixed, seeded set of recordings that are none of ESC-50's classes, as WAV files: music
(chords and melodies of synthesised piano, organ and square-wave voices, 44.1 kHz), speech
(espeak-ng, several voices and texts; left out with a note when espeak-ng is not installed:
``apt-get install espeak-ng``), coloured noise (white, pink, brown at three levels) and digital
silence (refused as silent, never labelled). Then classifies each with every ``--model`` (a run
folder, ``.pt`` or ``.onnx``) and prints, per kind and in all, the share answered "unknown" and
the classes the others were taken for; with a run folder also its held-out open-set figures
(``metrics.json``: known clips kept at the threshold, unknown-class AUROC).

    ESCNET_WEIGHTS=../shared/weights python benchmarks/open_set.py \\
        --model runs/open-pretrained --model runs/open-fast --out runs/foreign
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44_100
SECONDS = 5.0
SENTENCES = [
    "The meeting has been moved to Thursday afternoon, please bring the reports.",
    "Could you tell me the way to the railway station?",
    "Twenty three, twenty four, twenty five, and that is the last one.",
    "I think we should leave before the traffic gets worse tonight.",
    "Guten Morgen, wie geht es Ihnen heute?",
    "Bonjour, je voudrais un café et un croissant, s'il vous plaît.",
    "La reunión empieza a las nueve en la sala grande.",
    "Welcome to the evening news. Here are the headlines.",
]
VOICES = ["en", "en-us", "en", "en-gb", "de", "fr", "es", "en-us"]


def note(freq: float, seconds: float, voice: str, rng: np.random.Generator) -> np.ndarray:
    """One note ``(samples,)`` of a synthesised voice: piano (decaying harmonics), organ
    (steady harmonics) or square (odd harmonics)."""
    t = np.arange(int(seconds * RATE)) / RATE
    harmonics = range(1, 16, 2) if voice == "square" else range(1, 9)
    wave = sum(np.sin(2 * np.pi * freq * k * t + rng.uniform(0, 2 * np.pi)) / k
               for k in harmonics if freq * k < RATE / 2)
    ramps = np.minimum(1, t / 0.05) * np.minimum(1, (seconds - t) / 0.05)  # no clicks
    envelope = np.exp(-3 * t) if voice == "piano" else ramps
    return wave * envelope


def music(rng: np.random.Generator, voice: str, chords: bool) -> np.ndarray:
    """Five seconds of chords (a I-IV-V-I progression) or a melody, in a random key and tempo."""
    root = 220 * 2 ** (rng.integers(-5, 7) / 12)
    out = np.zeros(int(SECONDS * RATE))
    beat = rng.uniform(0.3, 0.6)
    start, step = 0, 0
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    while start < len(out):
        length = beat * (2 if chords else 1)
        if chords:
            base = [0, 5, 7, 0][step % 4]
            tones = [root * 2 ** ((base + i) / 12) for i in (0, 4, 7)]
        else:
            tones = [root * 2 ** (scale[rng.integers(len(scale))] / 12)]
        segment = sum(note(f, length, voice, rng) for f in tones)
        end = min(len(out), start + len(segment))
        out[start:end] += segment[: end - start]
        start, step = end, step + 1
    return 0.3 * out / np.abs(out).max()


def coloured_noise(rng: np.random.Generator, colour: str, level_db: float) -> np.ndarray:
    """White, pink (1/f) or brown (1/f²) noise at ``level_db`` dBFS RMS."""
    n = int(SECONDS * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n), 1 / n)
    spectrum *= {"white": 1, "pink": f ** -0.5, "brown": f ** -1.0}[colour]
    x = np.fft.irfft(spectrum, n)
    return x / np.sqrt(np.mean(x ** 2)) * 10 ** (level_db / 20)


def build(folder: Path, seed: int) -> tuple[dict[str, list[Path]], list[str]]:
    """The foreign recordings, by kind, written to ``folder``; and notes on what was left out."""
    rng = np.random.default_rng(seed)
    kinds: dict[str, list[Path]] = {"music": [], "speech": [], "noise": [], "silence": []}
    notes = []

    def write(kind: str, name: str, audio: np.ndarray) -> None:
        path = folder / f"{kind}-{name}.wav"
        sf.write(path, audio.astype(np.float32), RATE)
        kinds[kind].append(path)

    for i, voice in enumerate(["piano", "organ", "square"] * 4):
        write("music", f"{voice}-{'chords' if i % 2 == 0 else 'melody'}-{i}",
              music(rng, voice, chords=i % 2 == 0))
    espeak = shutil.which("espeak-ng") or shutil.which("espeak")
    if espeak:
        for i, (text, voice) in enumerate(zip(SENTENCES, VOICES, strict=True)):
            for speed in (140, 175):
                wav = folder / f"raw-{i}-{speed}.wav"
                subprocess.run([espeak, "-v", voice, "-s", str(speed), "-w", str(wav), text],
                               check=True, capture_output=True)
                audio, rate = sf.read(wav, dtype="float32")
                audio = np.resize(audio, int(SECONDS * rate))[: int(SECONDS * rate)]  # loop to 5 s
                sf.write(folder / f"speech-{voice}-{i}-{speed}.wav", audio, rate)
                kinds["speech"].append(folder / f"speech-{voice}-{i}-{speed}.wav")
                wav.unlink()
    else:
        notes.append("no speech: espeak-ng is not installed (apt-get install espeak-ng)")
    for colour in ("white", "pink", "brown"):
        for level in (-40.0, -25.0, -12.0):
            write("noise", f"{colour}{int(level)}", coloured_noise(rng, colour, level))
    write("silence", "digital", np.zeros(int(SECONDS * RATE)))
    return kinds, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True,
                        help="a run folder, .pt or .onnx (repeat to compare)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="folder for foreign.json (and the recordings, kept)")
    args = parser.parse_args()

    from escnet.deploy.predict import UNKNOWN, Predictor
    from escnet.machine import machine_description

    folder = Path(args.out or tempfile.mkdtemp(prefix="escnet-foreign-"))
    folder.mkdir(parents=True, exist_ok=True)
    kinds, notes = build(folder, args.seed)
    print(f"{sum(len(v) for v in kinds.values())} foreign recordings in {folder} "
          f"({', '.join(f'{len(v)} {k}' for k, v in kinds.items())}); {machine_description()}")
    for n in notes:
        print(f"note: {n}")
    report = {}
    for spec in args.model:
        predictor = Predictor.from_path(spec)
        if predictor.info.unknown_threshold is None:
            print(f"\n{spec}: uncalibrated, it never answers unknown; skipped")
            continue
        print(f"\n{spec} ({predictor.info.model}, unknown score {predictor.info.unknown_score}):")
        rows, answered = {}, []
        for kind, paths in kinds.items():
            results = [predictor.predict_file(p) for p in paths]
            answered += [r.label for r in results if kind != "silence"]
            unknown = sum(r.label == UNKNOWN for r in results)
            taken = Counter(r.label for r in results if r.label not in (UNKNOWN, None))
            heard = Counter(r.sounds_like[0][0] for r in results if r.sounds_like)
            rows[kind] = {"recordings": len(results), "unknown": unknown,
                          "silent": sum(r.silent for r in results),
                          "taken_for": dict(taken.most_common()), "sounds_like": dict(heard.most_common())}
            if kind == "silence":
                print(f"  {kind:8s} {rows[kind]['silent']}/{len(results)} refused as silent")
                continue
            print(f"  {kind:8s} {unknown:3d}/{len(results)} unknown ({100 * unknown / len(results):5.1f} %)"
                  + (f"; others taken for {dict(taken.most_common(4))}" if taken else "")
                  + (f"; AudioSet hears {dict(heard.most_common(3))}" if heard else ""))
        share = float(np.mean([a == UNKNOWN for a in answered]))
        print(f"  in all   {100 * share:.1f} % of {len(answered)} foreign recordings answered unknown")
        entry = {"foreign_unknown_share": share, "by_kind": rows}
        metrics = Path(spec) / "metrics.json"
        if metrics.is_file() and "open_set" in (m := json.loads(metrics.read_text())):
            o = m["open_set"]
            entry["held_out"] = {k: o.get(k) for k in ("auroc", "known_kept", "false_acceptance",
                                                       "known_accuracy", "known_accuracy_at_threshold")}
            print(f"  held-out ESC-50 (metrics.json): {100 * o['known_kept']:.1f} % of known clips kept, "
                  f"unknown-class AUROC {o['auroc']:.3f}, accuracy {100 * o['known_accuracy']:.1f} % → "
                  f"{100 * o['known_accuracy_at_threshold']:.1f} % counting rejections as errors")
        report[spec] = entry
    if args.out:
        (folder / "foreign.json").write_text(json.dumps(report, indent=2))
        print(f"\nwrote {folder / 'foreign.json'}")


if __name__ == "__main__":
    main()
