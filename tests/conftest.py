"""Shared fixtures: synthetic audio written to temp folders, and the real ESC-50 copy."""

from __future__ import annotations

import csv
import os
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
ESC50 = Path(os.environ.get("ESCNET_ESC50") or REPO.parent / "shared" / "data" / "esc50")
WEIGHTS = Path(os.environ.get("ESCNET_WEIGHTS") or REPO.parent / "shared" / "weights")
MN04 = "mn04_as_mAP_432.pt"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Every test session caches waveforms in its own temp folder, never in ~/.cache."""
    os.environ["ESCNET_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def esc50() -> Path:
    if not (ESC50 / "meta" / "esc50.csv").is_file():
        pytest.skip(f"ESC-50 copy not found at {ESC50} (set ESCNET_ESC50 to its folder)")
    return ESC50


# The smallest settings a model trains with in a test: 1 s clips at 8 kHz, 32 mels (126 frames).
TINY = {"data.sample_rate": 8000, "data.clip_seconds": 1.0, "features.n_fft": 256,
        "features.win_length": 256, "features.hop_length": 64, "features.n_mels": 32}


def benchmark(name: str):
    """The script ``benchmarks/NAME.py`` imported as a module (its ``main`` not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**changes):
    """A :class:`TaskConfig` with :data:`TINY`, then ``changes`` (``**{"section.key": value}``)."""
    from escnet.config import TaskConfig

    return TaskConfig().replace({**TINY, **changes})


