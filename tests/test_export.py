"""ONNX export, the torch-free runtime, and timelines of long recordings, on real ESC-50 clips."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from conftest import FIVE_CLASS_RATE, runtime_cli, tone

from escnet.cli import main
from escnet.config import TaskConfig
from escnet.data.audio import load_audio
from escnet.deploy.export import ExportError, export
from escnet.deploy.onnx_model import OnnxModel
from escnet.deploy.predict import Predictor
from escnet.deploy.torch_model import TorchModel
from escnet.models import SoundClassifier
from escnet.runs import RunDir, save_checkpoint
from escnet.transforms.features import Featurizer, MatmulLogMel

RATE = FIVE_CLASS_RATE



@pytest.mark.parametrize("settings", [
    dict(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=512, n_mels=64),
    dict(sample_rate=44100, n_fft=1024, win_length=800, hop_length=256, n_mels=64),
    dict(sample_rate=16000, n_fft=400, win_length=400, hop_length=160, n_mels=40, f_min=50.0),
    dict(sample_rate=16000, n_fft=512, win_length=300, hop_length=100, n_mels=32, f_max=7000.0),
])
@pytest.mark.parametrize("samples", [110_250, 12_345, 300])
def test_matmul_logmel_is_the_featurizer(settings, samples):
    featurizer = Featurizer(**settings)
    wav = torch.randn(3, samples, generator=torch.Generator().manual_seed(0)) * 0.1
    wav[1] *= 1e-4  # quiet enough to reach the log floor in places
    expected = featurizer(wav)[0]
    got = MatmulLogMel(featurizer)(wav)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 2e-5  # log-mel units; float32 rounding of two DFTs


@pytest.fixture(scope="module")
def run(five_class_run):
    return five_class_run


@pytest.fixture(scope="module")
def exported(five_class_exports):
    return five_class_exports


@pytest.fixture(scope="module")
def held_out(run):
    config = RunDir(run).config
    table_rows = [line.split(",") for line in Path(config.data.data_dir).read_text().splitlines()[1:]]
    return [path for path, _, fold in table_rows if fold == "1"]


def test_onnx_runtime_matches_pytorch_on_every_held_out_clip(run, exported, held_out):
    single, _ = exported
    onnx_model, torch_model = OnnxModel(single.path), TorchModel([RunDir(run).checkpoint("1")])
    clips = np.stack([load_audio(p, RATE, 5 * RATE) for p in held_out])
    got, expected = onnx_model(clips), torch_model(clips)
    assert len(clips) == 40
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4
    # dynamic axes: other batch sizes and another length give the same numbers as PyTorch
    for batch, seconds in ((1, 5), (3, 2), (7, 9)):
        part = clips[:batch, : seconds * RATE] if seconds <= 5 else np.tile(clips[:batch], 2)[:, : seconds * RATE]
        assert np.abs(onnx_model(part) - torch_model(part)).max() < 1e-4


def test_the_file_alone_says_what_it_is(run, exported):
    single, ensemble = exported
    info = OnnxModel(single.path).info
    summary = RunDir(run).summary
    assert info.classes == summary["classes"] and len(info.classes) == 5
    assert (info.sample_rate, info.clip_samples, info.clip_seconds) == (RATE, 5 * RATE, 5.0)
    assert info.model == "cnn10" and info.folds == ["1"] and info.precision == "float32"
    assert info.held_out_accuracy == pytest.approx(summary["folds"]["1"], abs=1e-6)
    assert single.accuracy["float32"] == pytest.approx(summary["folds"]["1"], abs=0.026)  # ≤ 1 clip of 40
    whole = OnnxModel(ensemble.path).info
    assert whole.folds == ["1", "2"] and whole.held_out_accuracy is None  # no clip is held out of both


def test_int8_copy_is_labelled_with_its_own_accuracy(exported):
    single, _ = exported
    assert single.int8_path.name == "fold1.int8.onnx"
    info = OnnxModel(single.int8_path).info
    assert info.precision == "int8" and info.held_out_accuracy == single.accuracy["int8"]
    assert abs(single.accuracy["int8"] - single.accuracy["float32"]) <= 0.1  # 4 clips of 40
    # every convolution runs on int8: its input and its (int8-stored) weights come through QDQ
    graph = onnx.load(single.int8_path).graph
    weights = {i.name: i for i in graph.initializer}
    made_by = {out: node for node in graph.node for out in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert convs
    for conv in convs:
        assert [made_by[i].op_type for i in conv.input[:2]] == ["DequantizeLinear"] * 2
        assert weights[made_by[conv.input[1]].input[0]].data_type == onnx.TensorProto.INT8


def test_ensemble_export_averages_the_fold_models(run, exported, held_out):
    _, ensemble = exported
    clips = np.stack([load_audio(p, RATE, 5 * RATE) for p in held_out[:8]])
    assert np.abs(OnnxModel(ensemble.path)(clips) - TorchModel.from_path(run)(clips)).max() < 1e-4


def test_export_refuses_what_it_cannot_do(run, tmp_path, capsys):
    existing = tmp_path / "taken.onnx"
    existing.write_text("a user's file")
    cases = [
        ([str(run), "--out", str(existing), "--fold", "1"], f"{existing}: already exists"),
        ([str(run), "--out", str(tmp_path / "m.onnx")], "folds 1, 2 have models; choose one: --fold K"),
        ([str(run), "--out", str(tmp_path / "m.onnx"), "--fold", "3"], "--fold 3: no fold-3/last.pt"),
        ([str(run), "--out", str(tmp_path / "m.pt"), "--fold", "1"], "--out " + str(tmp_path / "m.pt") + ": give a .onnx file name"),
        ([str(tmp_path), "--out", str(tmp_path / "m.onnx")], "not an escnet run"),
        ([str(run), "--out", str(tmp_path / "m.onnx"), "--fold", "1", "--quantize", "int8",
          "--data", str(tmp_path / "gone")], "calibrates on the run's training clips"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert existing.read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]  # nothing half-written


def test_a_model_the_exporter_cannot_handle_is_named_in_one_line(tmp_path):
    # the report's VGG-style CNN pools adaptively, which torch.onnx has no ONNX function for
    config = TaskConfig().replace({"model.name": "advanced", "model.num_classes": 3, "data.sample_rate": RATE})
    model = SoundClassifier.from_config(config, pretrained=False)
    save_checkpoint(tmp_path / "advanced.pt", {"model": model.state_dict(), "config": config.to_dict(),
                                               "classes": ["a", "b", "c"], "epoch": 1})
    with pytest.raises(ExportError, match=r"^model advanced cannot be exported to ONNX: .*adaptive_max_pool2d"):
        export(tmp_path / "advanced.pt", tmp_path / "advanced.onnx")
    assert not (tmp_path / "advanced.onnx").exists()


def _runtime_cli(*args: str) -> subprocess.CompletedProcess:
    """`escnet ...` in a process where the training libraries cannot be imported."""
    return subprocess.run(runtime_cli(*args), capture_output=True, text=True, timeout=120)


def test_predict_runs_an_export_without_pytorch(run, exported, held_out, tmp_path):
    single, _ = exported
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    done = _runtime_cli("predict", "--model", str(single.path), held_out[0], str(bad), held_out[1], "--json")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"escnet: error: {bad}: not a readable audio file (Format not "
                                        "recognised.)",
                                        "escnet: 1 of 3 files could not be read (listed above)"]
    results = json.loads(done.stdout)
    assert [r["file"] for r in results] == [held_out[0], held_out[1]]
    reference = Predictor.from_path(RunDir(run).checkpoint("1"))
    for r in results:
        expected = reference.predict_file(r["file"])
        assert r["top"][0]["label"] == expected.top[0][0]
        assert r["top"][0]["probability"] == pytest.approx(expected.top[0][1], abs=1e-4)


def test_bad_model_files_get_one_line(exported, held_out, tmp_path):
    import onnx

    single, _ = exported
    plain = onnx.load(str(single.path))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    data = single.path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.onnx").write_text("hello")
    cases = [
        ([str(tmp_path / "plain.onnx")], "not an escnet export (no escnet metadata)"),
        ([str(tmp_path / "cut.onnx")], "not a readable ONNX model, or a damaged or cut-off one"),
        ([str(tmp_path / "text.onnx")], "not a readable ONNX model"),
        ([str(tmp_path / "missing.onnx")], "model file not found"),
        ([str(single.path), "--sample-rate", "44100"], "takes 16000 Hz audio, not --sample-rate 44100"),
    ]
    for model_args, message in cases:
        done = _runtime_cli("predict", "--model", *model_args, held_out[0])
        assert done.returncode == 2 and done.stdout == ""
        assert message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def _recording(path, pieces, rate=RATE):
    sf.write(path, np.concatenate(pieces), rate)
    return path


def test_timeline_windows_cover_the_recording(exported, held_out, tmp_path):
    single, _ = exported
    predictor = Predictor.from_path(single.path, batch_size=3)  # several batches
    clip = load_audio(held_out[0], RATE)[: 5 * RATE]
    pieces = [clip, tone(1000, RATE, 2.5, amp=0.3), np.zeros(5 * RATE, np.float32), tone(500, RATE, 1.3)]
    long = _recording(tmp_path / "long.wav", pieces)  # 13.8 s; digital silence from 7.5 to 12.5 s
    t = predictor.timeline(long)
    assert t.starts.tolist() == [0.0, 2.5, 5.0, 7.5, 8.8]  # every half clip, the last ending at the end
    assert t.ends.tolist() == [5.0, 7.5, 10.0, 12.5, 13.8] and t.duration == 13.8
    assert t.silent.tolist() == [False, False, False, True, False]
    rows = t.rows()
    assert rows[3]["label"] is None and rows[3]["probability"] is None and rows[3]["level_db"] == -120.0
    assert all(r["label"] in t.classes for r in rows[:3] + rows[4:])
    whole = predictor.predict_file(held_out[0])
    assert rows[0]["label"] == whole.top[0][0]  # the first window is the clip itself
    # a recording shorter than one window: one window, zero-padded, ending where the audio does
    short = predictor.timeline(_recording(tmp_path / "short.wav", [clip[: 2 * RATE]]))
    assert (short.starts.tolist(), short.ends.tolist()) == ([0.0], [2.0])
    hop = predictor.timeline(long, hop_seconds=4.0)
    assert hop.starts.tolist() == [0.0, 4.0, 8.0, 8.8]


def test_timeline_from_the_command_line(exported, held_out, tmp_path):
    single, _ = exported
    clip = load_audio(held_out[0], RATE)[: 5 * RATE]
    long = _recording(tmp_path / "long.wav", [clip, np.zeros(5 * RATE, np.float32), clip])
    done = _runtime_cli("predict", "--model", str(single.path), str(long), "--timeline")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "file,start,end,label,probability,level_db"
    assert [ln.split(",")[1:3] for ln in lines[1:]] == [["0.0", "5.0"], ["2.5", "7.5"], ["5.0", "10.0"],
                                                        ["7.5", "12.5"], ["10.0", "15.0"]]
    assert lines[3].split(",")[3:5] == ["", ""]  # the silent middle has no label
    assert main(["predict", "--model", str(single.path), str(long), "--timeline", "--out",
                 str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png")]) == 0
    windows = json.loads((tmp_path / "t.json").read_text())[0]["windows"]
    assert len(windows) == 5 and windows[2]["label"] is None and len(windows[0]["top"]) == 3
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (tmp_path / "t.json").read_text()
    done = _runtime_cli("predict", "--model", str(single.path), str(long), "--timeline", "--out", str(tmp_path / "t.json"))
    assert done.returncode == 2 and "already exists" in done.stderr
    assert (tmp_path / "t.json").read_text() == before


def test_predict_says_what_is_odd_about_an_input(exported, tmp_path, capsys):
    single, _ = exported
    silent = _recording(tmp_path / "silent.wav", [np.zeros(3 * RATE, np.float32)])
    narrow = _recording(tmp_path / "phone.wav", [tone(440, 8000, 5.0)], rate=8000)
    blip = _recording(tmp_path / "blip.wav", [np.array([0.5], np.float32)])
    assert main(["predict", "--model", str(single.path), str(silent), str(narrow), str(blip), "--json"]) == 0
    results = {r["file"]: r for r in json.loads(capsys.readouterr().out)}
    assert results[str(silent)]["silent"] and results[str(silent)]["top"] == []
    assert "silent" in results[str(silent)]["notes"][0]
    assert not results[str(narrow)]["silent"]
    assert "recorded at 8000 Hz, below the model's 16000 Hz" in results[str(narrow)]["notes"][0]
    assert results[str(blip)]["notes"] == ["only 0.00 s of audio; the model was trained on 5 s clips "
                                           "(zero-padded to one)"]
