"""Soundscapes made on the fly from a training batch's clips, with frame-level (strong) labels:
what a frame-wise event model (``model.args.frame_head``) learns onsets, offsets and overlaps
from (``augment.scenes``).

Each scene is ``seconds`` long: a bed of coloured noise (white, pink or brown, a level drawn
from :data:`BED_DB`), the batch's own clip cut to its active part (where its 20 ms level is
within 30 dB of its loudest, as the reference events of ``escnet.data.soundscapes`` are) at a
random place and level (:data:`EVENT_DB`), possibly running past either end of the scene; in a
share :data:`SECOND` of scenes a second clip of the batch at a level within :data:`SECOND_DB` of
the first's, beginning while the first sounds (in a share :data:`BEGINS_DURING` of them: one
sound starting over another, as in a street) or anywhere (so at most two sounds at once); in a
share :data:`EMPTY` only the bed. A sound's frames are labelled where its active part is in
the scene.

Plain torch on the training device, drawing from torch's global generator (seeded per epoch
by training, as the other batch transforms).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from escnet.data.soundscapes import FRAME_SECONDS, TOP_DB

EVENT_DB = (-40.0, -12.0)
"""RMS of a sound's active part, dBFS."""
BED_DB = (-75.0, -40.0)
"""RMS of the noise bed, dBFS."""
SECOND = 0.5
"""Share of scenes with a second sound."""
SECOND_DB = 10.0
"""A second sound's level is the first's ± up to this many dB (within :data:`EVENT_DB`): one
far under the other would be inaudible, and labelling it would teach the frames to ignore what
they hear."""
BEGINS_DURING = 0.75
"""Share of two-sound scenes whose second sound begins while the first sounds."""
EMPTY = 0.1
"""Share of scenes with no sound, only the bed (every frame a negative)."""
BANK_LENGTH = 10
"""The noise bed is cut from a bank this many scenes long."""
GRID_SECONDS = 0.01
"""Resolution of the frame targets before they are averaged to the model's frames."""


class Scenes(NamedTuple):
    """A batch of soundscapes."""

    wav: torch.Tensor
    """``(batch, samples)``."""
    clip_targets: torch.Tensor
    """``(batch, classes)``: each sound's share of the scene's active seconds (rows sum to 1),
    zero for a scene with no sound."""
    activity: torch.Tensor
    """``(batch, classes, cells)``: 1 where a class sounds, on a :data:`GRID_SECONDS` grid."""

    def frame_targets(self, steps: int, step_seconds: float) -> torch.Tensor:
        """``(batch, steps, classes)``: the share of each of the model's ``steps`` frames during
        which each class sounds, frame ``k`` covering ``[k, k + 1) · step_seconds`` of the scene
        (:data:`~escnet.models.mobilenet.TIME_STRIDE` log-mel hops; the last frames run past
        the scene's end, and only their part inside it counts)."""
        per = round(step_seconds / GRID_SECONDS)
        cells = self.activity.shape[-1]
        grid = F.pad(self.activity, (0, steps * per - cells))  # cuts when the frames end sooner
        inside = (cells - per * torch.arange(steps, device=grid.device)).clamp(1, per)
        return (grid.reshape(*grid.shape[:2], steps, per).sum(-1) / inside).transpose(1, 2)


