"""escnet serve: the API against the real app (FastAPI's test client) and against a real
``escnet serve`` process on 127.0.0.1 (concurrency, overload, SIGTERM), with a model trained
and exported from real ESC-50 clips."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import FIVE_CLASS_RATE, local_client, runtime_cli, tone

from escnet.data.audio import load_audio
from escnet.deploy.predict import Predictor
from escnet.runs import RunDir

fastapi = pytest.importorskip("fastapi", reason="escnet serve needs the serve extra")
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from escnet.serve.app import ServeSettings, create_app  # noqa: E402

RATE = FIVE_CLASS_RATE


def encode(samples: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt, subtype=subtype)
    return out.getvalue()


@pytest.fixture(scope="module")
def model_path(five_class_exports) -> Path:
    return five_class_exports[0].path


@pytest.fixture(scope="module")
def held_out(five_class_run) -> list[str]:
    table = Path(RunDir(five_class_run).config.data.data_dir).read_text().splitlines()[1:]
    return [path for path, _, fold in (line.split(",") for line in table) if fold == "1"]


@pytest.fixture(scope="module")
def client(model_path):
    settings = ServeSettings(str(model_path), threads=2, max_upload_mb=2, max_seconds=30)
    with local_client(create_app(settings)) as c:
        deadline = time.monotonic() + 30  # the model loads in the background
        while c.get("/readyz").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield c


def test_health_readiness_and_model_information(client, model_path):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    expected = Predictor.from_path(model_path).info
    assert info["classes"] == expected.classes and info["sample_rate"] == RATE
    assert info["clip_seconds"] == 5.0 and info["model"] == "cnn10"
    assert info["held_out_accuracy"] == pytest.approx(expected.held_out_accuracy)
    assert info["limits"] == {"max_upload_mb": 2, "max_seconds": 30, "max_windows": 1000}
    assert info["calibrated"] and info["unknown_score"] == "energy"
    assert info["unknown_threshold"] == pytest.approx(expected.unknown_threshold)
    assert "/v1/classify" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/app.js\">" in page.text
    assert client.get("/static/app.js").status_code == 200


def test_classify_raw_and_multipart_any_rate_channels_and_format(client, model_path, held_out, tmp_path):
    clip = load_audio(held_out[0], 44100)  # as a user would have it: 44.1 kHz ...
    stereo = np.stack([clip, clip], axis=1)  # ... and stereo
    wav = encode(stereo, 44100)
    (tmp_path / "clip.wav").write_bytes(wav)
    expected = Predictor.from_path(model_path).predict_file(tmp_path / "clip.wav", top_k=3)
    raw = client.post("/v1/classify?top_k=3", content=wav)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert [t["label"] for t in body["top"]] == [label for label, _ in expected.top]
    assert [t["probability"] for t in body["top"]] == pytest.approx([p for _, p in expected.top], abs=1e-6)
    assert (body["sample_rate"], body["channels"], body["windows"]) == (44100, 2, 1)
    assert body["duration"] == pytest.approx(5.0, abs=1e-3) and "timeline" not in body
    # a multipart upload whose file name tries to reach the file system: used nowhere
    hostile = "../../../../tmp/escnet-pwned.wav"
    form = client.post("/v1/classify?top_k=3", files={"file": (hostile, wav, "audio/wav")})
    assert form.status_code == 200 and form.json()["top"] == body["top"]
    assert not Path("/tmp/escnet-pwned.wav").exists() and "pwned" not in form.text
    # other containers: FLAC is lossless (same numbers), OGG and MP3 decode and classify
    flac = client.post("/v1/classify?top_k=3", content=encode(stereo, 44100, "FLAC", "PCM_16"))
    assert [t["label"] for t in flac.json()["top"]] == [t["label"] for t in body["top"]]
    assert [t["probability"] for t in flac.json()["top"]] == pytest.approx(  # one unit of the 6th digit
        [t["probability"] for t in body["top"]], abs=1.5e-6)
    for fmt, subtype in (("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")):
        lossy = client.post("/v1/classify", content=encode(clip, 44100, fmt, subtype))
        assert lossy.status_code == 200, (fmt, lossy.text)
        assert lossy.json()["top"][0]["label"] in Predictor.from_path(model_path).classes


def test_timeline_and_logmel_for_a_long_recording(client, held_out):
    clip = load_audio(held_out[0], RATE)[: 5 * RATE]
    audio = np.concatenate([clip, np.zeros(5 * RATE, np.float32), clip])  # 15 s, silent middle
    r = client.post("/v1/classify?timeline=true&logmel=true", content=encode(audio, RATE))
    assert r.status_code == 200, r.text
    body = r.json()
    rows = body["timeline"]
    assert [(row["start"], row["end"]) for row in rows] == [(0.0, 5.0), (2.5, 7.5), (5.0, 10.0),
                                                           (7.5, 12.5), (10.0, 15.0)]
    assert rows[2]["label"] is None and rows[2]["probability"] is None  # the silence
    assert rows[0]["label"] == rows[4]["label"] == body["top"][0]["label"]
    assert body["windows"] == sum(row["label"] is not None for row in rows)  # silence not averaged
    image = body["logmel"]
    assert (image["n_mels"], image["frames"]) == (40, 5 * RATE // 256 + 1)
    pixels = np.frombuffer(base64.b64decode(image["pixels"]), np.uint8)
    assert pixels.size == 40 * image["frames"] and pixels.max() == 255 and pixels.min() == 0
    assert image["db_max"] - image["db_min"] <= 80.0


def _bad_inputs(tmp_path: Path) -> list[tuple[str, dict, int, str]]:
    """(name, request keyword arguments, status, words the error must hold)."""
    ok = encode(tone(440, RATE, 2.0), RATE)
    nan = tone(440, RATE, 1.0)
    nan[100] = np.nan
    huge_header = bytearray(ok)
    huge_header[40:44] = (0x7FFFFF00).to_bytes(4, "little")  # "data" claims 2 GB
    # a compression bomb: 20 minutes of silence is a few kB of FLAC
    bomb = encode(np.zeros(20 * 60 * 8000, np.float32), 8000, "FLAC", "PCM_16")
    assert len(bomb) < 200_000

    def chunked():
        for _ in range(40):
            yield bytes(100_000)

    return [
        ("text", {"content": b"this is not audio\n" * 50}, 415, "not a readable audio file"),
        ("random bytes", {"content": np.random.default_rng(0).bytes(5000)}, 415, "not a readable"),
        ("empty", {"content": b""}, 422, "empty file"),
        ("header only", {"content": ok[:44]}, 422, "no audio samples"),
        ("cut off", {"content": ok[: len(ok) // 2]}, 422, "truncated"),
        ("declared 2 GB", {"content": bytes(huge_header)}, 422, "truncated"),
        ("NaN samples", {"content": encode(nan, RATE, "WAV", "FLOAT")}, 422, "NaN"),
        ("compression bomb", {"content": bomb}, 413, "longer than the limit of 30 s"),
        ("too long", {"content": encode(np.zeros(40 * 8000, np.float32), 8000)}, 413, "30 s"),
        ("too big", {"content": bytes(3 * 2**20)}, 413, "over the limit of 2 MB"),
        ("too big, no length", {"content": chunked()}, 413, "over the limit of 2 MB"),
        ("form without a file", {"data": {"note": "hello"}, "files": {"x": ("", b"", "")}}, 422, ""),
        ("form, field only", {"data": {"a": "b"}, "headers": {"content-type":
                              "multipart/form-data; boundary=xyz"}}, 422, "multipart"),
        ("top_k 0", {"content": ok, "params": {"top_k": 0}}, 422, "top_k"),
        ("hop -1", {"content": ok, "params": {"hop": -1}}, 422, "hop"),
        ("hop nan", {"content": ok, "params": {"hop": "nan"}}, 422, "hop nan: must be a positive number of"),
        ("hop 1e308", {"content": ok, "params": {"hop": 1e308}}, 422, "hop 1e+308: must be a positive number"),
        ("hop of one sample", {"content": encode(tone(440, RATE, 20.0), RATE), "params": {"hop": 1e-9}},
         422, "would score 240001 windows of this 20.0 s recording, over the limit of 1000"),
        ("timeline=maybe", {"content": ok, "params": {"timeline": "maybe"}}, 422, "timeline"),
    ]


def test_every_bad_input_gets_its_status_and_a_json_reason(client, tmp_path):
    for name, kwargs, status, words in _bad_inputs(tmp_path):
        r = client.post("/v1/classify", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        body = r.json()
        assert set(body) == {"error"} and words in body["error"], (name, body)
        assert "Traceback" not in r.text and "BytesIO" not in r.text, name
    assert client.get("/v1/nothing").json() == {"error": "Not Found"}
    assert client.get("/v1/classify").status_code == 405


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A real ``escnet serve`` on 127.0.0.1, once it says it is ready; without PyTorch and the
    other training libraries, as after ``pip install 'escnet[serve]'``."""
    return start(lambda port: runtime_cli("serve", str(model), "--port", str(port), *args))