def tiny_flags(*extra: str) -> list[str]:
    """:data:`TINY` as ``--set`` flags of an escnet command, then ``extra``."""
    return [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")] + list(extra)


def tone(freq: float, sr: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A sine, ``(samples,)`` or ``(samples, channels)`` float32."""
    t = np.arange(int(sr * seconds)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write_esc50_like(root: Path, clips: list[tuple[str, int, int, str]], sr: int = 16000,
                     seconds: float = 1.0) -> Path:
    """An ESC-50-layout folder: ``clips`` are (filename as in the CSV, fold, target, extension
    actually written). Each class gets its own tone so that the data is learnable."""
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    with (root / "meta" / "esc50.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for name, fold, target, ext in clips:
            w.writerow([name, fold, target, f"class{target}", target % 2 == 0, "1", "A"])
            stem = Path(name).stem
            sf.write(root / "audio" / f"{stem}{ext}", tone(200 + 150 * target, sr, seconds), sr)
    return root


def esc50_subset_csv(esc50: Path, out: Path, targets: list[int], folds: list[int]) -> Path:
    """A ``path,label,fold`` CSV of the real ESC-50 clips of ``targets`` in ``folds``."""
    from escnet.data.tables import read_esc50

    table = read_esc50(esc50)
    names = table.classes
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "fold"])
        for path, label, fold in zip(table.paths, table.labels, table.folds, strict=True):
            if label in targets and fold in folds:
                w.writerow([path, names[label], fold])
    return out


class Page(HTMLParser):
    """Collects images, table cells and headings of an HTML page (and fails on bad nesting)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images, self.cells, self.stack, self.text = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag not in ("meta", "br"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ("td", "th"):
            self.cells.append(data)
        self.text.append(data)


# What the runtime path may not import: a `pip install "escnet[runtime]"` has none of them.
NO_TRAINING_LIBS = ("torch", "librosa", "sklearn", "matplotlib", "tqdm", "audiomentations", "onnx",
                    "onnxscript", "scipy")


def runtime_cli(*args: str) -> list[str]:
    """The command line of `escnet ARGS...` in a process where the training libraries cannot be
    imported."""
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in NO_TRAINING_LIBS)
    return [sys.executable, "-c", f"import sys; {block}; from escnet.cli import main; "
            f"sys.exit(main({list(args)!r}))"]


FIVE_CLASS_TARGETS = [0, 10, 20, 38, 46]  # dog, rain, crying baby, clock tick, church bells
FIVE_CLASS_RATE = 16000


@pytest.fixture(scope="session")
def five_class_run(esc50, tmp_path_factory):
    """cnn10 trained briefly on 5 real ESC-50 classes, folds 1 and 2 held out in turn."""
    from escnet.config import TaskConfig
    from escnet.engine.train import train

    csv_path = esc50_subset_csv(esc50, tmp_path_factory.mktemp("data") / "five.csv",
                                FIVE_CLASS_TARGETS, [1, 2, 3, 4, 5])
    config = TaskConfig().replace({
        "data.data_dir": str(csv_path), "data.sample_rate": FIVE_CLASS_RATE, "data.folds": [1, 2],
        "features.n_fft": 512, "features.win_length": 512, "features.hop_length": 256,
        "features.n_mels": 40, "model.name": "cnn10", "model.args.width": 8,
        "model.args.dropout": 0.0, "model.args.head_dropout": 0.1, "train.num_epochs": 6,
        "train.learning_rate": 3e-3, "train.optimizer": "adamw"})
    path = tmp_path_factory.mktemp("runs") / "cnn10"
    train(config, path, progress=False)
    return path


@pytest.fixture(scope="session")
def five_class_exports(five_class_run, tmp_path_factory):
    """The run's fold-1 model exported (with an int8 copy), and its two folds as an ensemble."""
    from escnet.deploy.export import export

    out = tmp_path_factory.mktemp("onnx")
    return (export(five_class_run, out / "fold1.onnx", fold="1", quantize="int8",
                   calibration_clips=60),
            export(five_class_run, out / "all.onnx", ensemble=True))


@pytest.fixture(scope="session")
def probe_open_run(esc50, tmp_path_factory):
    """The pretrained-probe preset on eight real ESC-50 classes, cat and church bells left out."""
    from escnet.cli import main

    if not (WEIGHTS / MN04).is_file():
        pytest.skip(f"EfficientAT weights not found at {WEIGHTS} (set ESCNET_WEIGHTS to a folder "
                    f"holding {MN04})")
    targets = [0, 5, 10, 20, 26, 38, 41, 46]  # dog, cat, rain, crying baby, laughing, clock tick, chainsaw, bells
    data = esc50_subset_csv(esc50, tmp_path_factory.mktemp("data") / "eight.csv", targets, [1, 2, 3, 4, 5])
    out = tmp_path_factory.mktemp("runs") / "probe"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESCNET_WEIGHTS", str(WEIGHTS))
        assert main(["train", "--preset", "pretrained-probe", "--data", str(data), "--folds", "1",
                     "--unknown-classes", "cat,church_bells", "--out", str(out), "--quiet"]) == 0
    return out, data


@pytest.fixture(scope="session")
def probe_open_onnx(probe_open_run, tmp_path_factory) -> Path:
    """:func:`probe_open_run`'s fold-1 model exported to ONNX (with ``escnet export``)."""
    from escnet.cli import main

    out = tmp_path_factory.mktemp("onnx") / "probe.onnx"
    assert main(["export", str(probe_open_run[0]), "--fold", "1", "--out", str(out)]) == 0
    return out


class ToneModel:
    """A model of two tones with a score anyone can work out by hand: a window whose spectrum
    peaks near 500 Hz is "low", near 2000 Hz "high" (probability 0.9), anything else (noise)
    is unknown (known score 0 against a threshold of 0.5). Event timing tests use it to know
    exactly what the scores are; the real models are tested on real clips elsewhere."""

    def __init__(self, rate: int = 8000, clip_seconds: float = 2.0) -> None:
        from escnet.deploy.onnx_model import ModelInfo
        from escnet.models.calibration import Calibration

        self.info = ModelInfo(["low", "high"], rate, int(rate * clip_seconds), "tones", "float32",
                              None, [], "test", Calibration(unknown_score="energy", thresholds={"energy": 0.5}))

    def score(self, windows: np.ndarray):
        from escnet.deploy.onnx_model import Scores

        spectrum = np.abs(np.fft.rfft(windows, axis=1))
        freqs = np.fft.rfftfreq(windows.shape[1], 1 / self.info.sample_rate)
        probabilities, known = [], []
        for row in spectrum:
            peak = freqs[np.argmax(row)]
            tonal = row.max() > 20 * np.median(row[row > 0]) if (row > 0).any() else False
            low = abs(peak - 500) < 50
            probabilities.append([0.9, 0.1] if low else [0.1, 0.9])
            known.append(1.0 if tonal and (low or abs(peak - 2000) < 50) else 0.0)
        return Scores(np.array(probabilities, np.float32), np.array(known, np.float32), None)

    def logmel(self, window: np.ndarray):
        return None


class FrameToneModel(ToneModel):
    """:class:`ToneModel` with a frame head anyone can work out by hand: each of its window's
    ``steps`` equal frames (or, given ``frame_seconds``, frames that long from the window's
    start, the last zero-padded past its end, as the mn models' are) says "low" with probability
    0.9 where that frame holds a 500 Hz tone, "high" where it holds a 2000 Hz one (each on its
    own: both at once when both sound), else 0.05; the clip probabilities are
    :class:`ToneModel`'s. ``frame_window``: the seconds its events are read over."""

    def __init__(self, rate: int = 8000, clip_seconds: float = 2.0, steps: int = 8,
                 frame_seconds: float | None = None, frame_window: float | None = None) -> None:
        from dataclasses import replace

        super().__init__(rate, clip_seconds)
        self.info = replace(self.info, frame_model=True, frame_seconds=frame_seconds,
                            frame_window=frame_window)
        self.steps = steps

    def score(self, windows: np.ndarray):
        clip = super().score(windows)
        rate = self.info.sample_rate
        if self.info.frame_seconds is None:
            steps, n = self.steps, windows.shape[1] // self.steps
        else:
            n = round(self.info.frame_seconds * rate)
            steps = -(-windows.shape[1] // n)
            windows = np.pad(windows, ((0, 0), (0, steps * n - windows.shape[1])))
        frames = windows[:, : n * steps].reshape(len(windows), steps, n)
        spectrum = np.abs(np.fft.rfft(frames, axis=2))
        freqs = np.fft.rfftfreq(n, 1 / rate)
        power = [spectrum[..., np.abs(freqs - f) < 60].max(axis=2) for f in (500, 2000)]
        heard = np.stack([p > 0.05 * n for p in power], axis=2)  # amplitude ≳ 0.1
        return clip._replace(frames=np.where(heard, 0.9, 0.05).astype(np.float32))


def tones(seconds: float, spans: list[tuple[float, float, float]], rate: int,
          rng: np.random.Generator) -> np.ndarray:
    """``seconds`` of quiet hiss (below the silence gate) with a sine of amplitude 0.3 added
    for each ``(start, end, Hz)`` of ``spans``."""
    t = np.arange(int(seconds * rate)) / rate
    wav = rng.standard_normal(t.size).astype(np.float32) * 1e-4
    for lo, hi, freq in spans:
        part = (t >= lo) & (t < hi)
        wav[part] += 0.3 * np.sin(2 * np.pi * freq * t[part])
    return wav


def tone_scene(rate: int = 8000) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """9 s: low tone 1.0–3.0 s, noise 4.5–5.5 s (unknown), high tone 6.5–7.5 s, quiet hiss
    elsewhere (below the silence gate)."""
    rng = np.random.default_rng(0)
    wav = tones(9, [(1.0, 3.0, 500), (6.5, 7.5, 2000)], rate, rng)
    t = np.arange(wav.size) / rate
    noisy = (t >= 4.5) & (t < 5.5)
    wav[noisy] += 0.1 * rng.standard_normal(noisy.sum())
    return wav, [("low", 1.0, 3.0), ("high", 6.5, 7.5)]


LOCAL = "http://localhost:8000"
"""What test clients call a server: a loopback name, as a browser on the same machine does
(``escnet serve`` on a loopback address refuses other ``Host`` names)."""


def local_client(app):
    """FastAPI's test client for ``app``, reaching it at :data:`LOCAL` over HTTP and WebSocket
    alike (its WebSockets otherwise go to ``testserver``)."""
    from urllib.parse import urljoin

    from fastapi.testclient import TestClient

    class LocalClient(TestClient):
        def websocket_connect(self, url: str, *args, **kwargs):
            return super().websocket_connect(urljoin(LOCAL.replace("http", "ws"), url), *args, **kwargs)

    return LocalClient(app, base_url=LOCAL)


@pytest.fixture(scope="session")
def real_archive(esc50, tmp_path_factory) -> tuple[Path, dict[tuple[str, float], str]]:
    """Four 40 s recordings of real ESC-50 clips (folds 2-5) end to end, indexed with the
    AudioSet model; the truth: which class each 5 s window holds."""
    if not (WEIGHTS / MN04).is_file():
        pytest.skip(f"EfficientAT weights not found at {WEIGHTS} (set ESCNET_WEIGHTS to a folder holding {MN04})")
    from escnet.archive.index import index_folder
    from escnet.data.audio import AudioFile
    from escnet.data.tables import read_esc50

    table = read_esc50(esc50)
    wanted = ["dog", "rooster", "church_bells", "door_wood_knock", "crying_baby", "rain", "chainsaw",
              "clock_tick"]
    picked: dict[str, list[str]] = {c: [] for c in wanted}
    for path, label, fold in zip(table.paths, table.labels, table.folds, strict=True):
        name = table.classes[label]
        if name in picked and fold > 1 and len(picked[name]) < 4:
            picked[name].append(path)
    folder = tmp_path_factory.mktemp("real") / "recordings"
    folder.mkdir()
    truth: dict[tuple[str, float], str] = {}
    for r in range(4):
        parts = []
        for k, name in enumerate(wanted):
            with AudioFile(picked[name][r]) as clip:
                part = clip.excerpt(32000, 0.0, 5.0)
            parts.append(np.pad(part, (0, 5 * 32000 - len(part))))  # exactly 5 s: windows are clips
            truth[(f"r{r}.wav", 5.0 * k)] = name
        sf.write(folder / f"r{r}.wav", np.concatenate(parts), 32000)
    db = folder.parent / "db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESCNET_WEIGHTS", str(WEIGHTS))
        index_folder(folder, db, "mn04_as")
    return db, truth
