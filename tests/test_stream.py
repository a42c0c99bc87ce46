"""Live: the /v1/stream WebSocket (the real app, FastAPI's test client) and `escnet listen`
with a pipe, over a soundscape whose events are known."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import FrameToneModel, ToneModel, local_client, runtime_cli, tone_scene, tones

from escnet.deploy.events import EventSettings, detect_events

fastapi = pytest.importorskip("fastapi", reason="escnet serve needs the serve extra")
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from escnet.serve.app import ServeSettings, create_app  # noqa: E402

SETTINGS = "hop=0.25&window=0.5&smooth=1"


def _client(**settings):
    app = create_app(ServeSettings("tones", threads=1, **settings), model=ToneModel())
    client = local_client(app)
    client.__enter__()
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def client():
    c = _client(max_streams=2, idle_seconds=1.0)
    yield c
    c.__exit__(None, None, None)


def _drain(ws) -> list[dict]:
    out = []
    while True:
        message = json.loads(ws.receive_text())
        out.append(message)
        if message["type"] in ("end", "error"):
            return out


def test_a_stream_gets_scores_every_hop_and_each_event_once_like_the_file(client, tmp_path):
    wav, truth = tone_scene(16000)
    with client.websocket_connect(f"/v1/stream?sample_rate=16000&format=s16&{SETTINGS}") as ws:
        ready = json.loads(ws.receive_text())
        assert ready["type"] == "ready" and ready["classes"] == ["low", "high"]
        pcm = (np.clip(wav, -1, 1) * 32767).astype("<i2")
        for k in range(0, pcm.size, 1600):  # 0.1 s frames, as a microphone sends them
            ws.send_bytes(pcm[k:k + 1600].tobytes())
        ws.send_text("end")
        messages = _drain(ws)
    scores = [m for m in messages if m["type"] == "scores"]
    assert len(scores) >= 36 and scores[1]["time"] == 0.5  # 9 s at 0.25 s
    events = [m for m in messages if m["type"] == "event"]
    assert [(m["label"], m["state"]) for m in events] == [
        ("low", "start"), ("low", "end"), ("high", "start"), ("high", "end")]
    assert messages[-1]["type"] == "end"
    # the same audio as a file gives the same events
    path = tmp_path / "scene.wav"
    sf.write(path, wav, 16000, subtype="PCM_16")
    from_file = detect_events(ToneModel(), path, EventSettings(window=0.5, smooth=1))
    ended = [m for m in events if m["state"] == "end"]
    assert [(m["label"], m["start"], m["time"]) for m in ended] == \
        [(e.label, round(e.start, 3), round(e.end, 3)) for e in from_file]
    for m, (label, start, end) in zip(ended, truth, strict=True):
        assert m["label"] == label and abs(m["start"] - start) <= 0.5 and abs(m["time"] - end) <= 0.5


def test_a_frame_models_stream_says_both_classes_it_hears_at_once_and_a_clip_models_one():
    """``ready`` says which kind of model it is; each ``scores`` message's ``heard`` lists the
    classes the tracker read: both tones where they overlap (a frame model: FrameToneModel's
    frames, 0.9 where a tone sounds), the clip model's averaged best class otherwise."""
    wav = tones(8, [(1.0, 5.0, 500), (3.0, 6.0, 2000)], 8000, np.random.default_rng(0))
    for model in (FrameToneModel(), ToneModel()):
        app = create_app(ServeSettings("tones", threads=1), model=model)
        with local_client(app) as client, client.websocket_connect(
                "/v1/stream?sample_rate=8000&format=f32&smooth=1") as ws:
            ready = json.loads(ws.receive_text())
            for k in range(0, wav.size, 800):  # 0.1 s frames
                ws.send_bytes(wav[k:k + 800].astype("<f4").tobytes())
            ws.send_text("end")
            messages = _drain(ws)
        assert messages[-1]["type"] == "end"
        scores = [m for m in messages if m["type"] == "scores"]
        assert ready["frame_model"] is model.info.frame_model
        heard = {m["time"]: {h["label"]: h["probability"] for h in m["heard"]} for m in scores}
        both = [t for t, h in heard.items() if h.get("low", 0) >= 0.5 and h.get("high", 0) >= 0.5]
        assert all(len(h) <= 3 and min(h.values(), default=1) >= 0.1 for h in heard.values())
        if model.info.frame_model:  # both while both sound (the frame before the newest: 0.25 s late)
            assert both and min(both) >= 3.3 and max(both) <= 5.6
            assert all(list(h) == ["low"] for t, h in heard.items() if 1.6 <= t <= 2.8)
        else:
            assert not both