def start(command) -> tuple[subprocess.Popen, str]:
    """The server ``command(port)`` starts on 127.0.0.1, once it says it is ready."""
    port = _free_port()
    proc = subprocess.Popen(command(port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"escnet serve exited {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("escnet serve did not become ready in 60 s")


def post(url: str, data: bytes, query: str = "", timeout: float = 60) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"{url}/v1/classify{query}", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), dict(err.headers)


def _sigterm_mid_request(proc: subprocess.Popen, url: str, body: bytes, query: str, after: float) -> str:
    """SIGTERM ``after`` seconds into a long request: its work stops at the next batch of
    windows, answered 503 in JSON, and the server is gone within 10 s, with no traceback.
    Returns the server's log."""
    out: list = []
    running = threading.Thread(target=lambda: out.append(post(url, body, query)))
    running.start()
    time.sleep(after)
    proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    running.join()
    status, answer, _ = out[0]
    assert status == 503 and "shutting down" in answer["error"], (status, answer)
    assert proc.wait(10) in (0, -signal.SIGTERM) and time.monotonic() - signalled < 10
    log = proc.stdout.read()
    assert "Traceback" not in log
    return log


def test_pages_of_other_origins_cannot_use_the_server(model_path, held_out):
    """Any page open in the user's browser could otherwise classify with (and stream to) a
    local server: only its own page and the origins allowed may."""
    clip = Path(held_out[0]).read_bytes()
    settings = ServeSettings(str(model_path), threads=1, allow_origins=("https://app.example.org",))
    with local_client(create_app(settings)) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        for origin, allowed in (("http://localhost:8000", True), ("https://app.example.org", True),
                                ("http://evil.example", False), ("http://localhost:9999", False),
                                ("null", False), ("http://127.0.0.1:8000", False)):
            response = c.post("/v1/classify", content=clip, headers={"Origin": origin})
            assert (response.status_code == 200) == allowed, (origin, response.text)
            if not allowed:
                assert response.status_code == 403 and "cross-origin" in response.json()["error"]
        assert c.post("/v1/classify", content=clip).status_code == 200  # curl sends no Origin
        # DNS rebinding: a page whose own domain resolves to 127.0.0.1 is same-origin with itself
        rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
        response = c.post("/v1/classify", content=clip, headers=rebound)
        assert response.status_code == 403 and "Host" in response.json()["error"]
        assert c.get("/v1/model", headers={"Host": "evil.example:8000"}).status_code == 403
        with pytest.raises(WebSocketDisconnect), c.websocket_connect(
                "/v1/stream?sample_rate=16000", headers={"Origin": "http://evil.example"}):
            pass
        with c.websocket_connect("/v1/stream?sample_rate=16000",
                                 headers={"Origin": "http://localhost:8000"}) as ws:
            assert json.loads(ws.receive_text())["type"] == "ready"


def test_real_server_concurrency_overload_and_graceful_sigterm(model_path, held_out):
    clip = encode(load_audio(held_out[0], RATE)[: 5 * RATE], RATE)
    proc, url = start_server(model_path, "--threads", "2")
    try:
        results: list = [None] * 12
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, post(url, clip)))
                   for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {r[0] for r in results} == {200}
        assert len({json.dumps(r[1]["top"]) for r in results}) == 1  # the same answer every time
    finally:
        proc.terminate()
        proc.wait(30)

    # one thread and no queue: a second request while one runs is turned away at once
    slow = encode(np.tile(load_audio(held_out[1], RATE)[: 5 * RATE], 12), RATE)  # 60 s
    query = "?timeline=true&hop=0.02"  # 2751 windows: seconds of work
    proc, url = start_server(model_path, "--threads", "1", "--queue", "0", "--max-windows", "3000")
    try:
        first: list = []
        running = threading.Thread(target=lambda: first.append(post(url, slow, query)))
        running.start()
        time.sleep(0.8)
        status, body, headers = post(url, clip)
        assert status == 503 and "busy" in body["error"] and headers["retry-after"] == "1"
        running.join()
        assert first[0][0] == 200 and len(first[0][1]["timeline"]) == 2751
        log = _sigterm_mid_request(proc, url, slow, query, after=0.8)
        assert "Shutting down" in log and "Finished server process" in log
    finally:
        proc.kill()
        proc.wait()


