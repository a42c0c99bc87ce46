"""escnet: environmental sound classification on ESC-50 and your own recordings.

The names below load on first use, so ``import escnet`` (and the ONNX runtime path) does not
import PyTorch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.8.0"

_LAZY = {
    "EscnetError": "escnet.errors",
    "TaskConfig": "escnet.config",
    "load_config": "escnet.config",
    "SoundClassifier": "escnet.models",
    "create_model": "escnet.models",
    "list_models": "escnet.models",
}

__all__ = ["EscnetError", "SoundClassifier", "TaskConfig", "__version__", "create_model",
           "list_models", "load_config"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'escnet' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
