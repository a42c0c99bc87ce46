"""AudioSet-pretrained EfficientAT models: the front-end, the layout, named and verified weights,
the frozen-trunk probe and probing before fine-tuning."""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import MN04, WEIGHTS, esc50_subset_csv, tiny_config
from test_download import Server

from escnet.cards import CARDS, WeightsFile
from escnet.config import load_config
from escnet.data.audio import load_audio
from escnet.data.tables import read_esc50
from escnet.errors import ConfigError, EscnetError
from escnet.models import count_parameters, create_model
from escnet.models.mobilenet import WIDTHS
from escnet.models.pretrained import read_state_dict, resolve_weights
from escnet.transforms.features import Featurizer, MatmulLogMel, kaldi_mel_banks


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    if not (WEIGHTS / MN04).is_file():
        pytest.skip(f"EfficientAT weights not found at {WEIGHTS} (set ESCNET_WEIGHTS to a folder "
                    f"holding {MN04})")
    return WEIGHTS


@pytest.fixture
def offline_weights(weights_dir, monkeypatch):
    """The weights folder as a user without internet names it."""
    monkeypatch.setenv("ESCNET_WEIGHTS", str(weights_dir))
    return weights_dir


def test_kaldi_mel_banks_match_hand_computed_values():
    # 8 kHz, n_fft 16: bins every 500 Hz; 2 bands from 0 to 4000 Hz: 4 edges evenly spaced in
    # m(f) = 1127 ln(1 + f/700) from m(0) = 0 to m(4000) = 2146.0, delta = 715.3 apart.
    banks = kaldi_mel_banks(2, 16, 8000, 0.0, 4000.0)
    assert banks.shape == (2, 9) and np.all(banks[:, 8] == 0)  # the Nyquist column is zero
    m = lambda f: 1127 * math.log(1 + f / 700)  # noqa: E731
    delta = m(4000) / 3
    assert delta == pytest.approx(715.3, abs=0.1)
    # 500 Hz (m = 607.5) on band 0's rise; 1000 Hz (m = 1000.0) on band 0's fall and band 1's rise
    assert banks[0, 1] == pytest.approx(m(500) / delta, rel=1e-5) == pytest.approx(0.849, abs=1e-3)
    assert banks[1, 1] == 0
    assert banks[0, 2] == pytest.approx((2 * delta - m(1000)) / delta, rel=1e-5)
    assert banks[1, 2] == pytest.approx((m(1000) - delta) / delta, rel=1e-5)
    # 2500 Hz (m = 1712.8): past band 0, on band 1's fall; DC is band 0's left edge
    assert banks[0, 5] == 0 and banks[1, 5] == pytest.approx((3 * delta - m(2500)) / delta, rel=1e-5)
    assert banks[0, 0] == 0


