"""Hostile load on ``escnet serve``: does a well-behaved client still get its answers?

Starts a real ``escnet serve MODEL`` on 127.0.0.1 (``--threads 2 --queue 8 --body-seconds 5``)
and measures a well-behaved client (one connection, 5 s WAV clips, one request at a time): first
alone, then during a bounded hostile phase in which, all at once,

- 40 connections trickle their bodies 10 bytes at a time (each answered 408 after 5 s, then
  reconnecting),
- 4 clients ask for ``hop=1e-9`` on 60 s recordings (work bounded by ``--max-windows``: 422),
- 4 clients send 64 kB headers,
- 80 clients (10× the queue) flood valid requests;

then sends SIGTERM during a long request and times the server's exit. Prints the well-behaved
client's median and p99 latency alone and under load (and their ratio), every status each kind
of client got (a 500 is a failure), and the seconds from SIGTERM to exit.

    escnet export runs/fast --fold 1 --out fast.onnx
    python benchmarks/serve_hostile.py --model fast.onnx
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import signal
import socket
import threading
import time

import numpy as np
import soundfile as sf
from serve_load import _clips, _start


def _wav(seconds: float, rate: int = 44_100) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="WAV",
             subtype="PCM_16")
    return buffer.getvalue()


def _post(port: int, body: bytes, query: str = "", timeout: float = 60) -> tuple[str, float]:
    tick = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", f"/v1/classify{query}", body=body, headers={"Content-Type": "audio/wav"})
        response = conn.getresponse()
        response.read()
        status = str(response.status)
    except OSError as err:
        status = type(err).__name__
    finally:
        conn.close()
    return status, time.perf_counter() - tick


def _well_behaved(port: int, clips: list[bytes], requests: int) -> tuple[list[float], collections.Counter]:
    latencies, statuses = [], collections.Counter()
    for i in range(requests):
        status, seconds = _post(port, clips[i % len(clips)])
        statuses[status] += 1
        if status == "200":
            latencies.append(seconds)
        time.sleep(0.02)
    return latencies, statuses


def _until(stop: threading.Event, work) -> None:
    while not stop.is_set():
        work()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="ESC-50 folder for real clips (default: tones)")
    parser.add_argument("--requests", type=int, default=150, help="well-behaved requests per phase")
    args = parser.parse_args()

    clips = _clips(args.data)
    proc, port = _start(args.model, "--threads", "2", "--queue", "8", "--body-seconds", "5")
    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    lock = threading.Lock()

    def count(kind: str, status: str) -> None:
        with lock:
            statuses[kind][status] += 1

    try:
        alone, alone_statuses = _well_behaved(port, clips, args.requests)
        stop = threading.Event()
        long_clip = _wav(60)

        def trickle() -> None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
                    reply = b""
                    while not stop.is_set() and not reply:
                        s.sendall(bytes(10))
                        s.settimeout(0.5)
                        try:
                            reply = s.recv(64)
                        except TimeoutError:
                            continue
                    count("slow body", reply.split(b" ")[1].decode() if reply else "cut short")
            except OSError as err:
                count("slow body", type(err).__name__)

        def tiny_hop() -> None:
            count("hop=1e-9", _post(port, long_clip, "?hop=1e-9")[0])

        def huge_header() -> None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
                    reply = s.recv(64)
                count("64 kB header", reply.split(b" ")[1].decode() if reply else "closed")
            except OSError as err:
                count("64 kB header", type(err).__name__)

        def flood() -> None:
            count("flood", _post(port, clips[0])[0])

        attackers = ([threading.Thread(target=_until, args=(stop, trickle)) for _ in range(40)]
                     + [threading.Thread(target=_until, args=(stop, tiny_hop)) for _ in range(4)]
                     + [threading.Thread(target=_until, args=(stop, huge_header)) for _ in range(4)]
                     + [threading.Thread(target=_until, args=(stop, flood)) for _ in range(80)])
        for t in attackers:
            t.start()
        time.sleep(2)  # the attack under way
        loaded, loaded_statuses = _well_behaved(port, clips, args.requests)
        stop.set()
        for t in attackers:
            t.join()

        # SIGTERM during a long request (60 s, hop 0.1 s: 551 windows)
        answer: list = []
        running = threading.Thread(
            target=lambda: answer.append(_post(port, long_clip, "?timeline=true&hop=0.1")))
        running.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        proc.wait(60)
        gone = time.perf_counter() - signalled
        running.join()
    finally:
        if proc.poll() is None:
            proc.kill()

    def p(latencies: list[float], q: float) -> float:
        return float(np.percentile(1e3 * np.array(latencies), q)) if latencies else float("nan")

    print(f"well-behaved client, alone:     median {p(alone, 50):6.1f} ms, p99 {p(alone, 99):6.1f} ms, "
          f"statuses {dict(alone_statuses)}")
    print(f"well-behaved client, attacked:  median {p(loaded, 50):6.1f} ms, p99 {p(loaded, 99):6.1f} ms, "
          f"statuses {dict(loaded_statuses)}")
    print(f"p99 under attack / alone: {p(loaded, 99) / p(alone, 99):.2f}× (target ≤ 3×)")
    for kind, counter in statuses.items():
        print(f"  {kind:13s} {dict(counter)}")
    fivehundreds = sum(c.get("500", 0) for c in [*statuses.values(), alone_statuses, loaded_statuses])
    print(f"500 responses: {fivehundreds}")
    print(f"SIGTERM during a long request: answered {answer[0][0] if answer else 'nothing'}, "
          f"server gone after {gone:.1f} s (target ≤ 10 s)")


if __name__ == "__main__":
    main()
