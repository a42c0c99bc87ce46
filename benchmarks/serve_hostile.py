"""Hostile load on ``escnet serve``: does a well-behaved client still get its answers?

Starts a real ``escnet serve MODEL`` on 127.0.0.1 (``--threads 2 --queue 8 --body-seconds 5
--rate-limit 10``: a server facing clients one does not know) and measures a well-behaved client
(one keep-alive connection from 127.0.0.1, 5 s WAV clips, one request at a time, ``--pause``
0.2 s between them: within the rate limit): first alone, then during bounded hostile phases
(each kind of attacker alone, then all at once):

- 40 connections trickle their bodies 10 bytes at a time (each answered 408 after 5 s, then
  reconnecting),
- 4 clients ask for ``hop=1e-9`` on 60 s recordings (work bounded by ``--max-windows``: 422),
- 4 clients send 64 kB headers to `/healthz` (as fast as they are answered),
- 80 clients (10× the queue) flood valid requests,
- 2 live streams (``/v1/stream``) send audio as fast as the socket takes it (slowed to 4× real
  time by the server, never dropped: each ends by sending ``"end"`` and counts as ``complete``
  when the server scored every second it sent),
- 2 live streams send digital silence at real time (closed after ``--idle-seconds``, 1008);

then sends SIGTERM during a long request and times the server's exit. The attackers run in a
process of their own (so the measured client never waits for their share of a Python
interpreter) and connect from other loopback addresses, as clients on other machines would
(127.0.0.2-5 for the flood, 20 clients each, 127.0.0.9-12 for the streams; ``--one-address``
puts every attacker on 127.0.0.1, the well-behaved client's own address, where no server can
tell them apart).

Prints the well-behaved client's median and p99 latency alone and under attack (and their
ratio, with a 90 % bootstrap interval over the phase's requests: ``--requests 1000`` narrows
it; and the p99 of what the answers say they waited for an inference thread, ``waited_ms``),
every status each kind of client got (a 500 is a failure), and the seconds from SIGTERM
to exit.

    escnet export runs/fast --fold 1 --out fast.onnx
    python benchmarks/serve_hostile.py --model fast.onnx
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import json
import multiprocessing
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


def _post(port: int, body: bytes, query: str = "", timeout: float = 60,
          source: str = "127.0.0.1") -> tuple[str, float]:
    tick = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
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


def _well_behaved(port: int, clips: list[bytes], requests: int,
                  pause: float) -> tuple[list[float], collections.Counter, list[float]]:
    """One request at a time on one keep-alive connection (as a browser or ``requests.Session``
    sends them), opened again after an error: the latencies of the answered, what each answer
    says it waited for an inference thread (``waited_ms``, seconds), and every status."""
    latencies, statuses, waits = [], collections.Counter(), []
    conn = None
    for i in range(requests):
        tick = time.perf_counter()
        try:
            conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/v1/classify", body=clips[i % len(clips)],
                         headers={"Content-Type": "audio/wav"})
            response = conn.getresponse()
            body = response.read()
            status = str(response.status)
        except OSError as err:
            status, conn = type(err).__name__, None
        statuses[status] += 1
        if status == "200":
            latencies.append(time.perf_counter() - tick)
            waits.append(json.loads(body)["waited_ms"] / 1e3)
        time.sleep(pause)
    return latencies, statuses, waits


def _until(stop, work) -> None:
    while not stop.is_set():
        work()


KINDS = {"slow body": 40, "hop=1e-9": 4, "64 kB header": 4, "flood": 80, "fast stream": 2,
         "silent stream": 2}
"""Attackers of each kind (clients at once)."""


def _attack(port: int, clip: bytes, kinds: list[str], one_address: bool, stop, results) -> None:
    """The attackers of ``kinds`` at once, on threads of this (child) process, until ``stop``;
    puts ``{kind: {status: count}}`` on ``results``."""
    statuses: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    lock = threading.Lock()
    long_clip = _wav(60)

    def address(n: int) -> str:
        return "127.0.0.1" if one_address else f"127.0.0.{n}"

    def count(kind: str, status: str) -> None:
        with lock:
            statuses[kind][status] += 1

    def connect(source: str, timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))

    def slow_body(n: int) -> None:
        try:
            with connect(address(6), 30) as s:
                s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
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

    def tiny_hop(n: int) -> None:
        count("hop=1e-9", _post(port, long_clip, "?hop=1e-9", source=address(7))[0])

    def huge_header(n: int) -> None:
        try:
            with connect(address(8), 10) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
                reply = s.recv(64)
            count("64 kB header", reply.split(b" ")[1].decode() if reply else "closed")
        except OSError as err:
            count("64 kB header", type(err).__name__)

    def flood(n: int) -> None:  # 20 clients from each of 4 addresses
        count("flood", _post(port, clip, source=address(2 + n % 4))[0])

    def stream(kind: str, n: int, samples: np.ndarray, seconds_per_frame: float | None) -> None:
        """A live stream sending ``samples`` (16 kHz float32) frame after frame, as fast as the
        socket takes them (``seconds_per_frame`` None) or at real time, reading every message,
        until ``stop``; then ``"end"``."""
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect as ws_connect

        frame, sent, said = samples.astype("<f4").tobytes(), 0.0, []
        try:
            # no keepalive pings, as a browser sends none: a slowed stream's pings wait behind its
            # own audio in the connection (GUARANTEES.md, the service)
            with ws_connect(f"ws://127.0.0.1:{port}/v1/stream?sample_rate=16000&format=f32",
                            sock=connect(address(9 + n), 10), open_timeout=10, max_size=None,
                            ping_interval=None) as ws:
                def read() -> None:
                    try:
                        while True:
                            said.append(json.loads(ws.recv()))
                    except ConnectionClosed:
                        pass

                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                while not stop.is_set():
                    ws.send(frame)
                    sent += len(samples) / 16000
                    if seconds_per_frame:
                        time.sleep(seconds_per_frame)
                ws.send("end")
                reader.join(60)
            ended = [m for m in said if m.get("type") == "end"]
            count(kind, "complete" if ended and abs(ended[0]["seconds"] - sent) < 1e-3 else
                  f"ended at {ended[0]['seconds']:.0f} of {sent:.0f} s" if ended else "no end")
        except ConnectionClosed as closed:
            rcvd = closed.rcvd
            count(kind, f"closed {rcvd.code}" if rcvd else "dropped")
            time.sleep(0.5)

    def fast_stream(n: int) -> None:
        stream("fast stream", n, np.random.default_rng(n).standard_normal(32000) * 0.1, None)

    def silent_stream(n: int) -> None:
        stream("silent stream", n + 2, np.zeros(1600), 0.1)

    work = {"slow body": slow_body, "hop=1e-9": tiny_hop, "64 kB header": huge_header, "flood": flood,
            "fast stream": fast_stream, "silent stream": silent_stream}
    attackers = [threading.Thread(target=_until, args=(stop, lambda n=n, w=work[kind]: w(n)))
                 for kind in kinds for n in range(KINDS[kind])]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join()
    results.put({kind: dict(counter) for kind, counter in statuses.items()})


def _under_attack(port: int, clips: list[bytes], kinds: list[str], requests: int, pause: float,
                  one_address: bool) -> tuple[list[float], collections.Counter, list[float], dict]:
    """The well-behaved client's latencies, statuses and waits for a thread while ``kinds``
    attack, and what the attackers got."""
    context = multiprocessing.get_context("fork")
    stop, results = context.Event(), context.Queue()
    attack = context.Process(target=_attack, args=(port, clips[0], kinds, one_address, stop, results))
    attack.start()
    try:
        time.sleep(2)  # the attack under way
        latencies, statuses, waits = _well_behaved(port, clips, requests, pause)
    finally:
        stop.set()
    got = results.get(timeout=60)
    attack.join()
    return latencies, statuses, waits, got


def _ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(1e3 * np.array(latencies), q)) if latencies else float("nan")


def _ratio_interval(alone: list[float], loaded: list[float], q: float = 99, draws: int = 2000
                    ) -> tuple[float, float]:
    """A 90 % bootstrap interval of ``loaded``'s ``q``-th percentile over ``alone``'s (each
    resampled with replacement, seed 0): how far the run's own sample of requests lets the ratio
    move. The p99 of 300 requests is their third slowest, so it moves a lot; a run-to-run spread
    of the machine comes on top."""
    rng = np.random.default_rng(0)
    a, b = np.asarray(alone), np.asarray(loaded)
    ratios = (np.percentile(rng.choice(b, (draws, len(b))), q, axis=1)
              / np.percentile(rng.choice(a, (draws, len(a))), q, axis=1))
    low, high = np.percentile(ratios, [5, 95])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", help="ESC-50 folder for real clips (default: tones)")
    parser.add_argument("--requests", type=int, default=300, help="well-behaved requests per phase")
    parser.add_argument("--one-address", action="store_true",
                        help="attack from 127.0.0.1, the well-behaved client's address")
    parser.add_argument("--rate-limit", type=float, default=10.0,
                        help="the server's --rate-limit, requests a second per address (default 10; "
                        "0: none)")
    parser.add_argument("--pause", type=float, default=0.2,
                        help="seconds between the well-behaved client's requests (default 0.2)")
    parser.add_argument("--phases", default=",".join([*KINDS, "all"]),
                        help="the hostile phases to run, comma-separated, of: "
                        f"{', '.join(KINDS)}, all (default: every one, then all at once)")
    args = parser.parse_args()
    phase_kinds = {**{k: [k] for k in KINDS}, "all": list(KINDS)}
    chosen = [p.strip() for p in args.phases.split(",")]
    if unknown := [p for p in chosen if p not in phase_kinds]:
        parser.error(f"--phases: unknown phase {unknown[0]!r}; known: {', '.join(phase_kinds)}")

    clips = _clips(args.data)
    proc, port = _start(args.model, "--threads", "2", "--queue", "8", "--body-seconds", "5",
                        "--rate-limit", str(args.rate_limit))
    phases: list[tuple[str, list[float], collections.Counter, list[float]]] = []
    attacked: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    try:
        phases.append(("alone", *_well_behaved(port, clips, args.requests, args.pause)))
        for kinds in (phase_kinds[p] for p in chosen):
            *measured, got = _under_attack(port, clips, kinds, args.requests, args.pause,
                                           args.one_address)
            phases.append((" + ".join(kinds) if len(kinds) == 1 else "all at once", *measured))
            for kind, counts in got.items():
                attacked[kind].update(counts)

        # SIGTERM during a long request (60 s, hop 0.1 s: 551 windows)
        answer: list = []
        body = _wav(60)  # made first: made in the thread, it was not always sent before the signal
        running = threading.Thread(
            target=lambda: answer.append(_post(port, body, "?timeline=true&hop=0.1")))
        running.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        signalled = time.perf_counter()
        proc.wait(60)
        gone = time.perf_counter() - signalled
        running.join()
    finally:
        if proc.poll() is None:
            proc.kill()

    print(f"attackers from {'127.0.0.1, the same address' if args.one_address else '127.0.0.2-12'}; "
          f"well-behaved client from 127.0.0.1; server --rate-limit {args.rate_limit:g}:")
    alone_p99 = _ms(phases[0][1], 99)
    print(f"{'while':16s} {'median ms':>10s} {'p99 ms':>8s} {'p99/alone':>9s} "
          f"{'90 % interval':>14s} {'waited p99':>10s}  statuses")
    for name, latencies, statuses, waits in phases:
        low, high = _ratio_interval(phases[0][1], latencies) if latencies else (np.nan, np.nan)
        print(f"{name:16s} {_ms(latencies, 50):10.1f} {_ms(latencies, 99):8.1f} "
              f"{_ms(latencies, 99) / alone_p99:8.2f}× {low:6.2f}-{high:.2f}× {_ms(waits, 99):10.1f}  "
              f"{dict(statuses)}")
    print("what the attackers got (all phases):")
    for kind, counter in attacked.items():
        print(f"  {kind:13s} {dict(counter)}")
    fivehundreds = sum(c.get("500", 0) for c in [*attacked.values(), *(p[2] for p in phases)])
    print(f"500 responses: {fivehundreds}")
    print(f"SIGTERM during a long request: answered {answer[0][0] if answer else 'nothing'}, "
          f"server gone after {gone:.1f} s (target ≤ 10 s)")


if __name__ == "__main__":
    main()
