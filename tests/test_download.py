"""Downloads against a local HTTP server on 127.0.0.1 serving archives the tests build."""

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import soundfile as sf
from conftest import tone

from escnet.cli import main
from escnet.data.download import download, download_esc50
from escnet.errors import DataError, EscnetError


def esc50_archive(clips: int) -> bytes:
    """A zip laid out like GitHub's ESC-50-master.zip, with ``clips`` short WAVs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        rows = ["filename,fold,target,category,esc10,src_file,take"]
        for i in range(clips):
            name = f"{i % 5 + 1}-{100 + i}-A-{i % 2}.wav"
            rows.append(f"{name},{i % 5 + 1},{i % 2},class{i % 2},True,{100 + i},A")
            wav = io.BytesIO()
            sf.write(wav, tone(300 + 100 * i, 8000, 0.2), 8000, format="WAV")
            zf.writestr(f"ESC-50-master/audio/{name}", wav.getvalue())
        zf.writestr("ESC-50-master/meta/esc50.csv", "\n".join(rows) + "\n")
        zf.writestr("ESC-50-master/README.md", "not extracted")
        zf.writestr("ESC-50-master/../evil.txt", "never written outside the target")
    return buf.getvalue()


class Server:
    """Serves ``payload`` at /archive.zip (with ``any_path``, at every path), honouring ``Range``
    like GitHub's CDN."""

    def __init__(self, payload: bytes, any_path: bool = False) -> None:
        self.payload, self.ranges, self.requests = payload, [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                if self.path != "/archive.zip" and not any_path:
                    self.send_error(404)
                    return
                start = 0
                if (rng := self.headers.get("Range")) is not None:
                    outer.ranges.append(rng)
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(outer.payload):
                        self.send_error(416)
                        return
                body = outer.payload[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.url = self.root + "archive.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(payload: bytes) -> Server:
        servers.append(Server(payload))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_download_extract_and_verify(tmp_path, serve):
    payload = esc50_archive(6)
    server = serve(payload)
    folder = download_esc50(tmp_path, server.url, hashlib.sha256(payload).hexdigest(), expected_clips=6,
                            progress=False)
    assert folder == tmp_path / "esc50"
    assert len(list((folder / "audio").glob("*.wav"))) == 6 and (folder / "meta" / "esc50.csv").is_file()
    assert not (folder / "README.md").exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "ESC-50-master.zip").exists()  # archive removed once extracted
    assert download_esc50(tmp_path, "http://127.0.0.1:9/unused", expected_clips=6) == folder  # reused


def test_resume_partial_download(tmp_path, serve):
    payload = esc50_archive(4)
    server = serve(payload)
    (tmp_path / "f.zip.part").write_bytes(payload[:1000])
    download(server.url, tmp_path / "f.zip", hashlib.sha256(payload).hexdigest(), progress=False)
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / "f.zip").read_bytes() == payload and not (tmp_path / "f.zip.part").exists()


def test_checksum_mismatch_deletes_file(tmp_path, serve):
    server = serve(esc50_archive(2))
    with pytest.raises(EscnetError, match="checksum mismatch"):
        download(server.url, tmp_path / "f.zip", "0" * 64, progress=False)
    assert not (tmp_path / "f.zip").exists() and not (tmp_path / "f.zip.part").exists()


def test_wrong_content_is_refused(tmp_path, serve):
    server = serve(esc50_archive(3))
    with pytest.raises(DataError, match="holds 3 clips, expected 2000"):
        download_esc50(tmp_path, server.url, progress=False)
    bad = serve(b"this is not a zip file")
    with pytest.raises(DataError, match="not a valid zip"):
        download_esc50(tmp_path / "other", bad.url, progress=False)


def test_cli_download_errors_are_one_line(tmp_path, serve, capsys):
    server = serve(b"")
    code = main(["download", "esc50", "--root", str(tmp_path), "--url", server.url.replace("archive", "nope"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("escnet: error:") and "404" in err and err.count("\n") == 1
    code = main(["download", "esc50", "--root", str(tmp_path), "--url", "http://127.0.0.1:9/x.zip", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "run the same command again to resume" in err
    # URLs nothing can be fetched from: refused before the root folder is made
    for url, why in (("http://[::1", "Invalid IPv6 URL"), ("https://", "no host"),
                     ("mirror.example/esc50.zip", "not http://, https:// or file://")):
        code = main(["download", "esc50", "--root", str(tmp_path / "new"), "--url", url, "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and f"{url}: not a URL escnet can fetch ({why})" in err and err.count("\n") == 1, err
        assert not (tmp_path / "new").exists()
