"""Run an exported escnet ONNX file with ONNX Runtime: no PyTorch needed.

The file alone is enough: :func:`escnet.deploy.export.export` writes the class names, sample
rate and clip length into its metadata, and the log-mel is part of the graph.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from escnet.errors import CheckpointError, EscnetError
from escnet.machine import available_cores
from escnet.models.calibration import Calibration

FORMAT = "2"
"""Version of the metadata layout below (2: the calibration as one JSON object; 1: its parts as
``escnet.calibrated``, ``escnet.unknown_score`` and ``escnet.unknown_threshold``, still read);
a runtime refuses files of a newer one."""
INPUT, OUTPUTS = "waveform", ("probabilities", "logits", "logmel", "known", "tags", "frames")
"""``logmel`` (the model's input features, for display) is optional: files exported by escnet
0.3.0 lack it; so are ``known`` (the unknown score, :class:`Scores`) and ``tags`` (an AudioSet
head's), which files of escnet before 0.4 lack, and ``frames`` (a frame head's per-frame
probabilities), which only frame models have."""


class Row(NamedTuple):
    """What a model says about one window (a row of :class:`Scores`)."""

    probabilities: np.ndarray
    """``(classes,)``."""
    known: float | None
    tags: np.ndarray | None
    frames: np.ndarray | None = None
    """``(steps, classes)``: a frame model's per-frame probabilities over the window."""


class Scores(NamedTuple):
    """What a model says about windows ``(n, samples)``."""

    probabilities: np.ndarray
    """``(n, classes)``, calibrated when the model is."""
    known: np.ndarray | None
    """``(n,)``: how much each window sounds like the model's classes (its unknown score,
    ``ModelInfo.unknown_score``; higher: more known), or ``None`` when the model has none."""
    tags: np.ndarray | None
    """``(n, len(ModelInfo.tag_names))``: the AudioSet head's tag probabilities, or ``None``."""
    frames: np.ndarray | None = None
    """``(n, steps, classes)``: for a frame model (:attr:`ModelInfo.frame_model`), each class's
    probability (its own yes/no, so several may be high at once) in each of ``steps`` equal
    frames of the window; else ``None``."""

    def rows(self) -> list[Row]:
        """One :class:`Row` per window."""
        return [Row(p, None if self.known is None else float(self.known[i]),
                    None if self.tags is None else self.tags[i],
                    None if self.frames is None else self.frames[i])
                for i, p in enumerate(self.probabilities)]


@dataclass(frozen=True)
class ModelInfo:
    """What an exported file says about itself (all of it in the ONNX metadata)."""

    classes: list[str]
    sample_rate: int
    """Hz: the rate the graph's waveform input must have."""
    clip_samples: int
    """Samples of the clips the model was trained on; windows of this length are scored."""
    model: str
    precision: str
    """``float32`` or ``int8``."""
    held_out_accuracy: float | None
    """The run's accuracy on clips it never trained on (for ``int8``, measured on the int8
    file); ``None`` when none could be measured (an ensemble of all folds)."""
    folds: list[str]
    escnet_version: str
    calibration: Calibration = field(default_factory=Calibration)
    """The model's (an ensemble's: :meth:`Calibration.mean`): the graph applies its
    temperatures; a window or file whose mean known-score (:attr:`Scores.known`) is below its
    threshold is answered "unknown"."""
    tag_names: list[str] = field(default_factory=list)
    """Names of the AudioSet head's outputs (empty: no such head)."""
    frame_model: bool = False
    """Whether the model has a frame head (:attr:`Scores.frames`): events are then read off
    its frames (:mod:`escnet.deploy.events`)."""
    frame_seconds: float | None = None
    """A frame model: seconds from one frame to the next, frame ``k`` of a window covering
    ``[k, k + 1) · frame_seconds`` from its start (the last may run past its end); ``None``
    (a file from escnet 0.8): a window's frames divide it equally."""
    frame_window: float | None = None
    """A frame model: seconds of audio it learned to read at once (its training scenes); its
    events are read off windows this long, unpadded. ``None``: its clip length."""

    @property
    def clip_seconds(self) -> float:
        return self.clip_samples / self.sample_rate

    @property
    def calibrated(self) -> bool:
        """Whether the probabilities are calibrated and the model can answer "unknown"."""
        return self.calibration.calibrated

    @property
    def unknown_score(self) -> str:
        """What :attr:`Scores.known` is (``energy``, ``msp``, ...), or empty."""
        return self.calibration.unknown_score if self.calibrated else ""

    @property
    def unknown_threshold(self) -> float | None:
        return self.calibration.unknown_threshold if self.calibrated else None

    def public(self) -> dict:
        """What a server says about the model (``GET /v1/model``)."""
        return {**asdict(self), "calibration": self.calibration.to_dict(),
                "clip_seconds": self.clip_seconds, "calibrated": self.calibrated,
                "unknown_score": self.unknown_score, "unknown_threshold": self.unknown_threshold}

    def metadata(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The ONNX ``metadata_props`` that describe this model (strings only)."""
        acc = "" if self.held_out_accuracy is None else f"{self.held_out_accuracy:.6f}"
        return {"escnet.format": FORMAT, "escnet.version": self.escnet_version,
                "escnet.model": self.model, "escnet.classes": json.dumps(self.classes),
                "escnet.sample_rate": str(self.sample_rate),
                "escnet.clip_samples": str(self.clip_samples),
                "escnet.clip_seconds": f"{self.clip_seconds:g}", "escnet.precision": self.precision,
                "escnet.held_out_accuracy": acc, "escnet.folds": json.dumps(self.folds),
                "escnet.calibration": json.dumps(self.calibration.to_dict(), allow_nan=False),
                "escnet.tag_names": json.dumps(self.tag_names),
                "escnet.frame_model": json.dumps(self.frame_model),
                "escnet.frame_seconds": json.dumps(self.frame_seconds),
                "escnet.frame_window": json.dumps(self.frame_window), **(extra or {})}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> ModelInfo:
        if "escnet.format" not in meta:
            raise CheckpointError(f"{path}: an ONNX model, but not an escnet export (no escnet "
                                  "metadata); export a run with `escnet export`")
        if meta["escnet.format"] not in ("1", FORMAT):
            raise CheckpointError(f"{path}: escnet ONNX format {meta['escnet.format']!r}; this escnet "
                                  f"reads formats 1 to {FORMAT} (upgrade escnet or re-export)")
        try:
            acc = meta.get("escnet.held_out_accuracy", "")
            info = cls(classes=[str(c) for c in json.loads(meta["escnet.classes"])],
                       sample_rate=int(meta["escnet.sample_rate"]),
                       clip_samples=int(meta["escnet.clip_samples"]), model=meta["escnet.model"],
                       precision=meta.get("escnet.precision", "float32"),
                       held_out_accuracy=float(acc) if acc else None,
                       folds=[str(f) for f in json.loads(meta.get("escnet.folds", "[]"))],
                       escnet_version=meta.get("escnet.version", "?"),
                       calibration=_calibration(meta),
                       tag_names=[str(t) for t in json.loads(meta.get("escnet.tag_names", "[]"))],
                       frame_model=json.loads(meta.get("escnet.frame_model", "false")) is True,
                       frame_seconds=_seconds(meta, "escnet.frame_seconds"),
                       frame_window=_seconds(meta, "escnet.frame_window"))
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path}: damaged escnet metadata ({type(err).__name__}: {err})") from None
        if not all(np.isfinite(v) for v in info.calibration.thresholds.values()) or \
                not (np.isfinite(info.calibration.temperature) and info.calibration.temperature > 0):
            raise CheckpointError(f"{path}: damaged escnet metadata (calibration "
                                  f"{info.calibration.to_dict()})")
        if not info.classes or info.sample_rate <= 0 or info.clip_samples <= 0:
            raise CheckpointError(f"{path}: damaged escnet metadata (no classes, or a rate or clip "
                                  "length that is not positive)")
        return info


def _seconds(meta: dict[str, str], key: str) -> float | None:
    """An optional length in a file's metadata: a positive, finite number of seconds, or
    ``None`` (absent or null)."""
    value = json.loads(meta.get(key, "null"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e4:
        raise ValueError(f"{key} is {value!r}, not a positive number of seconds")
    return float(value)


def _calibration(meta: dict[str, str]) -> Calibration:
    """The calibration in a file's metadata: format 2's object, or format 1's parts (a file
    from escnet 0.4 to 0.7: calibrated or not, by one score and its threshold)."""
    if "escnet.calibration" in meta:
        values = json.loads(meta["escnet.calibration"])
        if not isinstance(values, dict):
            raise ValueError("escnet.calibration is not an object")
        return Calibration.from_dict(values)
    threshold = meta.get("escnet.unknown_threshold", "")
    if json.loads(meta.get("escnet.calibrated", "false")) is not True or not threshold:
        return Calibration()
    score = meta.get("escnet.unknown_score", "")
    return Calibration(unknown_score=score, thresholds={score: float(threshold)})


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise EscnetError("running an ONNX model needs ONNX Runtime: pip install 'escnet[runtime]'") from None
    onnxruntime.set_default_logger_severity(3)  # errors only; its warnings are not the user's
    return onnxruntime


class OnnxModel:
    """An exported model: ``model(windows (n, clip_samples) float32) → (n, classes)``
    probabilities, on ONNX Runtime's CPU provider.

    A batch is scored one window per call, ``threads`` calls at a time (each call on one
    thread): for a model this small that is faster than one call over the batch on several
    threads, whose activations no longer fit in the cache (``benchmarks/inference_speed.py``;
    docs/RESULTS.md, "Inference speed").

    Args:
        path: the ``.onnx`` file.
        threads: windows scored at once (default: the CPUs this process may use).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if self.path.is_dir() or not self.path.exists():
            raise CheckpointError(f"{self.path}: model file not found")
        self.threads = threads or available_cores()
        self.pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None
        options = ort.SessionOptions()
        options.inter_op_num_threads = options.intra_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own classes for every kind of bad file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{self.path}: not a readable ONNX model, or a damaged or cut-off "
                                  f"one ({reason[:200]})") from None
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map,
                                            self.path)
        inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = {o.name for o in self.session.get_outputs()}
        if inputs != [INPUT] or OUTPUTS[0] not in self.outputs:
            raise CheckpointError(f"{self.path}: escnet metadata, but inputs {inputs} and outputs "
                                  f"{sorted(self.outputs)} (expected {INPUT!r} → {OUTPUTS[0]!r})")

        # what the graph can say beyond probabilities; a file whose metadata promises more than
        # its graph gives is refused now, not at its first window
        self.wanted = [OUTPUTS[0]] + [o for o in OUTPUTS[3:] if o in self.outputs]
        if (self.info.unknown_threshold is not None and OUTPUTS[3] not in self.outputs) or \
                (self.info.tag_names and OUTPUTS[4] not in self.outputs) or \
                (self.info.frame_model and OUTPUTS[5] not in self.outputs):
            raise CheckpointError(f"{self.path}: its metadata names an unknown threshold, tags or "
                                  f"frames, but its graph has no {OUTPUTS[3]!r}, {OUTPUTS[4]!r} or "
                                  f"{OUTPUTS[5]!r} output")
        if self.info.frame_model and isinstance(self.session.get_inputs()[0].shape[-1], int):
            raise CheckpointError(f"{self.path}: a frame model whose graph takes only "
                                  f"{self.info.clip_seconds:g} s windows (its events are read off windows "
                                  "of any length); re-export it")
        self._check_graph()

    def _check_graph(self) -> None:
        """Run the graph once on a silent window: a graph that is not the one its metadata
        describes (another model's, edited by hand) fails here, in one line, not mid-file."""
        try:
            got = self.score(np.zeros((1, self.info.clip_samples), np.float32))
        except Exception as err:  # ORT raises its own classes for a graph that cannot run
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"{self.path}: its graph does not run on a {self.info.clip_seconds:g} s "
                                  f"window as its metadata says ({reason[:160]})") from None
        shapes = [(got.probabilities, len(self.info.classes)), (got.tags, len(self.info.tag_names))]
        if any(a is not None and a.shape != (1, n) for a, n in shapes) or \
                (got.known is not None and got.known.shape != (1,)) or \
                (got.frames is not None and (got.frames.ndim != 3
                                             or got.frames.shape[2] != len(self.info.classes))):
            raise CheckpointError(f"{self.path}: its graph's outputs do not match its metadata "
                                  f"({len(self.info.classes)} classes); re-export the model")

    def run(self, windows: np.ndarray) -> list[np.ndarray]:
        """One call of the graph on ``windows`` ``(n, samples)``, on one thread: the outputs
        :attr:`wanted` (probabilities first)."""
        return self.session.run(self.wanted, {INPUT: np.ascontiguousarray(windows, np.float32)})

    def logmel(self, window: np.ndarray) -> np.ndarray | None:
        """The log-mel the model sees for one window ``(samples,)``: ``(n_mels, frames)``, or
        ``None`` for a file exported without it."""
        if OUTPUTS[2] not in self.outputs:
            return None
        return self.session.run([OUTPUTS[2]], {INPUT: np.ascontiguousarray(window[None], np.float32)})[0][0]

    def score(self, windows: np.ndarray) -> Scores:
        """Probabilities, unknown scores and tags of ``windows`` ``(n, samples)``."""
        if self.pool is None or len(windows) == 1:
            parts = self.run(windows)
        else:
            runs = list(self.pool.map(self.run, np.split(windows, len(windows))))
            parts = [np.concatenate(p) for p in zip(*runs, strict=True)]
        got = dict(zip(self.wanted, parts, strict=True))
        return Scores(got[OUTPUTS[0]], got.get(OUTPUTS[3]), got.get(OUTPUTS[4]), got.get(OUTPUTS[5]))

    def __call__(self, windows: np.ndarray) -> np.ndarray:
        """``(n, samples)`` → probabilities ``(n, classes)``."""
        return self.score(windows).probabilities