def active_spans(wav: torch.Tensor, lengths: torch.Tensor, rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last sample ``(batch,)`` of each clip's active part: its 20 ms frames
    whose RMS is within :data:`TOP_DB` of its loudest (``wav`` ``(batch, samples)``, ``lengths``
    valid samples)."""
    frame = max(1, int(FRAME_SECONDS * rate))  # as active_span, batched on the device
    n = wav.shape[1] // frame
    power = wav[:, : n * frame].reshape(len(wav), n, frame).square().mean(-1)
    power = power.masked_fill(torch.arange(n, device=wav.device) * frame >= lengths[:, None], 0)
    db = 10 * torch.log10(power + 1e-20)
    loud = db >= db.max(dim=1, keepdim=True).values - TOP_DB
    first = loud.float().argmax(dim=1)
    last = n - 1 - loud.flip(1).float().argmax(dim=1)
    return first * frame, torch.minimum((last + 1) * frame, lengths)


@functools.cache
def _noise_bank(samples: int, device: torch.device) -> torch.Tensor:
    """``(3, samples)``: white, pink and brown noise (power ∝ 1/f^k, k = 0, 1, 2), the same
    every time (a fixed seed): drawn once, not every step (:func:`coloured_noise` scales each
    stretch it cuts to unit RMS)."""
    generator = torch.Generator().manual_seed(0)
    spectrum = torch.fft.rfft(torch.randn(3, samples, generator=generator))
    f = torch.arange(spectrum.shape[1]).clamp(min=1).float()
    noise = torch.fft.irfft(spectrum * f[None] ** (-torch.arange(3.0)[:, None] / 2), samples)
    return noise.to(device)


def coloured_noise(batch: int, samples: int, device: torch.device) -> torch.Tensor:
    """``(batch, samples)`` noise of unit RMS, each row white, pink or brown (drawn per row):
    a random stretch of a bank :data:`BANK_LENGTH` times as long, with a random sign."""
    bank = _noise_bank(BANK_LENGTH * samples, device)
    colours = torch.randint(0, 3, (batch,)).tolist()
    starts = torch.randint(0, (BANK_LENGTH - 1) * samples + 1, (batch,)).tolist()
    noise = torch.stack([bank[c, s : s + samples] for c, s in zip(colours, starts, strict=True)])
    noise *= torch.randint(0, 2, (batch, 1), device=device) * 2 - 1
    return noise / noise.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-12)


def _gain(part: torch.Tensor, level_db: float) -> torch.Tensor:
    """The factor that brings ``part``'s RMS to ``level_db`` dBFS."""
    return 10 ** (level_db / 20) / part.square().mean().clamp(min=1e-20).sqrt()


def make_scenes(wav: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, num_classes: int,
                rate: int, seconds: float) -> Scenes:
    """Soundscapes of ``seconds`` from the clips ``wav`` ``(batch, samples)`` (``lengths`` valid
    samples, ``labels`` ``(batch,)``) at ``rate`` Hz (see the module's description). Scene ``i``
    holds clip ``i`` and, when it has a second sound, another clip of the batch."""
    batch, device = len(wav), wav.device
    total, step = round(seconds * rate), round(GRID_SECONDS * rate)
    cells = -(-total // step)
    lo, hi = active_spans(wav, lengths, rate)
    bed = coloured_noise(batch, total, device)
    bed *= 10 ** (torch.empty(batch, 1, device=device).uniform_(*BED_DB) / 20)
    scenes = bed
    activity = torch.zeros(batch, num_classes, cells, device=device)
    weights = torch.zeros(batch, num_classes, device=device)
    draws = torch.rand(batch, 3, device=device)
    partners = (torch.arange(batch, device=device) + torch.randint(1, max(batch, 2), (batch,),
                                                                   device=device)) % batch
    for i in range(batch):
        sounds = [] if draws[i, 0] < EMPTY else [i] + ([int(partners[i])] if draws[i, 1] < SECOND else [])
        first: tuple[int, int] | None = None
        level = 0.0  # dBFS of the first sound
        for k in sounds:
            part = wav[k, int(lo[k]) : int(hi[k])]
            if part.numel() == 0:
                continue
            # anywhere that leaves at least 0.1 s (or all of a shorter sound) in the scene, or
            # (a second sound) from 0.1 s after the first began until it ends
            keep = min(part.shape[0], round(0.1 * rate))
            low, high = keep - part.shape[0], total - keep
            if first is not None and draws[i, 2] < BEGINS_DURING:
                during = max(low, first[0] + keep), min(high, first[1] - 1)
                low, high = during if during[0] <= during[1] else (low, high)
            start = int(torch.randint(low, high + 1, ()))
            a, b = max(start, 0), min(start + part.shape[0], total)
            drawn = (torch.empty(()).uniform_(*EVENT_DB) if first is None else
                     level + torch.empty(()).uniform_(-SECOND_DB, SECOND_DB))
            level = min(max(float(drawn), EVENT_DB[0]), EVENT_DB[1])
            first = (start, start + part.shape[0]) if first is None else first
            scenes[i, a:b] += part[a - start : b - start] * _gain(part, level)
            label = int(labels[k])
            activity[i, label, a // step : -(-b // step)] = 1.0
            weights[i, label] += (b - a) / rate
    clip_targets = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return Scenes(scenes.clamp(-1, 1), clip_targets, activity)
