"""Log-mel clips per second: escnet's Featurizer against librosa with the same parameters.

Reference: ``np.log(np.maximum(librosa.feature.melspectrogram(y, sr, n_fft, hop_length,
win_length, n_mels, fmin, fmax, power=2), log_floor))`` one clip at a time, as a report-style
pipeline computes it. escnet: :class:`escnet.transforms.Featurizer` on batches of clips (torch,
CPU), and the Featurizer with one dense mel product instead of its banded one, to show what
skipping the filterbank's zeros saves. All on the same real clips, after a warm-up pass; the
outputs are checked to agree.

    python benchmarks/featurizer_speed.py --data ../shared/data/esc50 [--preset fast] [--clips 256]
        [--batch 32] [--set sample_rate=22050 ...]
"""

from __future__ import annotations

import time

import librosa
import numpy as np
import torch
from common import bench_config, bench_parser

from escnet.data.cache import build_waveform_cache
from escnet.data.tables import load_table
from escnet.machine import machine_description
from escnet.transforms.features import Featurizer


def main() -> None:
    parser = bench_parser(__doc__, clips=256)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    config = bench_config(args)
    table = load_table(config)
    waves, _ = build_waveform_cache(table, config, progress=False)
    clips = np.array(waves[: args.clips], dtype=np.float32)

    def reference(wav: np.ndarray) -> np.ndarray:
        f = config.features
        mel = librosa.feature.melspectrogram(
            y=wav, sr=config.data.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length,
            win_length=f.win_length, n_mels=f.n_mels, fmin=f.f_min, fmax=f.f_max, power=2.0,
            center=True, pad_mode="constant")
        return np.log(np.maximum(mel, f.log_floor))

    featurizer = Featurizer.from_config(config)
    dense = Featurizer.from_config(config)
    dense.bands = [(0, config.features.n_mels, 0, config.features.n_fft // 2 + 1)]  # one dense mel product

    def fastest_of_3(compute):
        """``compute()``'s result and its fastest time of 3 runs: a process's first pass also
        pays for faulting in fresh memory, which would penalise whichever row ran first."""
        seconds = []
        for _ in range(3):
            tick = time.perf_counter()
            result = compute()
            seconds.append(time.perf_counter() - tick)
        return result, min(seconds)

    @torch.inference_mode()
    def escnet(model: Featurizer) -> torch.Tensor:
        return torch.cat([model(torch.from_numpy(clips[i : i + args.batch]))[0]
                          for i in range(0, len(clips), args.batch)])

    expected, ref_seconds = fastest_of_3(lambda: [reference(w) for w in clips])
    got, our_seconds = fastest_of_3(lambda: escnet(featurizer))
    _, dense_seconds = fastest_of_3(lambda: escnet(dense))
    worst = float(np.max(np.abs(got.numpy() - np.stack(expected))))
    print(f"machine: {machine_description()}")
    print(f"{len(clips)} clips of {config.data.clip_seconds:g} s at {config.data.sample_rate} Hz → "
          f"{config.features.n_mels} mels × {config.length} frames (n_fft {config.features.n_fft}, "
          f"hop {config.features.hop_length})\n")
    print(f"{'':<46} {'clips/s':>9} {'ratio':>7}")
    rows = [("librosa, one clip at a time (ref)", ref_seconds),
            (f"escnet Featurizer, batch {args.batch}", our_seconds),
            ("  the same with a dense mel product", dense_seconds)]
    for name, seconds in rows:
        print(f"{name:<46} {len(clips) / seconds:>9.1f} {ref_seconds / seconds:>6.2f}×")
    print(f"\nlargest difference from librosa: {worst:.2e} (natural-log units)")


if __name__ == "__main__":
    main()
