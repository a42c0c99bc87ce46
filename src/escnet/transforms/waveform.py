"""Waveform augmentation: the config's transforms, run per example with explicit seeds.

The transforms are audiomentations' (a maintained library with the phase-vocoder-free
signalsmith stretcher; ``benchmarks/augment_speed.py`` times each transform) behind escnet's
config names. audiomentations draws from Python's and NumPy's global generators, so
:class:`WaveformAugment` seeds those from an explicit per-example seed and restores them
afterwards: the same seed gives the same output in any process, which makes an epoch's
augmentation independent of how many DataLoader workers run it.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Iterator

import audiomentations as am
import numpy as np

from escnet.config import AugmentConfig
from escnet.errors import ConfigError
from escnet.transforms.corruptions import band_limit, codec, convolve, mp3_level, room_impulse_response

Transform = Callable[[np.ndarray, int], np.ndarray]  # (samples,) float32, sample rate → same
# Spectral slope of coloured noise, dB per octave (audiomentations' f_decay).
NOISE_DECAY = {"white": 0.0, "pink": -3.01, "brown": -6.02}


class _Clipped:
    """Run ``transform`` then clip to [-1, 1] (the report's Gaussian noise)."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.clip(self.transform(samples, sample_rate), -1.0, 1.0)


class _Quietly:
    """Run ``transform`` without the warning audiomentations gives each noise file it has to
    resample ("had to be resampled ... This hurt execution time"): a file at another rate is
    expected, and a long run would print one line per file."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*had to be resampled", category=UserWarning)
            return self.transform(samples, sample_rate)


def _noise(a: AugmentConfig) -> Transform:
    """A random excerpt (random offset) of a random file of ``noise_dir``, or a coloured noise
    from ``noise_colors``, at an SNR drawn from ``snr_db``."""
    lo, hi = a.snr_db
    if a.noise_dir:
        try:
            return _Quietly(am.AddBackgroundNoise(a.noise_dir, lo, hi, p=1.0))
        except AssertionError:
            raise ConfigError(f"setting augment.noise_dir={a.noise_dir!r}: no audio files in it") from None
    return am.OneOf([am.AddColorNoise(lo, hi, min_f_decay=NOISE_DECAY[c], max_f_decay=NOISE_DECAY[c],
                                      p=1.0) for c in a.noise_colors])


class _BandLimit:
    """Down to a sample rate drawn from ``band_limit_hz`` and back up (soxr)."""

    def __init__(self, a: AugmentConfig) -> None:
        self.low, self.high = a.band_limit_hz

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        return band_limit(samples, sample_rate, int(np.random.uniform(self.low, self.high)))


class _Codec:
    """MP3 at a bit rate drawn from ``codec_kbps``, encoded and decoded by libsndfile."""

    def __init__(self, a: AugmentConfig) -> None:
        self.low, self.high = a.codec_kbps

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        return codec(samples, sample_rate, "MP3", mp3_level(int(np.random.uniform(self.low, self.high))))


class _Reverb:
    """Eight shoebox rooms, seeded, with reverberation times spread over ``reverb_rt60``: one
    drawn per example. The shorter the reverberation, the smaller the room (a large room with
    little reverberation would need walls that absorb more than all sound). Their impulse
    responses are computed once per sample rate."""

    ROOMS = 8

    def __init__(self, a: AugmentConfig) -> None:
        import pyroomacoustics as pra

        rng = np.random.default_rng(20_240_611)
        self.rooms = []
        for rt60 in np.linspace(*a.reverb_rt60, self.ROOMS):
            side = 3.0 + 20.0 * rng.uniform(0.5, 1.0) * min(rt60, 1.5) / 1.5  # 3 to 23 m
            dims = (side, side * rng.uniform(0.6, 1.0), min(side, rng.uniform(2.5, 8.0)))
            while True:  # shrink until the walls can give that reverberation time
                try:
                    pra.inverse_sabine(float(rt60), list(dims))
                    break
                except ValueError:
                    dims = tuple(0.8 * d for d in dims)
            self.rooms.append((tuple(float(d) for d in dims), float(rt60)))

    def __call__(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        dims, rt60 = self.rooms[np.random.randint(len(self.rooms))]
        return convolve(samples, room_impulse_response(dims, rt60, sample_rate))


BUILDERS: dict[str, Callable[[AugmentConfig], Transform]] = {
    "gaussian_noise": lambda a: _Clipped(am.AddGaussianNoise(a.noise_std, a.noise_std, p=1.0)),
    "time_stretch": lambda a: am.TimeStretch(*a.time_stretch_rate, leave_length_unchanged=True, p=1.0),
    "pitch_shift": lambda a: am.PitchShift(*a.pitch_shift_semitones, p=1.0),
    "gain": lambda a: am.Gain(*a.gain_db, p=1.0),
    "time_shift": lambda a: am.Shift(-a.shift_max, a.shift_max, shift_unit="fraction",
                                     rollover=a.shift_mode == "circular", p=1.0),
    "background_noise": _noise,
    "band_limit": _BandLimit,
    "codec": _Codec,
    "reverb": _Reverb,
}
"""Each name of :data:`escnet.config.WAVEFORM_TRANSFORMS` → its transform (always applied, its
ranges from the ``augment`` section). Every transform keeps the number of samples. To add one:
its name there, its settings in :class:`~escnet.config.AugmentConfig`, its builder here."""


@contextlib.contextmanager
def _global_seed(seed: int) -> Iterator[None]:
    """Seed Python's and NumPy's global generators for a block, then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class WaveformAugment:
    """``augment(samples (n,) float32, *seed_keys) → (n,) float32``: the config's waveform policy.

    ``seed_keys`` are integers (e.g. epoch seed and clip index) mixed into one seed, so equal
    keys give equal outputs in any process.

    ``policy=one`` draws one of ``waveform`` or the identity, each with probability
    ``1 / (len(waveform) + 1)`` (every transform reachable, unlike the report's index);
    ``each`` applies every transform independently with probability ``p``.
    """

    def __init__(self, augment: AugmentConfig, sample_rate: int, names: list[str] | None = None
                 ) -> None:
        self.sample_rate = sample_rate
        self.policy, self.p = augment.policy, augment.p
        self.transforms = {n: BUILDERS[n](augment) for n in (names or augment.waveform)}

    def choose(self, rng: np.random.Generator) -> list[str]:
        names = list(self.transforms)
        if self.policy == "one":
            k = int(rng.integers(len(names) + 1))
            return [] if k == len(names) else [names[k]]
        return [n for n in names if rng.random() < self.p]

    def __call__(self, samples: np.ndarray, *seed_keys: int) -> np.ndarray:
        rng = np.random.default_rng([k & 0xFFFFFFFF for k in seed_keys])
        chosen = self.choose(rng)
        if not chosen:
            return samples
        with _global_seed(int(rng.integers(2**32))):
            for name in chosen:
                samples = self.transforms[name](samples, self.sample_rate)
        return samples.astype(np.float32, copy=False)
