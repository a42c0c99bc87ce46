"""Export trained models to one ONNX file, waveform in, class probabilities out.

The graph holds the whole path after decoding: log-mel (:class:`MatmulLogMel`, the run's own
featurizer in matrix products), backbone(s), softmax. Its metadata holds what a user of the file
needs (:class:`~escnet.deploy.onnx_model.ModelInfo`), so the file alone is enough.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import escnet
from escnet.config import TaskConfig
from escnet.deploy.onnx_model import INPUT, OUTPUTS, ModelInfo, OnnxModel, import_onnxruntime
from escnet.deploy.torch_model import TorchModel
from escnet.errors import EscnetError
from escnet.files import atomic_write, new_output
from escnet.runs import RunData, RunDir
from escnet.runs.data import with_data
from escnet.transforms.features import MatmulLogMel

OPSET = 18
PARITY = 1e-4
"""Largest probability difference from PyTorch that an export may have (checked on every one)."""
KNOWN_PARITY = 0.02
"""Largest unknown-score difference (plus 0.1 % of it): a rank-based score (``energy+knn``) may
move by one validation clip's share when a float rounds the other way."""


class ExportError(EscnetError):
    """A model that cannot be exported, or an export that does not match its model."""


class WaveformClassifier(nn.Module):
    """The exported graph: ``waveform (batch, samples)`` → ``probabilities, logits``
    ``(batch, classes)``, the ``logmel`` the model sees ``(batch, n_mels, frames)`` (for
    display; computing it is part of the graph anyway), the unknown score ``known (batch,)``
    and, for models with an AudioSet head, its ``tags (batch, 527)``, and for models with a frame
    head, its ``frames (batch, steps, classes)``.

    The models and their calibration are :class:`~escnet.deploy.torch_model.Calibrated`, as
    PyTorch prediction runs them.
    """

    def __init__(self, reference: TorchModel) -> None:
        super().__init__()
        self.logmel = MatmulLogMel(reference.models[0].featurizer)
        # NCHW weights: the exporter and ONNX Runtime pick their own layouts
        self.calibrated = reference.calibrated.to(memory_format=torch.contiguous_format).cpu()
        self.tagging = bool(reference.info.tag_names)
        self.framing = reference.info.frame_model

    @property
    def outputs(self) -> list[str]:
        return list(OUTPUTS[:4]) + [OUTPUTS[4]] * self.tagging + [OUTPUTS[5]] * self.framing

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.logmel(waveform)
        probs, logits, known, tags, frames = self.calibrated(x)
        return (probs, logits, x, known) + ((tags,) if self.tagging else ()) + \
            ((frames,) if self.framing else ())


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    max_difference: float
    """Largest probability difference between ONNX Runtime and PyTorch on the check clips."""
    int8_path: Path | None = None
    int8_info: ModelInfo | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    """On the held-out clips: ``float32`` (ONNX Runtime) and ``int8``; for an ensemble,
    ``int8_agreement``: the share of clips where int8 and float32 agree on the top class."""
    notes: list[str] = field(default_factory=list)