def _reference_logmel(wav: np.ndarray) -> np.ndarray:
    """EfficientAT's front-end written out in NumPy from its definition (upstream's
    ``AugmentMelSTFT`` in eval mode: ``conv1d`` with the kernel ``[-0.97, 1]``, so the
    pre-emphasised signal is one sample shorter, ``y[t] = x[t + 1] - 0.97 x[t]``)."""
    y = (wav[1:] - 0.97 * wav[:-1]).astype(np.float64)
    padded = np.pad(y, 512, mode="reflect")
    window = np.zeros(1024)
    window[112:912] = np.hanning(800)  # symmetric
    frames = np.stack([padded[i * 320 : i * 320 + 1024] * window for i in range(len(y) // 320 + 1)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    mel = kaldi_mel_banks(128, 1024, 32000, 0.0, 15000.0).astype(np.float64) @ power.T
    return (np.log(mel + 1e-5) + 4.5) / 5


def test_efficientat_frontend_and_its_onnx_form_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    wav = (rng.standard_normal(32000) * 0.1).astype(np.float32)
    featurizer = Featurizer(32000, 32000, 1024, 800, 320, 128, 0.0, 15000.0, 1e-5, "efficientat")
    expected = _reference_logmel(wav)
    got = featurizer(torch.from_numpy(wav)[None])[0][0].double().numpy()
    assert got.shape == expected.shape == (128, 100)  # upstream: 100 frames a second of audio
    assert np.abs(got - expected).max() < 1e-4
    lengths = torch.tensor([32000, 16000, 321])  # valid frames of padded batches: (n - 1) // hop + 1
    assert featurizer.frames(lengths).tolist() == [100, 50, 2]
    matmul = MatmulLogMel(featurizer)(torch.from_numpy(wav)[None])[0].double().numpy()
    assert np.abs(matmul - expected).max() < 1e-4


def test_every_official_width_builds_and_mn04_has_its_published_size():
    sizes = {}
    for name in WIDTHS:
        model = create_model(name, n_mels=128, frames=101, num_classes=527)
        sizes[name] = count_parameters(model)
        assert model(torch.randn(1, 128, 101)).shape == (1, 527)
    assert sizes["mn04"] == 983_599  # "0.98 M parameters" (EfficientAT's table)
    assert list(sizes.values()) == sorted(sizes.values())


def test_the_official_checkpoint_loads_strictly_and_another_width_is_refused(weights_dir):
    state = read_state_dict(weights_dir / MN04)
    model = create_model("mn04", n_mels=128, frames=501, num_classes=527)
    model.load_pretrained(state, MN04)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    fresh = create_model("mn04", n_mels=128, frames=501, num_classes=50)
    fresh.load_pretrained(state, MN04)  # all but the 527-class layer
    assert torch.equal(fresh.state_dict()["classifier.2.weight"], state["classifier.2.weight"])
    with pytest.raises(ConfigError, match="layout does not match"):
        create_model("mn05", n_mels=128, frames=501, num_classes=50).load_pretrained(state, MN04)
    extra = {**state, "features.99.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match=r"features\.99\.weight is not one of its tensors"):
        fresh.load_pretrained(extra, MN04)


def test_audioset_head_tags_esc50_clips_as_audioset_would(weights_dir, esc50):
    names = [row["display_name"] for row in csv.DictReader(
        (weights_dir / "audioset_class_labels_indices.csv").open())]
    model = create_model("mn04", n_mels=128, frames=501, num_classes=527).eval()
    model.load_pretrained(read_state_dict(weights_dir / MN04), MN04)
    featurizer = Featurizer(32000, 160000, 1024, 800, 320, 128, 0.0, 15000.0, 1e-5, "efficientat")
    table = read_esc50(esc50)
    expect = {"dog": {"Dog", "Bark"}, "rain": {"Rain", "Rain on surface", "Raindrop"},
              "keyboard_typing": {"Typing", "Computer keyboard"}}
    for category, tags in expect.items():
        clip = table.paths[list(table.labels).index(table.classes.index(category))]
        wav = torch.from_numpy(load_audio(clip, 32000, 160000))[None]
        with torch.no_grad():
            top = model(featurizer(wav)[0])[0].topk(3).indices
        assert tags & {names[i] for i in top}, (category, [names[i] for i in top])


def test_named_weights_come_from_escnet_weights_verified_by_digest(weights_dir, tmp_path, monkeypatch):
    card = CARDS["mn04_as"]
    assert card.weights.url.endswith(MN04) and card.model == "mn04"
    monkeypatch.setenv("ESCNET_WEIGHTS", str(weights_dir))
    assert resolve_weights("mn04_as", "", tmp_path, card.weights) == weights_dir / MN04
    # a file under the official name whose bytes differ is refused, however it got there
    fake = tmp_path / "fake"
    fake.mkdir()
    data = bytearray((weights_dir / MN04).read_bytes())
    data[-1] ^= 0xFF  # one byte changed
    (fake / MN04).write_bytes(bytes(data))
    monkeypatch.setenv("ESCNET_WEIGHTS", str(fake))
    with pytest.raises(ConfigError, match="is not the published file"):
        resolve_weights("mn04_as", "", tmp_path, card.weights)
    # a name with no published digest needs model.pretrained_sha256
    mn20 = CARDS["mn20_as"].weights
    assert mn20.sha256 == ""
    with pytest.raises(ConfigError, match=r"set model\.pretrained_sha256"):
        resolve_weights("mn20_as", "", tmp_path, mn20)


def test_named_weights_are_downloaded_once_into_the_cache_and_checked(weights_dir, tmp_path, monkeypatch):
    payload = (weights_dir / MN04).read_bytes()
    monkeypatch.delenv("ESCNET_WEIGHTS", raising=False)
    server = Server(payload)
    try:
        known = WeightsFile(server.url, hashlib.sha256(payload).hexdigest())
        bad = WeightsFile(server.url, "0" * 64)  # a digest the file does not have
        with pytest.raises(EscnetError, match="checksum mismatch"):
            resolve_weights("mn04_as", "", tmp_path / "other", bad)
        path = resolve_weights("mn04_as", "", tmp_path, known)
        assert path == tmp_path / "weights" / "archive.zip" and path.read_bytes() == payload
        server.close()  # the second time, from the cache: the server is gone
        assert resolve_weights("mn04_as", "", tmp_path, known) == path
    finally:
        server.close()


@pytest.fixture(scope="module")
def five_classes(esc50, tmp_path_factory):
    return esc50_subset_csv(esc50, tmp_path_factory.mktemp("five") / "five.csv", [0, 10, 20, 38, 46],
                            [1, 2, 3, 4, 5])


def test_the_probe_preset_learns_five_classes_from_cached_embeddings(offline_weights, five_classes, tmp_path):
    from escnet.engine.train import train

    config = load_config(None, {"data.data_dir": str(five_classes), "data.folds": [1],
                                "train.num_epochs": 20}, preset="pretrained-probe")
    cache = Path(os.environ["ESCNET_CACHE"])
    before = set(cache.glob("emb-*.npy"))
    summary = train(config, tmp_path / "probe", progress=False)
    made = set(cache.glob("emb-*.npy")) - before
    assert len(made) == 1 and np.load(next(iter(made))).shape == (200, 384)
    assert summary["folds"]["1"] >= 0.9  # 40 held-out clips of 5 well-separated classes
    again = train(config, tmp_path / "again", progress=False)  # from the cached embeddings
    assert set(cache.glob("emb-*.npy")) - before == made and again["folds"] == summary["folds"]
    # the saved model is whole (waveform in): scored on waveforms it gives the run's accuracy
    from escnet.deploy.embed import Embedder
    from escnet.engine.evaluate import evaluate_run

    assert evaluate_run(tmp_path / "probe", progress=False)["folds"]["1"]["accuracy"] == summary["folds"]["1"]
    # the trunk stayed frozen: the run embeds a clip as the pretrained model does (a clip of
    # exactly the run's 5 s: the card's 10 s window then holds it whole, at its own length)
    clip = tmp_path / "five-seconds.wav"
    sf.write(clip, load_audio(next(csv.DictReader(five_classes.open()))["path"], 32000, 160000), 32000)
    np.testing.assert_allclose(Embedder.from_path(tmp_path / "probe").embed_file(clip).vectors,
                               Embedder.from_path("mn04_as").embed_file(clip).vectors, atol=1e-5)


def test_probing_first_trains_the_head_on_frozen_embeddings(offline_weights, five_classes, tmp_path):
    from escnet.engine.train import train

    config = load_config(None, {"data.data_dir": str(five_classes), "data.folds": [1],
                                "model.args.freeze": False, "model.args.head": "mlp",
                                "augment.crop_seconds": 2.0, "train.num_epochs": 1,
                                "train.probe_epochs": 20, "train.learning_rate": 1e-5},
                         preset="pretrained-probe")
    summary = train(config, tmp_path / "lpft", progress=False)
    # one epoch at a tiny learning rate: the accuracy is the probed head's
    assert summary["folds"]["1"] >= 0.9
    with pytest.raises(ConfigError, match="has no embedding to probe"):
        train(tiny_config(**{"data.data_dir": str(five_classes), "model.name": "lstm",
                             "train.probe_epochs": 2}), tmp_path / "lstm", progress=False)


def test_embed_gives_the_frozen_trunks_features_per_file_or_per_window(offline_weights, esc50, tmp_path, capsys):
    from escnet.cli import main
    from escnet.deploy.embed import Embedder

    table = read_esc50(esc50)
    clips = [str(table.paths[i]) for i in (0, 1)]
    pretrained = Embedder.from_path("mn04_as")
    one = pretrained.embed_file(clips[0])
    assert one.vectors.shape == (1, 384) and one.ends[0] == pytest.approx(5.0, abs=0.01)
    windows = pretrained.embed_file(clips[0], per_window=True, hop_seconds=2.5)
    assert windows.vectors.shape == (1, 384)  # a 5 s clip is one 5 s window
    np.testing.assert_allclose(windows.vectors, one.vectors, rtol=1e-5)
    assert main(["embed", "--model", "mn04_as", *clips, "--out", str(tmp_path / "e.npy")]) == 0
    saved = np.load(tmp_path / "e.npy")
    assert saved.shape == (2, 384) and np.allclose(saved[0], one.vectors[0], atol=1e-5)
    assert not np.allclose(saved[0], saved[1])  # two different sounds
    assert main(["embed", "--model", "mn04_as", clips[0], "--out", str(tmp_path / "e.npy")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["embed", "--model", "mn04_as", clips[0], "--per-window", "--out", str(tmp_path / "w.npy")]) == 2
    assert "write .npz or .parquet" in capsys.readouterr().err
    assert main(["embed", "--model", "mn04_as", clips[0], "--per-window", "--out", str(tmp_path / "w.npz")]) == 0
    with np.load(tmp_path / "w.npz") as z:
        assert z["embeddings"].shape == (1, 384) and list(z["files"]) == [clips[0]]
    assert main(["embed", "--model", "nope_as", clips[0], "--out", str(tmp_path / "x.npy")]) == 2
    assert "not a run folder, a checkpoint or a pretrained name" in capsys.readouterr().err


def test_the_events_preset_trains_frames_that_hear_overlapping_sounds_and_export(
        offline_weights, five_classes, tmp_path):
    from escnet.data.soundscapes import active_span, soundscape
    from escnet.deploy.events import stream_file
    from escnet.deploy.export import export
    from escnet.deploy.torch_model import TorchModel
    from escnet.engine.train import train

    config = load_config(None, {"data.data_dir": str(five_classes), "data.folds": [1],
                                "train.num_epochs": 2, "train.probe_epochs": 10},
                         preset="pretrained-events")
    summary = train(config, tmp_path / "events", progress=False)
    assert summary["folds"]["1"] >= 0.85  # 40 held-out clips of 5 classes: the clip head still hears
    model = TorchModel.from_path(tmp_path / "events")
    # its frames are 0.32 s apart and its events are read over 3 s windows, as it trained
    assert model.info.frame_model and (model.info.frame_seconds, model.info.frame_window) == (0.32, 3.0)
    # held-out dog barks and church bells (the longest of each), the bells starting 20-60 % in
    rows = [r for r in csv.DictReader(five_classes.open()) if r["fold"] == "1"]

    def longest(label: str) -> str:
        paths = [r["path"] for r in rows if r["label"] == label]
        return max(paths, key=lambda p: np.subtract(*active_span(load_audio(p, 32000), 32000)[::-1]))

    clips = [(longest(name), name) for name in ("dog", "church_bells")]
    wav, truth = soundscape(clips, 32000, 12.0, np.random.default_rng(0), overlap=True)
    assert len(truth) == 2 and truth[1].start < truth[0].end
    sf.write(tmp_path / "two.wav", wav, 32000)
    classes = model.info.classes
    tracks = {name: ([], []) for name in ("dog", "church_bells")}
    for update in stream_file(model, tmp_path / "two.wav"):
        for hop in update.scores:
            for e in truth:
                inside = e.start + 0.3 <= hop.centre <= e.end
                tracks[e.label][inside].append(hop.track[classes.index(e.label)])
    for label, (outside, inside) in tracks.items():  # each class's frames rise where it sounds
        assert np.mean(inside) > np.mean(outside) + 0.2, label
    result = export(tmp_path / "events", tmp_path / "events.onnx", fold="1")
    assert result.info.frame_model and result.max_difference < 1e-3
    from escnet.deploy.onnx_model import OnnxModel

    onnx = OnnxModel(tmp_path / "events.onnx")
    assert (onnx.info.frame_seconds, onnx.info.frame_window) == (0.32, 3.0)
    for window in (wav[None, :160000], wav[None, 32000:128000]):  # a clip, and a 3 s window
        np.testing.assert_allclose(onnx.score(window).frames, model.score(window).frames, atol=2e-3)
    # benchmarks/frame_overlap.py on its own training clips: what docs/RESULTS.md quotes
    from conftest import benchmark

    train_rows = [r for r in csv.DictReader(five_classes.open()) if r["fold"] != "1"]
    train_rows = [train_rows[i] for i in np.random.default_rng(0).permutation(len(train_rows))[:24]]
    torch.manual_seed(0)
    heard = benchmark("frame_overlap").measure(
        model, [r["path"] for r in train_rows], [classes.index(r["label"]) for r in train_rows],
        3.0, 8, 0.01)
    assert heard["one-sound frames"] > 50 and heard["its class > 0.5"] > 0.5
    assert heard["both > 0.5"] + heard["one > 0.5"] + heard["neither"] == pytest.approx(1)
    pairs = zip(train_rows[::2], train_rows[1::2], strict=True)
    assert heard["equal-RMS mixes"] == sum(a["label"] != b["label"] for a, b in pairs)


def test_wise_ft_averages_the_trained_weights_with_the_probed_start_and_resumes_to_the_same(
        offline_weights, five_classes, tmp_path):
    """train.wise_ft=0.5: the final model is halfway between the trained weights (kept in the
    log as test_accuracy_trained) and the probed start; a run killed after its last epoch
    averages the same on resume."""
    import shutil

    import torch

    from escnet.engine.train import train
    from escnet.runs import RunDir

    settings = {"data.data_dir": str(five_classes), "data.folds": [1], "model.args.freeze": False,
                "augment.crop_seconds": 2.0, "train.num_epochs": 1, "train.probe_epochs": 5,
                "train.learning_rate": 1e-3, "train.ema_decay": 0.0}
    trained = train(load_config(None, settings, preset="pretrained-probe"), tmp_path / "plain", progress=False)
    mixed = train(load_config(None, settings | {"train.wise_ft": 0.5}, preset="pretrained-probe"),
                  tmp_path / "wise", progress=False)
    start = train(load_config(None, settings | {"train.learning_rate": 1e-12}, preset="pretrained-probe"),
                  tmp_path / "start", progress=False)
    assert trained and start
    last = RunDir(tmp_path / "wise").read_history("1")[-1]
    assert last["wise_ft"] == 0.5 and last["test_accuracy"] == mixed["folds"]["1"]
    assert last["test_accuracy_trained"] == trained["folds"]["1"]

    def weights(name):
        return torch.load(tmp_path / name / "fold-1" / "last.pt", weights_only=False)["model"]

    plain, wise, first = weights("plain"), weights("wise"), weights("start")
    key = next(k for k, v in plain.items() if v.is_floating_point() and not torch.equal(v, first[k]))
    torch.testing.assert_close(wise[key], (plain[key] + first[key]) / 2, atol=1e-5, rtol=1e-4)
    # killed after its last epoch, before the average: the wise run as it was then (the trained
    # weights, the log without the average, no held-out files); resuming averages the same
    shutil.copytree(tmp_path / "wise", tmp_path / "resumed")
    run = RunDir(tmp_path / "resumed")
    state = torch.load(run.checkpoint("1"), weights_only=False)
    history = state["history"]
    history[-1] = {k: v for k, v in history[-1].items() if k not in ("wise_ft", "test_accuracy_trained",
                                                                       "test_loss_trained")}
    history[-1]["test_accuracy"] = trained["folds"]["1"]
    torch.save(state | {"model": plain, "history": history}, run.checkpoint("1"))
    run.write_history("1", history)
    for leftover in ("predictions.csv", "metrics.json", "held_out.npz", "calibration.json"):
        (run.fold_dir("1") / leftover).unlink(missing_ok=True)
    config = load_config(None, settings | {"train.wise_ft": 0.5}, preset="pretrained-probe")
    train(config, tmp_path / "resumed", resume=True, progress=False)
    torch.testing.assert_close(weights("resumed")[key], wise[key])
    with pytest.raises(ConfigError, match=r"train\.wise_ft=0\.5"):
        train(tiny_config(**{"data.data_dir": str(five_classes), "train.wise_ft": 0.5}), tmp_path / "x",
              progress=False)


def test_a_bad_dataset_is_said_before_any_weights_are_downloaded(tmp_path, monkeypatch, capsys):
    from escnet.cli import main

    monkeypatch.delenv("ESCNET_WEIGHTS", raising=False)
    monkeypatch.setenv("ESCNET_CACHE", str(tmp_path / "cache"))
    server = Server(b"weights")  # fetched, it would be refused by its digest, after the download
    notes = tmp_path / "notes.txt"
    notes.write_text("not a dataset")
    try:
        code = main(["train", "--preset", "pretrained", "--data", str(notes), "--out", str(tmp_path / "r"),
                     "--set", f"model.pretrained={server.url}", "--set", "model.pretrained_sha256=" + "f" * 64,
                     "--quiet"])
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2 and "notes.txt: a dataset file must be a CSV" in err, err
    assert not list(tmp_path.rglob("archive.zip*")) and not (tmp_path / "r").exists()
    assert server.requests == 0  # not fetched at all (a refused download leaves no file either)


@pytest.mark.parametrize("segment", ["..%2F..%2Fpwned.pt", "..%5C..%5Cpwned.pt", "%2e%2e%2fpwned.pt", "..",
                                     ".bashrc", "a%00b.pt", "%252e%252e%252Fpwned.pt", "x" * 300])
def test_a_weights_url_decides_no_path_and_is_written_only_into_the_cache(segment, tmp_path, monkeypatch):
    """Whatever the URL's last segment holds, the download lands in cache/weights under a plain
    name, and nothing is written anywhere else; without a digest nothing is fetched at all."""
    monkeypatch.delenv("ESCNET_WEIGHTS", raising=False)
    payload = b"weights" * 100
    server = Server(payload, any_path=True)
    cache = tmp_path / "a" / "b" / "cache"
    try:
        url = server.root + "dir/" + segment
        with pytest.raises(ConfigError, match=r"no digest is published.*pretrained_sha256"):
            resolve_weights(url, "", cache)
        assert server.requests == 0  # refused before any request
        path = resolve_weights(url, hashlib.sha256(payload).hexdigest(), cache)
    finally:
        server.close()
    assert path.parent == cache / "weights" and path.read_bytes() == payload
    for bad, why in (("http://[::1", "Invalid IPv6 URL"), ("https:///x.pt", "no host")):
        with pytest.raises(ConfigError, match=rf"model\.pretrained='{re.escape(bad)}': not a URL escnet can fetch \({why}\)"):
            resolve_weights(bad, "f" * 64, cache)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+=-]*", path.name) and len(path.name) <= 128
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written == [path]


def test_a_hex_prefix_in_a_weights_url_is_no_digest(tmp_path, monkeypatch):
    """torchvision-style names (``-dcbb9e9d.``) are chosen by whoever wrote the URL: only a
    digest escnet pins or the user gives verifies a download."""
    monkeypatch.delenv("ESCNET_WEIGHTS", raising=False)
    payload = b"not the weights"
    server = Server(payload, any_path=True)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    try:
        with pytest.raises(ConfigError, match="no digest is published"):
            resolve_weights(f"{server.root}vgg19-{prefix}.pth", "", tmp_path)
        assert server.requests == 0
    finally:
        server.close()
    # a name escnet pins: the user's digest must agree with the pin
    with pytest.raises(ConfigError, match=r"model\.pretrained_sha256=.*escnet pins dcbb9e9d"):
        resolve_weights("vgg19_imagenet", "0" * 64, tmp_path, CARDS["vgg19_imagenet"].weights)


def test_weights_settings_and_folders_are_named_when_wrong(tmp_path, monkeypatch):
    for digest in ("xyz12345", "0" * 65, "abc"):  # not hex, too long, too short: the setting is named
        with pytest.raises(ConfigError, match=r"setting model\.pretrained_sha256="):
            load_config(None, {"model.pretrained_sha256": digest})
    (tmp_path / "weights.pt").write_bytes(b"x")
    monkeypatch.setenv("ESCNET_WEIGHTS", str(tmp_path / "weights.pt"))
    with pytest.raises(ConfigError, match=r"ESCNET_WEIGHTS=.*a file, not a folder"):
        resolve_weights("mn04_as", "", tmp_path, CARDS["mn04_as"].weights)


def test_pinned_digests_of_the_wider_audioset_weights():
    assert {name: CARDS[name].weights.sha256[:8] for name in ("mn04_as", "mn05_as", "mn10_as", "mn40_as")} == {
        "mn04_as": "899a8c62", "mn05_as": "97f00bb7", "mn10_as": "0bd7dc24", "mn40_as": "09624dca"}
