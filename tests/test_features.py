import librosa
import numpy as np
import pytest
import torch
from conftest import tiny_config

from escnet.config import TaskConfig
from escnet.data.audio import load_audio
from escnet.transforms.features import Featurizer, mel_bands


def librosa_logmel(x: np.ndarray, c: TaskConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=x, sr=c.data.sample_rate, n_fft=c.features.n_fft, win_length=c.features.win_length,
                                         hop_length=c.features.hop_length, n_mels=c.features.n_mels, fmin=c.features.f_min,
                                         fmax=c.features.f_max, center=True, pad_mode="constant", power=2.0)
    return np.log(np.maximum(mel, c.features.log_floor))


@pytest.mark.parametrize("config", [
    TaskConfig(),
    TaskConfig().replace({"data.sample_rate": 16000, "features.n_fft": 512, "features.win_length": 400, "features.hop_length": 160, "features.n_mels": 40, "features.f_min": 50.0, "features.f_max": 7000.0, "data.clip_seconds": 1.0}),
])
def test_matches_librosa(config):
    rng = np.random.default_rng(0)
    n = config.length_wav
    t = np.arange(n) / config.data.sample_rate
    x = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
    ours, _ = Featurizer.from_config(config)(torch.from_numpy(x)[None])
    ref = librosa_logmel(x, config)
    assert ours.shape == (1, *ref.shape) == (1, config.features.n_mels, config.length)
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=2e-3, rtol=0)


def test_matches_librosa_on_real_clip(esc50):
    config = TaskConfig()
    x = load_audio(esc50 / "audio" / "1-100038-A-14.ogg", config.data.sample_rate, config.length_wav)
    ours, _ = Featurizer.from_config(config)(torch.from_numpy(x)[None])
    ref = librosa_logmel(x, config)
    loud = ref > np.log(config.features.log_floor) + 1  # away from the floor, where float32 rounding dominates
    np.testing.assert_allclose(ours[0].numpy()[loud], ref[loud], atol=2e-3, rtol=0)
    assert loud.mean() > 0.5


def test_frame_counts_of_a_padded_batch():
    feat = Featurizer(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, n_mels=16)
    lengths = torch.tensor([8000, 5000, 257, 64])
    batch = torch.zeros(4, 8000)
    out, frames = feat(batch, lengths)
    for row, length in enumerate(lengths.tolist()):
        single, _ = feat(torch.zeros(1, length))
        assert frames[row].item() == single.shape[-1] == length // 64 + 1
    assert out.shape[-1] == frames.max().item()


def test_precomputed_features_give_the_same_logits_as_waveforms():
    from escnet.data.datasets import clip_dataset, collate
    from escnet.models import SoundClassifier
    from escnet.transforms.features import compute_features

    config = tiny_config(**{"features.n_mels": 64, "model.name": "crnn", "model.args.kernel_size": (5, 8), "model.args.stride": (2, 4), "model.num_classes": 3})
    torch.manual_seed(0)
    model = SoundClassifier.from_config(config).eval()
    waves = np.random.default_rng(0).uniform(-0.5, 0.5, (5, config.length_wav)).astype(np.float32)
    feats = compute_features(model.featurizer, waves, torch.device("cpu"), batch_size=2)
    assert feats.shape == (5, config.features.n_mels, config.length)
    labels, idx = np.zeros(5, int), [4, 0, 2]
    with torch.inference_mode():
        from_wav = model.forward_batch(collate([clip_dataset(waves, labels, idx)[i] for i in range(3)]), "cpu")
        from_feat = model.forward_batch(collate([clip_dataset(feats, labels, idx)[i] for i in range(3)]), "cpu")
    torch.testing.assert_close(from_wav, from_feat, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("sr", "n_fft", "n_mels"), [(44100, 1024, 64), (22050, 1024, 64), (16000, 512, 128)])
def test_mel_bands_skip_only_zero_weights(sr, n_fft, n_mels):
    mel = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels)
    bands = mel_bands(mel)
    assert [b[0] for b in bands] == list(range(0, n_mels, 4)) and bands[-1][1] == n_mels
    kept = np.zeros_like(mel, dtype=bool)
    for first, last, lo, hi in bands:
        kept[first:last, lo:hi] = True
    assert not mel[~kept].any()  # every non-zero weight is inside its group's bins
    assert kept.mean() < 0.2  # and most of the dense product is skipped