def _checkpoints(source: Path, fold: str | None, ensemble: bool) -> list[Path]:
    """The checkpoints a run folder or ``.pt`` file stands for (:meth:`RunDir.models`): one
    fold's, or with ``ensemble`` every finished fold's."""
    if not source.exists():
        raise EscnetError(f"{source}: no such run folder or checkpoint")
    if not source.is_dir():
        if fold is not None or ensemble:
            raise EscnetError(f"{source}: a fold or an ensemble is chosen among a run's folds; this "
                              "is one checkpoint")
        return [source]
    run = RunDir(source)
    run.read_config()  # a clear error if it is not a run
    if ensemble:
        if fold is not None:
            raise EscnetError("a fold and an ensemble: choose one of them")
        return run.models()
    return [run.model(fold)]


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """The exporter's progress lines, warnings and logs, kept for an error message instead."""
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _reason(err: BaseException) -> str:
    """What an exporter error says is wrong, in one line: its "Exception summary" when it has
    one (torch.onnx's own errors put the cause there), else its first line."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
    lines = [ln for ln in lines if ln]
    if "## Exception summary" in lines[:-1]:
        summary = lines[lines.index("## Exception summary") + 1]
        return re.sub(r"^<class '[\w.]+'>: ", "", summary).split(". Failure message")[0][:300]
    return (lines or [type(err).__name__])[0][:300]


def to_onnx(module: WaveformClassifier, clip_samples: int, model_name: str) -> bytes:
    """Trace ``module`` with ``torch.export`` and translate it to ONNX bytes with dynamic batch
    and length axes, or a length fixed at ``clip_samples`` where the model needs one (the
    runtime only ever feeds clip-length windows)."""
    try:
        import onnxscript  # noqa: F401  (the exporter needs it; say so before it does)
    except ImportError:
        raise ExportError("export needs onnx and onnxscript: pip install 'escnet[export]'") from None
    example = torch.zeros(2, clip_samples)  # batch 2: a batch of 1 would be specialised
    dim = torch.export.Dim
    reason = ""
    for length in (dim.AUTO, dim.STATIC):
        with _quiet(), tempfile.TemporaryDirectory() as tmp:
            try:
                program = torch.onnx.export(module.eval(), (example,), input_names=[INPUT],
                                            output_names=module.outputs, opset_version=OPSET,
                                            dynamic_shapes=({0: dim.AUTO, 1: length},), dynamo=True,
                                            external_data=False, optimize=True, verify=False)
                program.save(f"{tmp}/model.onnx", external_data=False)
                return Path(f"{tmp}/model.onnx").read_bytes()
            except Exception as err:  # the exporter raises many kinds; all mean "cannot export"
                reason = _reason(err)
    raise ExportError(f"model {model_name} cannot be exported to ONNX: {reason}")


def _write_onnx(data: bytes, path: Path, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name, proto.producer_version = "escnet", escnet.__version__
    atomic_write(path, lambda f: f.write(proto.SerializeToString()))


def _held_out(config: TaskConfig, info: ModelInfo, data_dir: str | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Waveforms and labels of the clips the models never trained on, and of the others
    (for calibration), opened as the run opened them (:class:`RunData`) and checked to be the
    model's classes: ``(test, test_labels, train, train_labels)``. An ensemble has no held-out
    clips: its test set is empty."""
    data = RunData.open(with_data(config, data_dir, f"model {info.model}"))
    data.check_classes(info.classes, f"model {info.model}")
    folds = info.folds
    if len(folds) == 1 and folds[0] in data.splits:
        train, test = data.splits[folds[0]].train, data.splits[folds[0]].test
    else:
        train, test = np.arange(len(data.table)), np.zeros(0, int)
    return data.waves[test], data.table.labels[test], data.waves[train], data.table.labels[train]


