"""escnet robustness: every corruption does what it says (deterministic, length, SNR, band
limit, bit rate), and the command writes its table, figure, report section and compare column."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_flags, write_esc50_like

from escnet.cli import main
from escnet.transforms.corruptions import (
    CORRUPTIONS,
    Corruption,
    NoiseBank,
    codec,
    corrupt,
    mp3_level,
    parse_corruptions,
    rms,
    room_response,
    snr_db,
)

SR = 44_100


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """Two seconds of a noisy harmonic sound with silence around it, as ESC-50 clips often have."""
    rng = np.random.default_rng(1)
    t = np.arange(2 * SR) / SR
    sound = 0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    sound += 0.05 * rng.standard_normal(len(t))
    return np.concatenate([np.zeros(SR // 2), sound, np.zeros(SR // 2)]).astype(np.float32)


@pytest.fixture(scope="module")
def noise_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(2)
    sf.write(folder / "street.wav", (0.1 * rng.standard_normal(4 * SR)).astype(np.float32), SR)
    return folder


def _band_energy(wav: np.ndarray, sr: int, above: float) -> float:
    spectrum = np.abs(np.fft.rfft(wav)) ** 2
    return float(spectrum[np.fft.rfftfreq(len(wav), 1 / sr) > above].sum())


def test_every_corruption_is_deterministic_and_keeps_length_and_rate(clip, noise_dir):
    bank = NoiseBank(noise_dir, 3.0)
    for family, severities in CORRUPTIONS.items():
        for severity in severities:
            c = Corruption(family, severity)
            out = corrupt(clip, SR, c, seed=7, noise=bank)
            assert out.dtype == np.float32 and np.isfinite(out).all(), c.name
            assert np.array_equal(out, corrupt(clip, SR, c, seed=7, noise=bank)), c.name  # same seed
            expected = int(float(severity) * SR) if family == "truncate" else len(clip)
            assert len(out) == expected, c.name
            assert not np.array_equal(out[:expected], clip[:expected]) or family == "truncate", c.name
            if family in ("white_noise", "pink_noise", "background"):
                assert abs(snr_db(clip, out) - float(severity)) < 0.5, c.name
                assert not np.array_equal(out, corrupt(clip, SR, c, seed=8, noise=bank)), c.name


def test_band_limit_removes_the_band_above_the_cutoff(clip):
    white = np.random.default_rng(3).standard_normal(SR).astype(np.float32) * 0.1
    for rate in (16000, 8000):
        out = corrupt(white, SR, Corruption("band_limit", str(rate)), seed=0)
        above = rate / 2 * 1.05
        assert _band_energy(out, SR, above) < 1e-4 * _band_energy(white, SR, above)
        below = rate / 2 * 0.8
        kept = _band_energy(out, SR, 0) - _band_energy(out, SR, below)
        assert kept > 0.95 * (_band_energy(white, SR, 0) - _band_energy(white, SR, below))


def test_codecs_hit_their_bit_rates_and_level_clips(clip):
    for kbps in (64, 32):
        buffer = io.BytesIO()
        sf.write(buffer, clip, SR, format="MP3", subtype="MPEG_LAYER_III", compression_level=mp3_level(kbps),
                 bitrate_mode="CONSTANT")
        measured = len(buffer.getvalue()) * 8 / (len(clip) / SR) / 1000
        assert abs(measured - kbps) < 0.15 * kbps, (kbps, measured)
    assert np.abs(codec(clip, SR, "OGG", 1.0) - clip).max() > 1e-3  # lossy, but the same sound
    quiet = corrupt(clip, SR, Corruption("level", "-30"), seed=0)
    assert 20 * np.log10(rms(quiet) / rms(clip)) == pytest.approx(-30, abs=0.01)
    loud = corrupt(clip, SR, Corruption("level", "+20"), seed=0)
    assert np.abs(loud).max() == 1.0 and (np.abs(loud) == 1.0).sum() > 1000  # hard clipping


def test_reverb_keeps_the_level_and_the_hall_rings_longer(clip):
    def decay_seconds(rir):  # time for the energy left to fall 30 dB
        energy = np.cumsum(rir[::-1] ** 2)[::-1]
        return np.argmax(10 * np.log10(energy / energy[0]) < -30) / SR

    assert decay_seconds(room_response("hall", SR)) > 2 * decay_seconds(room_response("small", SR))
    for room in ("small", "hall"):
        wet = corrupt(clip, SR, Corruption("reverb", room), seed=0)
        assert np.mean(wet.astype(np.float64) ** 2) == pytest.approx(np.mean(clip.astype(np.float64) ** 2), rel=1e-4)


def test_corruption_settings_are_checked(noise_dir, tmp_path):
    assert [c.name for c in parse_corruptions("band_limit,mp3:32", None)] == [
        "band_limit:16000", "band_limit:8000", "mp3:32"]
    assert "background:0" not in [c.name for c in parse_corruptions(None, None)]
    assert "background:0" in [c.name for c in parse_corruptions(None, str(noise_dir))]
    (tmp_path / "empty").mkdir()
    sf.write(tmp_path / "short.wav", np.zeros(SR, np.float32), SR)
    for names, noise, words in [("reverb:cathedral", None, "severity 'cathedral' out of range"),
                                ("wind", None, "unknown corruption 'wind'"),
                                ("background", None, r"needs noise recordings \(noise_dir"), (",", None, "names no corruption")]:
        with pytest.raises(Exception, match=words):
            parse_corruptions(names, noise)
    with pytest.raises(Exception, match="no audio files"):
        NoiseBank(tmp_path / "empty", 5.0)
    with pytest.raises(Exception, match="shorter than a clip"):
        NoiseBank(tmp_path, 5.0)


@pytest.fixture(scope="module")
def tone_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    clips = [(f"{f}-{10 * t + i}-A-{t}.wav", f, t, ".wav") for f in (1, 2) for t in (0, 1, 2) for i in range(4)]
    data = write_esc50_like(root / "d", clips, sr=16000, seconds=1.0)
    args = ["train", "--data", str(data), *tiny_flags("--set", "model.name=crnn", "--set", "train.batch_size=6",
                                                      "--epochs", "3", "--quiet", "--out", str(root / "run"))]
    assert main(args) == 0
    return root / "run"


def test_robustness_command_writes_table_figure_report_and_compare(tone_run, capsys, tmp_path):
    args = ["robustness", str(tone_run), "--corruptions", "band_limit:8000,truncate,white_noise:0", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads((tone_run / "robustness.json").read_text())
    assert list(result["corruptions"]) == ["clean", "band_limit:8000", "truncate:2", "truncate:1",
                                           "white_noise:0"]
    assert result["clips"] == 24 and result["folds"] == ["1", "2"]
    summary = json.loads((tone_run / "summary.json").read_text())
    assert result["clean"] == pytest.approx(summary["accuracy_mean"])  # the path real input takes
    assert "truncate:2" in out and "mean over corruptions" in out
    assert result["mean_corrupted"] == pytest.approx(np.mean(
        [r["accuracy"] for name, r in result["corruptions"].items() if name != "clean"]))
    assert (tone_run / "robustness.csv").read_text().count("\n") == 6
    assert (tone_run / "robustness.png").stat().st_size > 5000
    # a second call reads the cached corrupted clips: the same numbers
    assert main(args) == 0
    assert json.loads((tone_run / "robustness.json").read_text()) == result
    assert main(["report", str(tone_run)]) == 0
    assert "<h2>Robustness</h2>" in (tone_run / "report.html").read_text()
    assert main(["compare", str(tone_run), "--out", str(tmp_path / "cmp")]) == 0
    assert "robustness" in (tmp_path / "cmp" / "compare.csv").read_text().splitlines()[0]
    capsys.readouterr()
    # bad input: one line, exit 2
    for extra, words in [(["--corruptions", "snow"], "unknown corruption 'snow'"),
                         (["--corruptions", "mp3:8"], "severity '8' out of range"),
                         (["--corruptions", "background", "--noise-dir", str(tmp_path)], "no audio files")]:
        assert main(["robustness", str(tone_run), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
