"""Models: the registry (``create_model``), every backbone, the :class:`SoundClassifier`, and the
:class:`~escnet.models.calibration.Calibration` a trained model carries.

Names load on first use: :mod:`escnet.models.calibration` needs no PyTorch, and the runtime
reads it. Model modules register themselves when the registry first needs them
(:data:`escnet.models.registry.MODEL_MODULES`).
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "SoundClassifier": "escnet.models.classifier",
    "Calibration": "escnet.models.calibration",
    "count_macs": "escnet.models.registry",
    "count_parameters": "escnet.models.registry",
    "create_model": "escnet.models.registry",
    "list_models": "escnet.models.registry",
    "model_arguments": "escnet.models.registry",
    "register_model": "escnet.models.registry",
    "resolve_args": "escnet.models.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'escnet.models' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
