import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from escnet.data.audio import fix_length, load_audio, windows
from escnet.errors import AudioError


def dominant_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * sr / len(x)


@pytest.mark.parametrize(("src_sr", "fmt"), [(16000, "FLAC"), (44100, "WAV"), (48000, "OGG")])
def test_resample_keeps_pitch_and_duration(tmp_path, src_sr, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, tone(1000, src_sr, 1.0), src_sr, format=fmt)
    y = load_audio(path, 22050)
    assert y.dtype == np.float32 and abs(len(y) - 22050) <= 2
    assert abs(dominant_hz(y, 22050) - 1000) < 5


def test_mixdown_is_mean_not_sum(tmp_path):
    x = tone(440, 16000, 0.5)
    sf.write(tmp_path / "same.wav", np.stack([x, x], 1), 16000, subtype="FLOAT")
    sf.write(tmp_path / "opposite.wav", np.stack([x, -x], 1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "same.wav", 16000), x, atol=1e-6)
    assert np.abs(load_audio(tmp_path / "opposite.wav", 16000)).max() < 1e-6


def test_pad_and_crop(tmp_path):
    x = np.arange(10, dtype=np.float32)
    assert fix_length(x, 4).tolist() == [0, 1, 2, 3]
    assert fix_length(x, 12).tolist() == [*range(10), 0, 0]
    sf.write(tmp_path / "a.wav", tone(300, 8000, 0.5), 8000)
    assert load_audio(tmp_path / "a.wav", 8000, 8000).shape == (8000,)
    assert load_audio(tmp_path / "a.wav", 8000, 1000).shape == (1000,)


def test_windows_cover_long_audio():
    x = np.arange(25, dtype=np.float32)
    w = windows(x, 10)  # hop 5: starts 0, 5, 10, 15
    assert w.shape == (4, 10) and w[-1, -1] == 24 and w[0, 0] == 0
    assert windows(x, 30).shape == (1, 30)
    assert windows(np.arange(12, dtype=np.float32), 10).tolist()[-1][-1] == 11  # end-aligned
    # a tail under 1 % of a window gets no window of its own (ESC-50 clips decode as 5.001 s)
    assert windows(np.zeros(1001, np.float32), 1000, 500).shape == (1, 1000)
    assert windows(np.zeros(1011, np.float32), 1000, 500).shape == (2, 1000)


def test_bad_audio_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is not audio\n")
    sf.write(tmp_path / "ok.wav", tone(300, 16000, 1.0), 16000)
    data = (tmp_path / "ok.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    (tmp_path / "header.wav").write_bytes(data[:44])
    sf.write(tmp_path / "ok.flac", tone(300, 16000, 1.0), 16000)
    flac = (tmp_path / "ok.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(flac[: len(flac) // 2])
    (tmp_path / "folder.wav").mkdir()
    cases = {"folder.wav": "is a folder", "empty.wav": "empty file", "text.wav": "not a readable audio file",
             "cut.wav": "truncated", "header.wav": "no audio samples", "missing.wav": "not found",
             "cut.flac": "not a readable audio file"}
    for name, needle in cases.items():
        with pytest.raises(AudioError, match=needle) as info:
            load_audio(tmp_path / name, 16000)
        assert name in str(info.value) and "\n" not in str(info.value)