@pytest.mark.parametrize("query, frames, code, words", [
    ("", [], 1008, "sample_rate"),
    ("?sample_rate=abc", [], 1008, "not a whole number"),
    ("?sample_rate=1000000", [], 1008, "8000 to 192000"),
    ("?sample_rate=16000&format=mp3", [], 1008, "f32 or s16"),
    ("?sample_rate=16000&hop=nan", [], 1008, "event setting hop"),
    ("?sample_rate=16000&volume=3", [], 1008, "unknown parameter"),
    ("?sample_rate=16000&format=s16", [b"\x00\x01\x02"], 1003, "whole number"),
    ("?sample_rate=16000&format=f32", [np.array([np.nan], "<f4").tobytes()], 1007, "NaN"),
    ("?sample_rate=16000&format=f32", [bytes(4 * 16000 * 3)], 1009, "at most"),
    ("?sample_rate=16000&format=f32", ["hello"], 1003, '"end"'),
])
def test_bad_streams_are_closed_with_a_code_and_a_reason(client, query, frames, code, words):
    with client.websocket_connect(f"/v1/stream{query}") as ws:
        for frame in frames:
            if json.loads(ws.receive_text())["type"] == "ready":
                (ws.send_text if isinstance(frame, str) else ws.send_bytes)(frame)
        error = json.loads(ws.receive_text())
        assert error["type"] == "error" and error["code"] == code and words in error["error"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == code and words in closed.value.reason


def test_stream_limits_idle_clients_and_too_many_streams(client):
    with client.websocket_connect("/v1/stream?sample_rate=16000") as a, \
            client.websocket_connect("/v1/stream?sample_rate=16000") as b:
        assert json.loads(a.receive_text())["type"] == json.loads(b.receive_text())["type"] == "ready"
        with client.websocket_connect("/v1/stream?sample_rate=16000") as c:
            error = json.loads(c.receive_text())
            assert error["code"] == 1013 and "2 live streams" in error["error"]
        tick = time.monotonic()
        idle = json.loads(a.receive_text())  # no audio for idle_seconds (1 s): closed
        assert idle["code"] == 1008 and "no audio for 1 s" in idle["error"]
        assert time.monotonic() - tick < 3


def test_listen_reads_a_wav_pipe_and_raw_pcm_and_writes_events_as_they_happen(five_class_exports, esc50,
                                                                               tmp_path):
    """`arecord ... | escnet listen --input -` with the exported five-class model, torch-free:
    a dog clip in 8 s of quiet noise. (The model is weak, 6 epochs on 80 clips: its calibrated
    probabilities stay low, so the thresholds are too; what is checked is that a pipe, raw PCM
    and the file give the same events.)"""
    from escnet.data.audio import load_audio

    model = str(five_class_exports[0].path)
    rng = np.random.default_rng(0)
    wav = (1e-3 * rng.standard_normal(8 * 16000)).astype(np.float32)
    dog = load_audio(sorted((esc50 / "audio").glob("2-*-A-0.*"))[0], 16000)  # a training fold's: known
    wav[16000:16000 + dog.size] += dog
    path = tmp_path / "scene.wav"
    sf.write(path, wav, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"  # as arecord writes to a pipe: length unknown
    out = tmp_path / "events.csv"
    run = subprocess.run(runtime_cli("listen", "--model", model, "--input", "-", "--out", str(out),
                                     "--on", "0.2", "--off", "0.1"),
                         input=bytes(data), capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    lines = run.stdout.decode().splitlines()
    assert lines and all((" start " in line) != (" end " in line) for line in lines)
    assert sum(" start " in line for line in lines) == sum(" end " in line for line in lines)
    rows = out.read_text().splitlines()
    assert rows[0] == "wall_clock,stream_seconds,state,label,time,start,confidence"
    assert len(rows) == len(lines) + 1
    # expected: the same events as the file gives
    files = subprocess.run(runtime_cli("predict", "--model", model, str(path), "--events", "--json",
                                       "--on", "0.2", "--off", "0.1"), capture_output=True, timeout=120)
    events = json.loads(files.stdout.decode().splitlines()[0])["events"]
    assert [r.split(",")[3] for r in rows[1:] if ",end," in r] == [e["label"] for e in events]
    # raw PCM needs its rate; the same audio then gives the same lines (but for the wall clock)
    raw = subprocess.run(runtime_cli("listen", "--model", model, "--input", "-", "--rate", "16000",
                                     "--format", "s16", "--on", "0.2", "--off", "0.1"),
                         input=bytes(data[44:]), capture_output=True, timeout=120)  # the WAV's samples
    assert [line.split(maxsplit=1)[1] for line in raw.stdout.decode().splitlines()] == \
        [line.split(maxsplit=1)[1] for line in lines]
    # refusals, in one line each, exit 2
    for args, words in ((["--input", "-"], "MP3 audio; a stream must be WAV or raw PCM"),
                        (["--input", "-", "--rate", "16000"], "MP3 audio"),  # never read as PCM
                        (["--input", "-", "--out", str(out)], "already exists"),
                        (["--input", str(path), "--rate", "8000"], "describe raw PCM")):
        bad = subprocess.run(runtime_cli("listen", "--model", model, *args), input=b"ID3\x04" + bytes(99),
                             capture_output=True, timeout=60)
        assert bad.returncode == 2 and words in bad.stderr.decode(), bad.stderr.decode()
        assert "Traceback" not in bad.stderr.decode()


def test_listen_without_a_microphone_says_how_to_pipe_audio_in(five_class_exports):
    run = subprocess.run([sys.executable, "-m", "escnet", "listen", "--model",
                          str(five_class_exports[0].path)], capture_output=True, timeout=60)
    assert run.returncode == 2
    err = run.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "microphone" in err[0] and "--input -" in err[0]


def test_listen_follows_a_url_and_a_file_at_real_time(five_class_exports, tmp_path):
    """A WAV over HTTP (a local server on 127.0.0.1) gives the lines a file gives; --realtime
    plays a file no faster than real time."""
    import functools
    import http.server
    import threading

    model = str(five_class_exports[0].path)
    wav, _ = tone_scene(16000)
    sf.write(tmp_path / "scene.wav", wav[: 3 * 16000], 16000, subtype="PCM_16")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/scene.wav"
        runs = [subprocess.run(runtime_cli("listen", "--model", model, "--input", source, "--on", "0.05",
                                           "--off", "0.01", *extra), capture_output=True, timeout=120)
                for source, extra in ((url, []), (str(tmp_path / "scene.wav"), [])) ]
        for run in runs:
            assert run.returncode == 0, run.stderr.decode()
        assert [line.split(maxsplit=1)[1] for line in runs[0].stdout.decode().splitlines()] == \
            [line.split(maxsplit=1)[1] for line in runs[1].stdout.decode().splitlines()]
        tick = time.monotonic()
        slow = subprocess.run(runtime_cli("listen", "--model", model, "--input", url, "--realtime"),
                              capture_output=True, timeout=120)
        assert slow.returncode == 0 and time.monotonic() - tick >= 3.0
        missing = subprocess.run(runtime_cli("listen", "--model", model, "--input", url + ".nope"),
                                 capture_output=True, timeout=60)
        assert missing.returncode == 2 and "cannot open it" in missing.stderr.decode()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_a_service_stop_ends_open_events_and_flushes_the_log(stop, five_class_exports, esc50,
                                                                     tmp_path):
    """SIGINT (Ctrl-C) or SIGTERM (a service manager's stop) while a sound is still going: its
    end is printed and written, exit 0."""
    import signal

    from escnet.data.audio import load_audio

    model = str(five_class_exports[0].path)
    # rain from a training fold (fold 2): a long sound the fold-1 model knows (a held-out clip
    # may be answered "unknown", which is never an event)
    clip = load_audio(sorted((esc50 / "audio").glob("2-*-A-10.*"))[0], 16000)
    path = tmp_path / "long.wav"
    sf.write(path, np.tile(clip, 6), 16000, subtype="PCM_16")  # 30 s of it
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(runtime_cli("listen", "--model", model, "--input", str(path), "--realtime",
                                        "--out", str(out), "--on", "0.2", "--off", "0.1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as a terminal delivers it, even when the tests run in a
                            # background job (which starts its children with SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 25  # the scene lasts 30 s: interrupt it while an event is open
    while time.monotonic() < deadline and not (out.exists() and '"start"' in out.read_text()):
        time.sleep(0.2)
    assert '"start"' in out.read_text(), "no event started in 25 s of rain"
    proc.send_signal(getattr(signal, stop))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped; open events ended" in stderr and "Traceback" not in stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and rows[-1]["state"] == "end"
    assert sum(r["state"] == "start" for r in rows) == sum(r["state"] == "end" for r in rows)
    assert len(stdout.splitlines()) == len(rows)


def test_many_tiny_frames_are_slowed_down_not_served_at_any_rate(client, monkeypatch):
    """A frame costs a call whatever it holds: past the burst, a stream gets FRAME_RATE a second."""
    from escnet.serve import stream

    monkeypatch.setattr(stream, "BURST", 0.5)

    def send(frames: int) -> float:
        tick = time.monotonic()
        with client.websocket_connect("/v1/stream?sample_rate=16000&format=f32") as ws:
            json.loads(ws.receive_text())
            for _ in range(frames):
                ws.send_bytes(np.zeros(1, "<f4").tobytes())
            ws.send_text("end")
            assert _drain(ws)[-1]["type"] == "end"
        return time.monotonic() - tick

    assert send(300) >= 2.4  # 50 frames of burst, then 100 a second
    monkeypatch.setattr(stream, "FRAME_RATE", 10**9)
    assert send(300) < 2.0


def test_a_stalled_url_and_a_damaged_wav_header_are_one_line_each(five_class_exports, tmp_path):
    """A server that sends a WAV header and then nothing: the read times out into one line;
    a WAV header of 0 Hz names the stream."""
    import socket
    import threading

    model = str(five_class_exports[0].path)
    header = bytearray(44)
    header[0:4], header[8:16], header[16:20] = b"RIFF", b"WAVEfmt ", (16).to_bytes(4, "little")
    header[20:22], header[22:24], header[34:36] = (1).to_bytes(2, "little"), (1).to_bytes(2, "little"), \
        (16).to_bytes(2, "little")  # PCM, mono, 16-bit, and a rate of 0
    header[36:40], header[40:44] = b"data", b"\xff\xff\xff\xff"
    bad = subprocess.run(runtime_cli("listen", "--model", model, "--input", "-"), input=bytes(header),
                         capture_output=True, timeout=60)
    assert bad.returncode == 2 and "standard input: sample rate 0 Hz" in bad.stderr.decode()

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def stall() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        header[24:28] = (16000).to_bytes(4, "little")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n\r\n" + bytes(header) + bytes(3200))
        stop.wait(30)  # then nothing more: the client's read times out
        conn.close()

    threading.Thread(target=stall, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/live.wav"
        tick = time.monotonic()
        run = subprocess.run(runtime_cli("listen", "--model", model, "--input", url, "--timeout", "1"),
                             capture_output=True, timeout=60)
        err = run.stderr.decode()
        assert run.returncode == 2 and "reading the stream failed" in err and "Traceback" not in err
        assert time.monotonic() - tick < 10  # given up after --timeout 1, not the default 10 s
    finally:
        stop.set()
        listener.close()
    for bad in ("0", "nan", "1e9"):
        run = subprocess.run(runtime_cli("listen", "--model", model, "--input", url, "--timeout", bad),
                             capture_output=True, timeout=60)
        assert run.returncode == 2 and f"--timeout {float(bad)}: must be above 0" in run.stderr.decode()


def test_a_live_stream_cannot_ask_for_a_tiny_hop(client):
    with client.websocket_connect("/v1/stream?sample_rate=16000&hop=0.01") as ws:
        error = json.loads(ws.receive_text())
    assert error["code"] == 1008 and "at least 0.1 s" in error["error"]


def test_audio_a_real_model_cannot_score_closes_the_stream_and_fails_the_file(five_class_exports, tmp_path):
    """Samples of 1e30 make the model's probabilities NaN: a one-line refusal naming the input,
    never silently no events."""
    model = five_class_exports[0].path
    settings = ServeSettings(str(model), threads=1)
    with local_client(create_app(settings)) as real:
        deadline = time.monotonic() + 30
        while real.get("/readyz").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        with real.websocket_connect("/v1/stream?sample_rate=16000&format=f32") as ws:
            json.loads(ws.receive_text())
            ws.send_bytes(np.full(16000, 1e30, "<f4").tobytes())
            error = json.loads(ws.receive_text())
    assert error["code"] == 1007 and "far beyond full scale" in error["error"]
    path = tmp_path / "huge.wav"
    sf.write(path, np.full(16000, 1e30, np.float32), 16000, subtype="FLOAT")
    run = subprocess.run(runtime_cli("predict", "--model", str(model), str(path), "--events"),
                         capture_output=True, timeout=60)
    assert run.returncode == 2 and "huge.wav: samples reach" in run.stderr.decode()
    # a bad event setting is said once, before any file (not hidden behind the files' errors)
    (tmp_path / "text.wav").write_text("not audio")
    run = subprocess.run(runtime_cli("predict", "--model", str(model), str(tmp_path / "text.wav"),
                                     str(path), "--events", "--on", "2"), capture_output=True, timeout=60)
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and "event setting --on 2.0: must be a probability" in lines[0], lines


def test_listen_on_a_terminal_says_to_pipe_audio_in(five_class_exports):
    """`escnet listen --input -` typed without a pipe would wait forever on the keyboard."""
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        run = subprocess.run(runtime_cli("listen", "--model", str(five_class_exports[0].path), "--input", "-"),
                             stdin=follower, capture_output=True, timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    assert run.returncode == 2 and "standard input is a terminal" in run.stderr.decode()


def test_rate_limit_spaces_one_address_and_answers_429_in_json_beyond_a_second():
    client = _client(rate_limit=4)  # readiness polling spent part of this address's burst
    time.sleep(1.5)  # a fresh burst of 4
    answers: list = []

    def ask() -> None:
        tick = time.monotonic()
        r = client.get("/healthz")
        answers.append((r.status_code, time.monotonic() - tick, r))

    try:
        threads = [threading.Thread(target=ask) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        client.__exit__(None, None, None)
    statuses = sorted(a[0] for a in answers)
    # 4 at once, 4 more within the next second (spaced 0.25 s), the other 4 refused after 1 s
    assert statuses.count(200) == 8 and statuses.count(429) == 4, statuses
    waited = sorted(s for code, s, _ in answers if code == 200)
    assert waited[3] < 0.2 and waited[4] > 0.2 and waited[-1] > 0.9, waited
    refused = [r for code, s, r in answers if code == 429]
    assert all(r.headers["retry-after"] == "1" and "rate limit of 4" in r.json()["error"] for r in refused)
    assert all(s >= 0.95 for code, s, _ in answers if code == 429)


def test_a_client_that_reads_nothing_is_closed_after_idle_seconds():
    """A peer whose receive window stays shut (every send waits): the stream is closed with
    1008 after the timeout, and saying why cannot hang either."""
    import asyncio

    from escnet.deploy.events import Stream
    from escnet.serve.stream import Closed, _close, _send

    class NeverReads:
        async def send_text(self, text: str) -> None:
            await asyncio.Event().wait()

        async def close(self, code: int, reason: str) -> None:
            await asyncio.Event().wait()

    wav, _ = tone_scene()
    live = Stream(ToneModel(), EventSettings(hop=0.25, window=0.5, smooth=1))
    update = live.feed(wav[: 8000 * 2])
    assert update.scores

    async def scenario() -> float:
        tick = time.monotonic()
        with pytest.raises(Closed) as closed:
            await _send(NeverReads(), live, update, 0.3)
        assert closed.value.code == 1008 and "read no message for 0.3 s" in closed.value.reason
        await _close(NeverReads(), closed.value.code, closed.value.reason)  # gives up, no hang
        return time.monotonic() - tick

    async def bounded() -> float:  # a missing timeout fails here instead of hanging the suite
        return await asyncio.wait_for(scenario(), 10)

    assert 0.3 <= asyncio.run(bounded()) < 2.0
