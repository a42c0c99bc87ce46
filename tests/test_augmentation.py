import math
import random

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from escnet.config import WAVEFORM_TRANSFORMS, AugmentConfig, TaskConfig
from escnet.data.audio import load_audio
from escnet.errors import ConfigError, EscnetError
from escnet.reports.preview import preview
from escnet.transforms.batch import between_class_mix, mixup, random_crop, spec_augment
from escnet.transforms.waveform import BUILDERS, WaveformAugment

SR = 22_050


def sine(freq: float, seconds: float = 2.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def augmenter(names: list[str], **settings) -> WaveformAugment:
    """A :class:`WaveformAugment` at ``SR`` for ``names``, with ``augment`` settings."""
    augment = AugmentConfig(**{"waveform": names, **settings})
    augment.validate()
    return WaveformAugment(augment, SR)


def apply(name: str, samples: np.ndarray, seed: int = 0, **settings) -> np.ndarray:
    return augmenter([name], policy="each", p=1.0, **settings)(samples.copy(), seed)


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / SR)[spectrum.argmax()])


def snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed - clean
    return float(10 * np.log10(np.mean(clean**2) / np.mean(noise**2)))


@pytest.mark.parametrize("name", WAVEFORM_TRANSFORMS)
def test_every_transform_keeps_length_on_a_real_clip(esc50, name):
    clip = load_audio(next((esc50 / "audio").glob("1-*")), SR, 5 * SR)
    out = apply(name, clip, time_stretch_rate=(0.8, 1.25), pitch_shift_semitones=(-2.0, 2.0))
    assert out.shape == clip.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and not np.array_equal(out, clip)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
def test_coloured_noise_is_mixed_at_the_asked_snr(color):
    clean = sine(440)
    for seed, snr in enumerate([0.0, 10.0, 25.0]):
        mixed = apply("background_noise", clean, seed, snr_db=(snr, snr), noise_colors=[color])
        assert abs(snr_db(clean, mixed) - snr) < 0.5


def test_noise_files_are_mixed_at_the_asked_snr_from_a_random_offset(tmp_path):
    rng = np.random.default_rng(0)
    # 8 s of noise with a rising level, so excerpts from different offsets differ.
    noise = (rng.standard_normal(8 * SR) * np.linspace(0.05, 0.5, 8 * SR)).astype(np.float32)
    sf.write(tmp_path / "hum.wav", noise, SR)
    clean = sine(300)
    excerpts = []
    for seed in range(4):
        mixed = apply("background_noise", clean, seed, snr_db=(12.0, 12.0),
                      noise_dir=str(tmp_path))
        assert abs(snr_db(clean, mixed) - 12.0) < 0.5
        excerpts.append(mixed - clean)
    corr = np.corrcoef(excerpts[0], excerpts[1])[0, 1]
    assert abs(corr) < 0.5  # different offsets, not one excerpt rescaled


