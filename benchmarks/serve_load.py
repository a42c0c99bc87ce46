"""Load test of ``escnet serve`` on loopback: a fixed number of requests at each concurrency
level, then stop.

Starts a real ``escnet serve MODEL`` on 127.0.0.1, sends 5 s WAV clips (real ESC-50 clips at
their own 44.1 kHz with ``--data``) as raw request bodies from client threads, each on its own
keep-alive connection, and prints per level: requests/s, median and p99 latency, the CPU time
the server's event loop spent per request (loop ms), and counts by status; the server's
resident memory before and after all levels (the growth over them); then an overload run
against a second server with one inference thread and no queue, where requests beyond it must
be answered 503 (no timeouts).

    escnet export runs/fast-fold1 --out fast.onnx --quantize int8
    python benchmarks/serve_load.py --model fast.int8.onnx --data ../shared/data/esc50
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def _clips(data: str | None, count: int = 16) -> list[bytes]:
    """5 s mono 16-bit WAVs: ESC-50 clips of fold 1 at 44.1 kHz, or tones without ``--data``."""
    out = []
    if data:
        from escnet.config import TaskConfig
        from escnet.data.audio import load_audio
        from escnet.data.tables import load_table

        table = load_table(TaskConfig().replace({"data.data_dir": data}))
        paths = [p for p, f in zip(table.paths, table.folds, strict=True) if f == 1][:count]
        waves = [load_audio(p, 44_100, 5 * 44_100) for p in paths]
    else:
        t = np.arange(5 * 44_100) / 44_100
        waves = [(0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32) for i in range(count)]
    for wave in waves:
        buffer = io.BytesIO()
        sf.write(buffer, wave, 44_100, format="WAV", subtype="PCM_16")
        out.append(buffer.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: str, *args: str) -> tuple[subprocess.Popen, int]:
    """A real ``escnet serve`` once ready. Its log goes to a temporary file: a pipe nobody reads
    fills up under load (an access-log line a request) and stalls the server."""
    port = _free_port()
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115  (open as long as the server runs)
    proc = subprocess.Popen([sys.executable, "-m", "escnet", "serve", model, "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            sys.exit(f"escnet serve exited: {log.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("escnet serve did not become ready in 60 s")


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def _loop_cpu_s(pid: int) -> float:
    """CPU seconds spent so far by the server's main thread: its event loop (HTTP parsing,
    routing, responses), which every request passes through; inference runs on other threads."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _level(port: int, clips: list[bytes], concurrency: int, requests: int, timeout: float = 30.0,
           pid: int | None = None) -> dict:
    """``requests`` POSTs from ``concurrency`` threads; latency and status of each, and the
    server's event-loop CPU per request (with its ``pid``)."""
    latencies: list[float] = []
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        for i in counter:  # shared: each request taken once (next() on a range iterator is atomic)
            body = clips[i % len(clips)]
            tick = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": "audio/wav"})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
            except TimeoutError:
                status = "timeout"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            except OSError as err:
                status = type(err).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            with lock:
                latencies.append(time.perf_counter() - tick)
                statuses[status] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    loop_cpu = _loop_cpu_s(pid) if pid else float("nan")
    tick = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - tick
    loop_cpu = (_loop_cpu_s(pid) if pid else float("nan")) - loop_cpu
    ms = 1e3 * np.array(latencies)
    return {"concurrency": concurrency, "requests": requests, "rps": requests / wall,
            "loop_ms": 1e3 * loop_cpu / requests,
            "median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)),
            "statuses": dict(sorted(statuses.items()))}


def _row(r: dict) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
    return (f"{r['concurrency']:>11} {r['requests']:>8} {r['rps']:>10.1f} {r['median_ms']:>10.1f} "
            f"{r['p99_ms']:>8.1f} {r['loop_ms']:>8.2f}  {statuses}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an .onnx export, a run folder or a .pt file")
    parser.add_argument("--data", help="ESC-50 folder: send its fold-1 clips (default: tones)")
    parser.add_argument("--levels", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=800, help="requests per level")
    parser.add_argument("--threads", type=int, default=0, help="server inference threads (0: per core)")
    args = parser.parse_args()
    clips = _clips(args.data)
    levels = [int(x) for x in args.levels.split(",")]
    from escnet.machine import machine_description

    print(f"machine: {machine_description()}")
    print(f"model: {args.model}; {len(clips)} clips of 5 s, 44.1 kHz 16-bit WAV "
          f"({len(clips[0]) / 1e3:.0f} kB each), raw request bodies, keep-alive connections")

    proc, port = _start(args.model, "--threads", str(args.threads))
    try:
        _level(port, clips, 2, 50)  # warm-up: sessions, allocator, connection paths
        before = _rss_mb(proc.pid)
        print(f"\n{'concurrency':>11} {'requests':>8} {'req/s':>10} {'median ms':>10} {'p99 ms':>8} "
              f"{'loop ms':>8}  status")
        results = [_level(port, clips, c, args.requests, pid=proc.pid) for c in levels]
        for r in results:
            print(_row(r))
        after = _rss_mb(proc.pid)
        total = sum(r["requests"] for r in results)
        fivexx = sum(v for r in results for k, v in r["statuses"].items() if not k.startswith(("2", "4")))
        print(f"\nserver memory: {before:.0f} MB after warm-up, {after:.0f} MB after {total} requests "
              f"({100 * (after - before) / before:+.1f} %); 5xx or failed requests: {fivexx}")
    finally:
        proc.terminate()
        proc.wait(30)

    proc, port = _start(args.model, "--threads", "1", "--queue", "0")
    try:
        r = _level(port, clips, 16, 400, pid=proc.pid)
        print("\noverload (server with 1 inference thread and no queue, 16 clients):")
        print(_row(r))
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
