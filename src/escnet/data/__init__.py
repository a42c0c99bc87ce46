"""Data: dataset tables, audio decoding, the waveform cache, PyTorch datasets, downloads.

Names load on first use: decoding audio (:mod:`escnet.data.audio`) needs no PyTorch.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "load_audio": "escnet.data.audio",
    "build_waveform_cache": "escnet.data.cache",
    "collate": "escnet.data.datasets",
    "ClipTable": "escnet.data.tables",
    "load_table": "escnet.data.tables",
    "make_splits": "escnet.data.tables",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'escnet.data' has no attribute {name!r}")
    return getattr(import_module(_LAZY[name]), name)
