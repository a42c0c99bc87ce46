"""The machine a process runs on: its cores, its devices, and malloc settings for long runs.

Not settings (those are :mod:`escnet.config`): facts about this machine that several stages
need. Importing this module imports no PyTorch (the ONNX runtime path uses
:func:`available_cores`); the functions that need it import it when called.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys
import threading
import time
from pathlib import Path

from escnet.errors import ConfigError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and ``taskset``
    narrow), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_device(device: str, what: str = "device") -> str:
    """``auto`` → ``cuda`` when present, else ``cpu``; ``cpu``, ``cuda`` or ``cuda:N`` as given,
    or a :class:`ConfigError` naming ``what`` when it is not one of those or not on this machine."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ConfigError(f"{what}={device}: must be auto, cpu, cuda or cuda:N")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(device.partition(":")[2] or 0) >= count:
        have = f"{count} CUDA device(s)" if count else f"no CUDA device (torch {torch.__version__})"
        raise ConfigError(f"{what}={device}: this machine has {have}; use cpu or auto")
    return device


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the system.

    A training step allocates and frees the same tens of MB of activations every batch. With
    glibc's defaults each such block is mapped fresh from the kernel and zero-filled page by page
    (about 90 000 page faults per second and a quarter of the CPU time in the kernel, measured
    during a cnn10 run), and the cost grows as the process ages. Raising the mmap threshold to
    its 32 MB maximum and never trimming keeps those blocks in the heap (PyTorch's CPU tuning
    guide suggests jemalloc or tcmalloc for the same reason; this needs no extra library). The
    process keeps its peak heap size until it exits. No-op (returns False) off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def machine_description() -> str:
    """CPU model, thread count and torch version, recorded with every result."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


PARENT_PID = "ESCNET_PARENT_PID"
"""The environment variable through which a process that starts workers names itself."""


def die_with_parent(every: float = 1.0) -> None:
    """In a worker process started with :data:`PARENT_PID` set: exit as soon as that parent is
    gone, however it went (a ``kill -9`` leaves no signal to pass on), checking every
    ``every`` seconds; without the variable, nothing. A fold worker left training would write
    the run beside whatever resumes it; a server worker left serving would hold the port."""
    if PARENT_PID not in os.environ:
        return
    parent = int(os.environ[PARENT_PID])

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)

    if os.getppid() != parent:
        os._exit(3)
    threading.Thread(target=watch, daemon=True, name="escnet-die-with-parent").start()
