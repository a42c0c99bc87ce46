"""One training epoch: escnet's cached pipeline against a report-style one, same model.

Reference (the study report's pipeline): a Dataset that decodes and resamples its file on every
item (soundfile + soxr, as `escnet.data.load_audio`; the report used `torchaudio.load`), and
log-mels computed on every batch as the report's Featurizer does, with
`torchaudio.transforms.MelSpectrogram` over the whole batch (reproduced in plain torch here, since
torchaudio has no build for this machine: same STFT, padding, power and HTK filterbank).
escnet: waveforms decoded once into the memory-mapped cache and log-mels computed once per run,
so an epoch only runs the model. Both train the same model from the same initial weights on the
same clips in the same order; each epoch is split into data wait (time the loop waits for the
loader's next batch: decoding, for the reference) and compute (log-mels of the batch for the
reference, then forward, backward and the optimiser step).

    python benchmarks/pipeline_speed.py --data ../shared/data/esc50 [--preset fast] [--model crnn]
        [--clips 400] [--set key=value ...]
"""

from __future__ import annotations

import time

import librosa
import numpy as np
import torch
from common import bench_config, bench_parser, timed_epoch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from escnet.data.audio import load_audio
from escnet.data.cache import build_waveform_cache
from escnet.data.datasets import clip_dataset, collate
from escnet.data.tables import load_table
from escnet.engine.data import prepare_data
from escnet.machine import machine_description


class DecodeEveryItem(Dataset):
    """The report's dataset: decode, mix down, resample and pad the file at every access."""

    def __init__(self, paths, labels, sample_rate: int, samples: int) -> None:
        self.paths, self.labels, self.sample_rate, self.samples = paths, labels, sample_rate, samples

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        wav = load_audio(self.paths[i], self.sample_rate, self.samples)
        return {"wav": torch.from_numpy(wav), "label": int(self.labels[i])}


class ReportMelSpectrogram(nn.Module):
    """The report's Featurizer: ``torchaudio.transforms.MelSpectrogram(sample_rate, n_fft,
    win_length, hop_length, n_mels)`` at its defaults (periodic Hann, centred with reflect
    padding, power 2, HTK mel scale without norm) on the whole batch, then ``clamp(1e-5).log()``.
    ``(batch, samples)`` → ``(batch, n_mels, frames)``."""

    def __init__(self, config) -> None:
        super().__init__()
        f = config.features
        self.n_fft, self.hop, self.win = f.n_fft, f.hop_length, f.win_length
        self.register_buffer("window", torch.hann_window(f.win_length))
        fb = librosa.filters.mel(sr=config.data.sample_rate, n_fft=f.n_fft, n_mels=f.n_mels, htk=True,
                                 norm=None)
        self.register_buffer("fb", torch.from_numpy(fb.T.copy()))  # (freqs, n_mels), as torchaudio

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        spec = torch.stft(wav, self.n_fft, self.hop, self.win, self.window, center=True,
                          pad_mode="reflect", return_complex=True).abs().pow(2.0)
        mel = torch.matmul(spec.transpose(-1, -2), self.fb).transpose(-1, -2)
        return mel.clamp(min=1e-5).log(), None


def main() -> None:
    parser = bench_parser(__doc__, clips=400)
    parser.add_argument("--model", help="default: the preset's, or the report's crnn")
    args = parser.parse_args()
    config = bench_config(args, **({"model.name": args.model} if args.model else {}))
    if not (args.model or args.preset or args.config):
        config = config.replace({"model.name": "crnn"})
    table = load_table(config)
    table = table.select(np.arange(len(table)) < args.clips)
    config = config.replace({"model.num_classes": len(table.classes)})
    order = np.random.default_rng(0).permutation(len(table))

    tick = time.perf_counter()
    waves, table = build_waveform_cache(table, config, progress=False)
    data, _, _ = prepare_data(waves, table, config, progress=False)
    once = time.perf_counter() - tick
    batch = config.train.batch_size
    ours_loader = DataLoader(clip_dataset(data.clips, table.labels, order), batch_size=batch,
                             shuffle=False, collate_fn=collate, drop_last=len(order) > batch)
    report = DecodeEveryItem([table.paths[i] for i in order], table.labels[order], config.data.sample_rate,
                             config.length_wav)
    report_loader = DataLoader(report, batch_size=config.train.batch_size, shuffle=False, collate_fn=collate,
                               drop_last=len(report) > config.train.batch_size)

    timed_epoch(config, ours_loader)  # warm-up
    ours, ours_wait = timed_epoch(config, ours_loader)
    theirs, theirs_wait = timed_epoch(config, report_loader, ReportMelSpectrogram(config))
    print(f"machine: {machine_description()}")
    print(f"model {config.model.name}, {len(table)} clips of {config.data.clip_seconds:g} s at "
          f"{config.data.sample_rate} Hz, batch {config.train.batch_size}; one training epoch\n")
    print(f"{'pipeline':<68} {'epoch s':>8} {'data wait s':>11} {'compute s':>9} {'speed-up':>8}")
    print(f"{'report-style: decode + resample per item, batch MelSpectrogram (ref)':<68} {theirs:>8.2f} "
          f"{theirs_wait:>11.2f} {theirs - theirs_wait:>9.2f} {1.0:>7.2f}×")
    print(f"{'escnet: cached waveforms and log-mels':<68} {ours:>8.2f} {ours_wait:>11.2f} "
          f"{ours - ours_wait:>9.2f} {theirs / ours:>7.2f}×")
    print(f"\nescnet's one-off cost for these clips (decode cache + log-mels, reused by every epoch and "
          f"fold; 0 s for the decode when cached): {once:.1f} s")


if __name__ == "__main__":
    main()
