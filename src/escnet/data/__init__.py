"""Data: dataset tables, audio decoding, the waveform cache, PyTorch datasets, downloads."""

from escnet.data.audio import load_audio
from escnet.data.cache import build_waveform_cache
from escnet.data.datasets import collate
from escnet.data.tables import ClipTable, load_table, make_splits

__all__ = ["ClipTable", "build_waveform_cache", "collate", "load_audio", "load_table", "make_splits"]