def _post_from(url: str, source: str, data: bytes, query: str = "") -> tuple[int, dict, float]:
    """POST from the loopback address ``source`` (a client on another machine, to the server)."""
    import http.client

    tick = time.monotonic()
    conn = http.client.HTTPConnection(url.split("//")[1], timeout=60, source_address=(source, 0))
    try:
        conn.request("POST", f"/v1/classify{query}", body=data)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), time.monotonic() - tick
    finally:
        conn.close()


def test_a_client_flooding_the_queue_gives_way_to_another_client(model_path, held_out):
    clip = encode(load_audio(held_out[0], RATE)[: 5 * RATE], RATE)
    slow = encode(np.tile(load_audio(held_out[1], RATE)[: 5 * RATE], 12), RATE)  # 60 s
    query = "?hop=0.02"  # 2751 windows: seconds of work
    proc, url = start_server(model_path, "--threads", "1", "--queue", "1", "--max-windows", "3000")
    answers: dict[str, tuple] = {}

    def send(name: str, source: str, data: bytes, query: str = "") -> threading.Thread:
        t = threading.Thread(target=lambda: answers.__setitem__(name, _post_from(url, source, data, query)))
        t.start()
        time.sleep(0.5)
        return t

    try:
        sent = [send("flood running", "127.0.0.2", slow, query),
                send("flood queued", "127.0.0.2", slow, query),
                send("another client", "127.0.0.1", clip),  # takes the flood's queued place
                send("flood again", "127.0.0.2", slow, query)]  # the queue holds another's: refused
        for t in sent:
            t.join()
    finally:
        proc.terminate()
        proc.wait(30)
    assert answers["flood running"][0] == 200 and answers["another client"][0] == 200
    _, body, seconds = answers["another client"]  # it waited for the flood's running request
    assert 100 < body["waited_ms"] < 1e3 * seconds - body["elapsed_ms"] and body["elapsed_ms"] > 0, body
    status, body, _ = answers["flood queued"]
    assert status == 503 and "gave way" in body["error"], body
    status, body, seconds = answers["flood again"]  # refused with work in progress: not at once
    assert status == 503 and "busy" in body["error"] and seconds >= 0.9, (body, seconds)


