"""Folds in parallel: ``train(..., parallel_folds=K)`` trains K folds at once, each in its own
process.

Each process is a worker, ``python -m escnet.engine.fold_worker RUNDIR FOLD``, which calls
:func:`escnet.engine.train.train_fold_of_run`: the same code as a sequential run, resuming the
same run directory and training one fold, so a parallel run has the same files, the same numbers
per fold and the same summary as a sequential one, and an interrupted one resumes every
unfinished fold. Workers report in JSON lines (:mod:`escnet.engine.fold_worker`); the parent
relays each epoch and writes the summary when all are done. The CPU's cores are shared out (each
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

from escnet.errors import EscnetError
from escnet.machine import PARENT_PID, available_cores
from escnet.runs import RunDir

WORKER = "escnet.engine.fold_worker"


def _environment(slot: int, k: int) -> dict[str, str]:
    import torch

    env = dict(os.environ)
    threads = str(max(1, available_cores() // k))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **{PARENT_PID: str(os.getpid())})
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    return env


def train_folds_in_parallel(run: RunDir, folds: list[str], k: int,
                            callbacks: Sequence[Callable[[dict], None]] = ()) -> dict[str, dict]:
    """Train ``folds`` of the run at ``run.path`` (created, config saved), ``k`` at a time.

    Returns:
        ``{fold: what the summary keeps of it}`` for every fold trained.

    Raises:
        EscnetError: a fold's process failed (the others are stopped; resuming continues).
    """
    messages: queue.Queue = queue.Queue()
    waiting, running, results = list(folds), {}, {}
    stderr: dict[str, list[str]] = {}

    def relay(fold: str, proc: subprocess.Popen) -> None:
        with proc.stdout, proc.stderr:  # closed once read: no pipe left to the garbage collector
            for line in proc.stdout:
                messages.put((fold, json.loads(line)))
            stderr[fold] = proc.stderr.read().splitlines()
        messages.put((fold, None))

    def start(slot: int) -> None:
        fold = waiting.pop(0)
        proc = subprocess.Popen([sys.executable, "-m", WORKER, str(run.path), fold],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_environment(slot, k))
        running[fold] = (proc, slot)
        threading.Thread(target=relay, args=(fold, proc), daemon=True).start()

    def stopped(fold: str, why: str) -> EscnetError:
        return EscnetError(f"fold {fold} stopped: {why}; the other folds were stopped too "
                           f"(resuming {run.path} continues it)")

    try:
        for slot in range(min(k, len(waiting))):
            start(slot)
        while running:
            fold, message = messages.get()
            if message is None:  # the worker's output has ended
                proc, slot = running.pop(fold)
                if proc.wait() != 0 or fold not in results:
                    raise stopped(fold, (stderr.get(fold) or [f"exit status {proc.returncode}"])[-1])
                if waiting:
                    start(slot)
            elif "epoch" in message:
                for callback in callbacks:
                    callback(message["epoch"])
            elif "done" in message:
                results[fold] = message["done"]
            else:
                raise stopped(fold, message["error"])
    finally:
        for proc, _ in running.values():
            proc.terminate()
        for proc, _ in running.values():
            proc.wait()
    return results
