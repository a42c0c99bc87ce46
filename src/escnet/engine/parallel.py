"""Folds in parallel: ``escnet train ... --parallel-folds K`` trains K folds at once, each in its
own process.

Each process is ``escnet train --resume RUNDIR --fold-worker FOLD``: the same code as a
sequential run, resuming the same run directory and training one fold, so a parallel run has the
same files, the same numbers per fold and the same summary as a sequential one, and an
interrupted one resumes every unfinished fold. The parent starts the processes, relays each
epoch's line, and writes the summary when all are done. The CPU's cores are shared out (each
process gets ``cores // K`` threads: oversubscribed threads spin and slow every process); with
several GPUs the processes take them in turn.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

import torch

from escnet.config import available_cores
from escnet.errors import EscnetError
from escnet.runs import RunDir

WORKER_FLAG = "--fold-worker"


def _environment(slot: int, k: int) -> dict[str, str]:
    env = dict(os.environ)
    threads = str(max(1, available_cores() // k))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    return env


def train_folds_in_parallel(run: RunDir, folds: list[str], k: int,
                            callbacks: Sequence[Callable[[dict], None]] = ()) -> None:
    """Train ``folds`` of the run at ``run.path`` (created, config saved), ``k`` at a time.

    Raises:
        EscnetError: a fold's process failed (the others are stopped; ``--resume`` continues).
    """
    lines: queue.Queue = queue.Queue()
    waiting, running = list(folds), {}
    errors: dict[str, list[str]] = {}

    def relay(fold: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            lines.put((fold, line))
        errors[fold] = proc.stderr.read().splitlines()
        lines.put((fold, None))

    def start(slot: int) -> None:
        fold = waiting.pop(0)
        proc = subprocess.Popen([sys.executable, "-m", "escnet", "train", "--resume", str(run.path),
                                 WORKER_FLAG, fold], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=_environment(slot, k))
        running[fold] = (proc, slot)
        threading.Thread(target=relay, args=(fold, proc), daemon=True).start()

    try:
        for slot in range(min(k, len(waiting))):
            start(slot)
        while running:
            fold, line = lines.get()
            if line is not None:
                for callback in callbacks:
                    callback(json.loads(line))
                continue
            proc, slot = running.pop(fold)
            if proc.wait() != 0:
                said = [ln for ln in errors.get(fold, []) if ln.startswith("escnet: error:")]
                why = said[-1].removeprefix("escnet: error: ") if said else \
                    (errors.get(fold) or [f"exit status {proc.returncode}"])[-1]
                raise EscnetError(f"fold {fold} stopped: {why}; the other folds were stopped too "
                                  f"(continue with escnet train --resume {run.path})")
            if waiting:
                start(slot)
    finally:
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            proc.wait()