def test_serve_refuses_a_bad_model_or_setting_in_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    for args, words in ((["nothing.onnx"], "not found"), ([str(tmp_path / "bad.onnx")], "not a readable"),
                        ([str(tmp_path / "bad.onnx"), "--queue", "-1"], "--queue -1"),
                        ([str(tmp_path / "bad.onnx"), "--max-upload-mb", "nan"], "--max-upload-mb"),
                        ([str(tmp_path / "bad.onnx"), "--max-upload-mb", "1e308"], "at most 4096 MB"),
                        ([str(tmp_path / "bad.onnx"), "--max-windows", "1"], "--max-windows 1"),
                        ([str(tmp_path / "bad.onnx"), "--rate-limit", "-1"], "--rate-limit -1"),
                        ([str(tmp_path / "bad.onnx"), "--workers", "1000"], "must be 1 to 64"),
                        ([str(tmp_path / "bad.onnx"), "--threads", "100000"], "--threads 100000"),
                        ([str(tmp_path / "bad.onnx"), "--allow-origin", "https://a.org/page"], "not a web origin")):
        done = subprocess.run(runtime_cli("serve", *args), capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == "", args
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in done.stderr, (args, done.stderr)


def test_slow_senders_hold_no_inference_slot_and_a_taken_port_is_one_line(model_path, held_out, tmp_path):
    clip = encode(load_audio(held_out[0], RATE)[: 5 * RATE], RATE)
    proc, url = start_server(model_path, "--threads", "1", "--queue", "0", "--body-seconds", "2")
    port = int(url.rsplit(":", 1)[1])
    trickle = []
    try:
        for _ in range(6):  # six uploads that never finish arriving
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n" + bytes(10))
            trickle.append(s)
        status, body, _ = post(url, clip)  # a well-behaved client meanwhile: answered, not 503
        assert status == 200 and body["top"], body
        reply = b""  # the slow one is told after the deadline, in JSON
        while not reply.endswith(b"}") and (chunk := trickle[0].recv(4096)):
            reply += chunk
        reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and "not received within 2 s" in reply
        # the port is taken: a second server says so in one line, before loading its model
        done = subprocess.run(runtime_cli("serve", str(model_path), "--port", str(port)),
                              capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "already in use" in lines[0], done.stderr
    finally:
        for s in trickle:
            s.close()
        proc.terminate()
        proc.wait(30)


def test_sigterm_with_several_workers_answers_work_in_flight_in_json(model_path, held_out):
    """Each worker process stops its own work in flight (503 JSON), not a text 500 once the
    graceful-shutdown time runs out; the server is gone within seconds."""
    slow = encode(np.tile(load_audio(held_out[1], RATE)[: 5 * RATE], 12), RATE)  # 60 s
    proc, url = start_server(model_path, "--workers", "2", "--threads", "1", "--max-windows", "3000")
    try:  # each worker loads its own model: ready once 20 connections in a row find one ready
        ready, deadline = 0, time.monotonic() + 60
        while ready < 20 and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5):
                    ready += 1
            except urllib.error.HTTPError:
                ready = 0
                time.sleep(0.1)
        _sigterm_mid_request(proc, url, slow, "?timeline=true&hop=0.02", after=1.0)
    finally:
        proc.kill()
        proc.wait()