def _run_batches(model, waves: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([model(np.asarray(waves[i : i + batch], np.float32))
                           for i in range(0, len(waves), batch)])


def quantize_int8(float_path: Path, out: Path, calibration: np.ndarray) -> None:
    """Static int8 quantization (QDQ, per-channel weights) of the convolutions and linear
    layers, with activation ranges calibrated on ``calibration`` clips. The log-mel stays
    float32: its matrix products span a dynamic range of 10⁶ that 8 bits cannot hold.

    A graph with depthwise convolutions (the mn models) keeps them and its first convolution in
    float32 and calibrates ranges at the 99.999th percentile instead of the extremes: quantized
    like the rest, the fine-tuned mn04 lost several points of held-out accuracy, so it loses
    half of one (docs/RESULTS.md, "Pretrained").
    """
    import_onnxruntime()
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # one calibration clip per call
        def __init__(self) -> None:
            self.clips = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            clip = next(self.clips, None)
            return None if clip is None else {INPUT: np.asarray(clip, np.float32)[None]}

    reader = Reader()
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        convs = [n for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
        depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
        mobile = {"nodes_to_exclude": [convs[0].name, *depthwise],
                  "calibrate_method": CalibrationMethod.Percentile} if depthwise else {}
        quantize_static(str(prepared), str(Path(tmp) / "int8.onnx"), reader,
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "Gemm"],
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, **mobile)
        data = (Path(tmp) / "int8.onnx").read_bytes()
    atomic_write(out, lambda f: f.write(data))


def export(source: str | Path, out: str | Path, fold: str | None = None, ensemble: bool = False,
           quantize: str | None = None, data_dir: str | None = None,
           calibration_clips: int = 200) -> ExportResult:
    """Export a run's fold model (``fold``), all its fold models averaged (``ensemble``), or a
    ``.pt`` checkpoint to ``out`` (``.onnx``), and with ``quantize="int8"`` also an int8 copy
    ``OUT.int8.onnx``, calibrated on ``calibration_clips`` training clips.

    Every export is checked against PyTorch on real clips when the run's data is at hand (on
    seeded noise otherwise): probabilities within :data:`PARITY`, else :class:`ExportError`.
    Neither file may exist yet.
    """
    source, out = Path(source), Path(out)
    if quantize not in (None, "int8"):
        raise EscnetError(f"quantize={quantize}: the only choice is int8")
    new_output(out, "out", (".onnx",))
    int8_path = out.with_suffix(".int8.onnx") if quantize else None
    if int8_path is not None:
        new_output(int8_path, "out", (".onnx",))
    reference = TorchModel(_checkpoints(source, fold, ensemble))
    info = reference.info
    config = reference.config
    module = WaveformClassifier(reference)
    result_notes = []
    data = to_onnx(module, info.clip_samples, info.model)
    extra = {"escnet.source": str(source.resolve()), "escnet.config": _config_json(config)}
    try:
        test, labels, train, train_labels = _held_out(config, info, data_dir)
    except EscnetError as err:
        if quantize:
            raise ExportError(f"quantize=int8: calibrates on the run's training clips: {err}") from None
        rng = np.random.default_rng(0)
        test, labels, train = (rng.standard_normal((8, info.clip_samples)).astype(np.float32) * 0.1,
                               None, None)
        result_notes.append(f"the run's data is not at hand ({err}); checked against PyTorch on noise")
    _write_onnx(data, out, info.metadata(extra))
    try:
        onnx_model = OnnxModel(out)
        check = test[:64] if len(test) else train[:64]
        diff = float(np.abs(_run_batches(onnx_model, check) - _run_batches(reference, check)).max())
        if diff > PARITY:
            raise ExportError(f"{out}: ONNX Runtime's probabilities differ from PyTorch's by {diff:.2g} "
                              f"(more than {PARITY:g}); the export is not used")
        ours, theirs = onnx_model.score(check[:16]), reference.score(check[:16])
        if ours.known is not None and theirs.known is not None and \
                np.any(np.abs(ours.known - theirs.known) > KNOWN_PARITY + 1e-3 * np.abs(theirs.known)):
            raise ExportError(f"{out}: ONNX Runtime's unknown scores differ from PyTorch's; the "
                              "export is not used")
        if ours.frames is not None and float(np.abs(ours.frames - theirs.frames).max()) > PARITY:
            raise ExportError(f"{out}: ONNX Runtime's frame probabilities differ from PyTorch's by "
                              f"more than {PARITY:g}; the export is not used")
        result = ExportResult(out, info, diff, notes=result_notes)
        if quantize:
            result.int8_path = int8_path
            _add_int8(result, out, int8_path, test, labels, train, train_labels, calibration_clips, extra)
    except BaseException:
        for path in (out, int8_path):  # nothing half-checked is left behind
            if path is not None:
                path.unlink(missing_ok=True)
        raise
    return result


def _add_int8(result: ExportResult, float_path: Path, int8_path: Path, test: np.ndarray,
              labels: np.ndarray | None, train: np.ndarray, train_labels: np.ndarray, clips: int,
              extra: dict[str, str]) -> None:
    """Quantize, measure the int8 copy beside the float one, and label it with its accuracy."""
    rng = np.random.default_rng(0)
    # calibration clips: seeded, spread over the classes in proportion
    picks = np.sort(rng.permutation(len(train))[: min(clips, len(train))])
    quantize_int8(float_path, int8_path, np.asarray(train[picks], np.float32))
    float_probs = _run_batches(OnnxModel(float_path), test)
    int8_probs = _run_batches(OnnxModel(int8_path), test)
    info = result.info
    if len(test):
        result.accuracy = {"float32": float(np.mean(float_probs.argmax(1) == labels)),
                           "int8": float(np.mean(int8_probs.argmax(1) == labels))}
        int8_acc = result.accuracy["int8"]
    else:  # an ensemble: every clip trained some fold model, so only agreement is honest
        rest = np.setdiff1d(np.arange(len(train)), picks)[:400]
        f, q = (_run_batches(OnnxModel(p), train[rest]) for p in (float_path, int8_path))
        result.accuracy = {"int8_agreement": float(np.mean(f.argmax(1) == q.argmax(1)))}
        int8_acc = None
    result.int8_info = ModelInfo(**{**info.__dict__, "precision": "int8",
                                    "held_out_accuracy": int8_acc})
    import onnx

    proto = onnx.load(str(int8_path))
    _write_onnx(proto.SerializeToString(), int8_path, result.int8_info.metadata(
        {**extra, "escnet.float32_accuracy": f"{result.accuracy.get('float32', '')}",
         "escnet.calibration_clips": str(len(picks))}))


def _config_json(config: TaskConfig) -> str:
    return json.dumps(config.to_dict(), default=str)