def test_a_noise_folder_without_audio_is_a_config_error(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(ConfigError, match=r"augment\.noise_dir"):
        BUILDERS["background_noise"](AugmentConfig(noise_dir=str(tmp_path)))


def test_pitch_shift_of_an_octave_doubles_the_frequency():
    out = apply("pitch_shift", sine(440), pitch_shift_semitones=(12.0, 12.0))
    assert dominant_hz(out) == pytest.approx(880, rel=0.01)
    down = apply("pitch_shift", sine(440), pitch_shift_semitones=(-12.0, -12.0))
    assert dominant_hz(down) == pytest.approx(220, rel=0.01)


@pytest.mark.parametrize("rate", [2.0, 1.25])
def test_time_stretch_shortens_by_the_rate_before_padding(rate):
    clean = sine(440, seconds=4.0)
    out = apply("time_stretch", clean, time_stretch_rate=(rate, rate))
    assert len(out) == len(clean)
    audible = np.flatnonzero(np.abs(out) > 1e-3)
    assert audible[-1] / len(clean) == pytest.approx(1 / rate, abs=0.02)
    assert dominant_hz(out[: audible[-1]]) == pytest.approx(440, rel=0.01)  # pitch kept


def test_gaussian_noise_has_the_asked_std_and_stays_in_range():
    clean = np.zeros(SR * 2, dtype=np.float32)
    out = apply("gaussian_noise", clean, noise_std=0.01)
    assert np.std(out) == pytest.approx(0.01, rel=0.05)
    loud = np.full(SR, 0.999, dtype=np.float32)
    assert apply("gaussian_noise", loud, noise_std=0.05).max() <= 1.0


def test_gain_default_is_the_reports_volume_of_a_quarter():
    out = apply("gain", sine(440))
    assert np.max(np.abs(out)) / 0.5 == pytest.approx(0.25, rel=0.01)


def test_time_shift_circular_rolls_and_pad_fills_with_zeros():
    ramp = np.linspace(-1, 1, SR, dtype=np.float32)
    rolled = apply("time_shift", ramp, 3, shift_max=0.5)
    seam = int(np.argmax(np.abs(np.diff(rolled))))  # where the end wraps to the start (faded)
    probe = (seam + 1000) % SR
    shift = (probe - round((rolled[probe] + 1) / 2 * (SR - 1))) % SR
    assert 0 < shift < SR and abs(seam - shift) < 300
    away = np.abs((np.arange(SR) - shift + SR // 2) % SR - SR // 2) > 300
    # Away from the short fades at the seam, a circular shift is exactly a roll.
    assert np.allclose(rolled[away], np.roll(ramp, shift)[away], atol=1e-4)
    padded = apply("time_shift", ramp + 1.5, 3, shift_max=0.5, shift_mode="pad")
    zeros = np.flatnonzero(padded == 0.0)
    assert len(zeros) > 0 and (zeros[0] == 0 or zeros[-1] == SR - 1)


def test_one_policy_reaches_every_transform_and_the_identity():
    names = ["gain", "time_shift", "gaussian_noise"]
    augment = augmenter(names)
    counts: dict[str, int] = {}
    for seed in range(2000):
        chosen = augment.choose(np.random.default_rng(seed))
        assert len(chosen) <= 1
        key = chosen[0] if chosen else "identity"
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) == {*names, "identity"}
    assert all(abs(c / 2000 - 0.25) < 0.04 for c in counts.values())


def test_each_policy_applies_each_transform_with_its_probability():
    names = ["gain", "time_shift"]
    augment = augmenter(names, policy="each", p=0.3)
    draws = [augment.choose(np.random.default_rng(s)) for s in range(3000)]
    for name in names:
        assert abs(sum(name in d for d in draws) / 3000 - 0.3) < 0.03
    assert sum(len(d) == 2 for d in draws) / 3000 == pytest.approx(0.09, abs=0.02)


def test_same_seed_same_output_and_global_generators_untouched():
    augment = augmenter(list(WAVEFORM_TRANSFORMS), policy="each", p=1.0, time_stretch_rate=(0.9, 1.1))
    clip = sine(330)
    np.random.seed(123)
    random.seed(123)
    a = augment(clip.copy(), 7, 42)
    after = (np.random.random(), random.random())
    np.random.seed(123)
    random.seed(123)
    assert (np.random.random(), random.random()) == after  # the augmentation left them alone
    assert np.array_equal(a, augment(clip.copy(), 7, 42))
    assert not np.array_equal(a, augment(clip.copy(), 7, 43))


def test_spec_augment_masks_at_most_the_asked_bands_with_the_mean():
    torch.manual_seed(0)
    feats = torch.randn(400, 64, 100) + 3.0
    out = spec_augment(feats, freq_masks=1, freq_width=8, time_masks=0, time_width=20)
    means = feats.mean(dim=(1, 2))
    masked_rows = (out == means[:, None, None]).all(dim=2)  # (batch, mels)
    widths = masked_rows.sum(dim=1)
    assert widths.max() == 8 and widths.min() == 0
    assert widths.float().mean() == pytest.approx(4.0, abs=0.5)  # U{0..8}
    # A mask is one contiguous band; elsewhere the input is untouched.
    for row in masked_rows[widths > 0]:
        idx = torch.nonzero(row).flatten()
        assert idx[-1] - idx[0] + 1 == len(idx)
    assert torch.equal(out[~masked_rows], feats[~masked_rows])


def test_spec_augment_draws_the_asked_number_of_masks():
    torch.manual_seed(1)
    feats = torch.randn(300, 64, 200)
    out = spec_augment(feats, freq_masks=0, freq_width=0, time_masks=3, time_width=5)
    cols = (out == feats.mean(dim=(1, 2))[:, None, None]).all(dim=1).int()  # (batch, frames)
    runs = (torch.diff(cols, dim=1, prepend=torch.zeros(300, 1, dtype=torch.int32)) == 1).sum(1)
    assert runs.max() == 3 and (cols.sum(1) <= 15).all()


def test_mixup_mixes_inputs_and_targets_with_one_weight():
    torch.manual_seed(0)
    x = torch.randn(64, 8, 10)
    labels = torch.arange(64)  # one class per row, so a row's own share is its weight
    targets = F.one_hot(labels, 64).float()
    mixed, soft = mixup(x, targets, alpha=0.4)
    assert torch.allclose(soft.sum(1), torch.ones(64))
    lam = soft[torch.arange(64), labels]
    for i in range(64):
        partner = [j for j in range(64) if torch.allclose(mixed[i], lam[i] * x[i] + (1 - lam[i]) * x[j],
                                                          atol=1e-5)]
        assert partner, f"row {i} is not a mix of x[{i}] with another row at weight {lam[i]:.3f}"


def test_between_class_mix_keeps_the_target_share_for_equal_loudness():
    torch.manual_seed(0)
    t = torch.arange(SR) / SR
    wav = torch.stack([0.3 * torch.sin(2 * torch.pi * f * t) for f in (200.0, 500.0, 900.0, 1300.0)])
    targets = torch.eye(4)
    mixed, soft = between_class_mix(wav, targets, alpha=1.0)
    assert torch.allclose(soft.sum(1), torch.ones(4))
    spectrum = torch.fft.rfft(mixed).abs()
    for i in range(4):
        r = soft[i, i]  # equal loudness: waveform weight p equals the target share r
        if r > 0.99:
            continue
        j = int(torch.argmax(soft[i] * (torch.arange(4) != i)))
        expected = torch.tensor([r, 1 - r]) / torch.sqrt(r**2 + (1 - r) ** 2) * 0.3
        peaks = spectrum[i, [200, 500, 900, 1300][i]], spectrum[i, [200, 500, 900, 1300][j]]
        measured = torch.stack(peaks) / (SR / 2)
        assert torch.allclose(measured, expected, atol=2e-3)


def test_preview_writes_audio_and_a_picture_per_transform(tmp_path):
    sf.write(tmp_path / "dog.wav", sine(500, seconds=1.0), SR)
    config = TaskConfig().replace({"data.sample_rate": SR, "data.clip_seconds": 1.0, "augment.time_stretch_rate": (1.5, 1.5)})
    written = preview(tmp_path / "dog.wav", tmp_path / "out", config)
    names = {p.name for p in written}
    for name in ("original", *WAVEFORM_TRANSFORMS):
        assert any(n.endswith(f"-{name}.wav") for n in names)
        assert any(n.endswith(f"-{name}.png") for n in names)
    assert any(n.endswith("-spec_augment.png") for n in names)
    for p in written:
        assert p.stat().st_size > 0
    audio, rate = sf.read(next(p for p in written if p.name.endswith("-gain.wav")))
    assert rate == SR and len(audio) == SR
    assert sorted(preview(tmp_path / "dog.wav", tmp_path / "out", config)) == sorted(written)  # again
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "00-original.wav").write_bytes(b"a user's own file")
    with pytest.raises(EscnetError, match="holds files escnet augment-preview did not write"):
        preview(tmp_path / "dog.wav", tmp_path / "mine", config)
    assert (tmp_path / "mine" / "00-original.wav").read_bytes() == b"a user's own file"


def test_random_crop_takes_a_window_per_example_at_random_offsets():
    torch.manual_seed(0)
    frames = torch.arange(100.0).expand(64, 8, 100)  # every bin holds its frame index
    out = random_crop(frames, 30)
    assert out.shape == (64, 8, 30)
    starts = out[:, 0, 0]
    # each row is one contiguous window of the input, the same for every mel bin
    assert torch.equal(out, starts[:, None, None] + torch.arange(30.0).expand(64, 8, 30))
    assert starts.min() >= 0 and starts.max() <= 70 and len(starts.unique()) > 20
    assert random_crop(frames, 0) is frames and random_crop(frames, 100) is frames


def test_crop_seconds_sets_the_training_window_in_frames():
    c = TaskConfig().replace({"data.sample_rate": 22050, "features.hop_length": 512, "augment.crop_seconds": 3.0})
    assert c.crop_frames == 66150 // 512 + 1
    assert TaskConfig().replace({"augment.crop_seconds": 0}).crop_frames == 0
    assert TaskConfig().replace({"augment.crop_seconds": 5.0}).crop_frames == 0  # not shorter than the clip: whole clip
    with pytest.raises(ConfigError, match="crop_seconds"):
        TaskConfig().replace({"augment.crop_seconds": -1})


def test_band_limit_codec_and_reverb_augmentations_do_what_they_say():
    white = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    limited = apply("band_limit", white, band_limit_hz=(8000.0, 8000.0))
    spectrum = np.abs(np.fft.rfft(limited)) ** 2
    freqs = np.fft.rfftfreq(len(limited), 1 / SR)
    assert spectrum[freqs > 4200].sum() < 1e-4 * spectrum.sum()  # nothing above 4 kHz is left
    coded = apply("codec", sine(440), codec_kbps=(32.0, 32.0))
    assert len(coded) == 2 * SR and not np.array_equal(coded, sine(440))  # lossy (and delayed a little)
    assert dominant_hz(coded) == pytest.approx(440, abs=2)  # the same tone
    echoes = [apply("reverb", sine(440), seed=s) for s in range(6)]
    assert len({round(float(e[SR // 2]), 6) for e in echoes}) > 1  # rooms drawn per example
    for wet in echoes:
        assert np.mean(wet.astype(np.float64) ** 2) == pytest.approx(np.mean(sine(440).astype(np.float64) ** 2), rel=1e-3)


def test_band_limit_mels_silences_the_bands_above_each_cutoff():
    from escnet.transforms.batch import BatchAugment, band_limit_mels

    centers = torch.tensor([100.0, 1000.0, 5000.0, 9000.0])
    feats = torch.zeros(2, 4, 3)
    out = band_limit_mels(feats, centers, -7.0, torch.tensor([4000.0, float("inf")]))
    assert out[0, :2].eq(0).all() and out[0, 2:].eq(-7.0).all()  # above 4 kHz: silence's level
    assert out[1].eq(0).all()  # an infinite cutoff keeps the example
    # through the config: 16 kHz audio loses the bands above 8 kHz, at the front-end's silence level
    config = TaskConfig().replace({"augment.band_limit_mels": 1.0, "augment.band_limit_hz": (16000.0, 16000.0)})
    augment = BatchAugment(config)
    feats, _ = augment.features(torch.zeros(3, 64, 20), torch.zeros(3, 2))
    silenced = (feats == augment.floor).all(dim=(0, 2))
    assert silenced.any() and not silenced.all()
    assert (augment.centers[silenced] > 8000).all() and (augment.centers[~silenced] <= 8000).all()
    assert augment.floor == pytest.approx(math.log(config.features.log_floor))
