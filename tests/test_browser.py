"""The web page of ``escnet serve`` in a real browser: Debian's chromium and chromium-driver,
headless, driven by Selenium, against a real server on 127.0.0.1 and a real ESC-50 clip.

Set ``ESCNET_SCREENSHOT=docs/serve-page.png`` to also keep the screenshot (the README's)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import FIVE_CLASS_RATE, WEIGHTS
from test_serve import start_server

from escnet.deploy.predict import Predictor
from escnet.runs import RunDir

webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian's chromium and "
                                "chromium-driver (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1500",
                # a fake microphone (a beep) that needs no permission prompt
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    yield driver
    driver.quit()


def _open_and_upload(browser, url: str, model: str, clip: str) -> WebDriverWait:
    """Open the page, wait until it shows model ``model``, upload ``clip``, wait for the result."""
    browser.get(url)
    wait = WebDriverWait(browser, 30)
    wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), f"Model {model}"))
    browser.find_element(By.ID, "file").send_keys(str(Path(clip).resolve()))
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Done"))
    return wait


def _console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_classifies_an_uploaded_clip_and_a_recording(browser, five_class_run, five_class_exports,
                                                          tmp_path):
    model = five_class_exports[0].path
    predictor = Predictor.from_path(model)
    table = Path(RunDir(five_class_run).config.data.data_dir).read_text().splitlines()[1:]
    held_out = [(path, label) for path, label, fold in (ln.split(",") for ln in table) if fold == "1"]
    # a held-out clip the model gets right, so that "the right top class" means both
    clip = next(path for path, label in held_out if predictor.predict_file(path).top[0][0] == label)
    expected = predictor.predict_file(clip, top_k=5)
    proc, url = start_server(model, "--threads", "1")
    try:
        wait = _open_and_upload(browser, url, "cnn10", clip)  # a real ESC-50 .ogg
        assert "5 classes" in browser.find_element(By.ID, "model-info").text
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")
        assert [b.get_attribute("data-label") for b in bars] == [label for label, _ in expected.top]
        assert bars[0].find_element(By.CLASS_NAME, "prob").text == f"{100 * expected.top[0][1]:.1f} %"
        assert browser.find_element(By.ID, "result-title").text == Path(clip).name
        canvas = browser.find_element(By.ID, "logmel")
        assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == \
            (5 * FIVE_CLASS_RATE // 256 + 1, 40)
        assert browser.find_element(By.ID, "timeline-section").get_attribute("hidden") is not None
        shot = tmp_path / "serve-page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("ESCNET_SCREENSHOT"):
            shutil.copy(shot, os.environ["ESCNET_SCREENSHOT"])

        # the microphone: recorded, converted to WAV in the page, classified
        browser.find_element(By.ID, "record").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Recording"))
        time.sleep(2.5)  # of the fake microphone's beeps
        browser.find_element(By.ID, "record").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "result-title"), "microphone recording"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Done"))
        summary = browser.find_element(By.ID, "summary").text
        assert "1 channel(s)" in summary and float(summary.split(" s at ")[0]) > 1.5
        assert len(browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")) == 5
        assert _console_errors(browser) == []
    finally:
        proc.terminate()
        proc.wait(30)


def test_page_says_unknown_and_what_audioset_hears(browser, probe_open_run, probe_open_onnx, tmp_path):
    """A cat, left out of the model's training, is answered "unknown" with AudioSet's tags."""
    _, data = probe_open_run
    model = probe_open_onnx
    predictor = Predictor.from_path(model)
    rows = [ln.split(",") for ln in data.read_text().splitlines()[1:]]
    cat = next(p for p, label, fold in rows if label == "cat" and fold == "1"
               and predictor.predict_file(p).label == "unknown")
    expected = predictor.predict_file(cat)
    proc, url = start_server(model, "--threads", "1")
    try:
        _open_and_upload(browser, url, "mn04", cat)
        assert 'Answers "unknown"' in browser.find_element(By.ID, "model-info").text
        answer = browser.find_element(By.ID, "answer")
        assert answer.get_attribute("class") == "unknown"
        assert answer.text.startswith("Unknown: none of the model's classes — sounds like")
        assert f"“{expected.sounds_like[0][0]}”" in answer.text
        bars = browser.find_elements(By.CSS_SELECTOR, "#bars li.bar")
        assert [b.get_attribute("data-label") for b in bars] == [label for label, _ in expected.top]
        shot = tmp_path / "serve-unknown.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("ESCNET_SCREENSHOT_UNKNOWN"):
            shutil.copy(shot, os.environ["ESCNET_SCREENSHOT_UNKNOWN"])
        assert _console_errors(browser) == []
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("frames", [False, True], ids=["clip model", "frame model"])
def test_live_mode_follows_a_soundscape_played_as_the_microphone(tmp_path, frames):
    """Chromium's fake microphone plays a scene (a low tone, noise, a high tone; for a frame
    model, a high tone beginning while a low one sounds); the page streams it through its
    AudioWorklet to /v1/stream of a real server on 127.0.0.1 and lists the events in order, two
    open at once from a frame model. The models are the two-tone ones of the event tests, whose
    answers are known, so the test is about the page and the stream, not a model's accuracy."""
    import socket
    import threading

    import numpy as np
    import soundfile as sf
    import uvicorn
    from conftest import FrameToneModel, ToneModel, tone_scene, tones

    from escnet.serve.app import ServeSettings, create_app

    wav = (tones(9, [(1.0, 4.0, 500), (2.5, 5.5, 2000)], 48000, np.random.default_rng(0)) if frames
           else tone_scene(48000)[0])
    scene = tmp_path / "scene.wav"
    sf.write(scene, wav, 48000, subtype="PCM_16")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(ServeSettings("tones", port=port, threads=1),
                     model=FrameToneModel() if frames else ToneModel())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1300",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={scene}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "model-info"), "Model tones"))
        driver.execute_script(  # every "now" line the page shows, kept for the checks below
            "window.seen = []; new MutationObserver(() => window.seen.push("
            "document.getElementById('live-now').textContent)).observe("
            "document.getElementById('live-now'), {childList: true, characterData: true, subtree: true});")
        driver.find_element(By.ID, "live").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Live: listening"))
        ended = "#events-table tbody tr[data-state='end']"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ended)) >= 2)
        rows = driver.find_elements(By.CSS_SELECTOR, "#events-table tbody tr")[::-1]  # newest first
        assert [r.get_attribute("data-label") for r in rows][:2] == ["low", "high"]
        if frames:  # the high tone began while the low one sounded: [label, start, end, confidence]
            (_, _, low_end, _), (_, high_start, _, _) = [
                [td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows[:2]]
            assert float(high_start) < float(low_end)
            # while both sound the page says so: both classes on one line, as the strip draws them
            assert any("low 0.9" in t and "high 0.9" in t for t in driver.execute_script("return window.seen"))
            assert "each class the frames hear" in driver.find_element(By.ID, "live-caption").text
        assert "s:" in driver.find_element(By.ID, "live-now").text
        shot = tmp_path / "serve-live.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("ESCNET_SCREENSHOT_LIVE_FRAMES" if frames else "ESCNET_SCREENSHOT_LIVE")
        if keep:
            shutil.copy(shot, keep)
        driver.find_element(By.ID, "live").click()  # stop: the stream ends cleanly
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "Live: follow"))
        assert _console_errors(driver) == []
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)


def test_label_page_searches_labels_with_keys_learns_and_ranks(browser, real_archive, esc50, tmp_path):
    """``escnet label ARCHIVE``: a dog of another fold searched for, results labelled with y and
    n, a mistake undone with z, then learn & rank. Set ``ESCNET_LABEL_SCREENSHOT`` to keep the
    screenshot (the README's)."""
    import sys

    from test_serve import start

    from escnet.archive.db import Archive
    from escnet.data.tables import read_esc50

    db, truth = tmp_path / "db", real_archive[1]
    shutil.copytree(real_archive[0], db)
    table = read_esc50(esc50)
    dog = next(p for p, lab, f in zip(table.paths, table.labels, table.folds, strict=True)
               if f == 1 and table.classes[lab] == "dog")
    proc, url = start(lambda port: ["env", f"ESCNET_WEIGHTS={WEIGHTS}", sys.executable, "-m", "escnet", "label",
                                    str(db), "--port", str(port)])
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "archive-info"), "4 recordings"))
        name = browser.find_element(By.ID, "label")
        name.send_keys("dog")
        browser.find_element(By.ID, "file").send_keys(str(Path(dog).resolve()))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "10 windows"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#results li.result")
        found = [(r.get_attribute("data-file"), float(r.get_attribute("data-start"))) for r in rows]
        assert len(rows) == 10 and sum(truth[f] == "dog" for f in found[:4]) >= 3
        wait.until(lambda d: all(c.get_attribute("width") not in (None, "", "300")
                                 for c in d.find_elements(By.CSS_SELECTOR, "#results canvas.thumb")))
        body = browser.find_element(By.TAG_NAME, "body")
        for r, (file, _) in zip(rows[:4], found[:4], strict=True):  # label what the page shows, by ear
            body.send_keys("y" if truth[(file, _)] == "dog" else "n")
            wait.until(lambda d, r=r: r.get_attribute("data-verdict"))
        body.send_keys("y")  # the fifth: a mistake if it is not a dog; undone either way
        wait.until(lambda d: rows[4].get_attribute("data-verdict"))
        body.send_keys("z")
        wait.until(lambda d: not rows[4].get_attribute("data-verdict"))
        dogs = sum(truth[f] == "dog" for f in found[:4])
        wait.until(ec.text_to_be_present_in_element((By.ID, "counts"), f"dog: {dogs} yes · {4 - dogs} no"))
        a = Archive(db)
        sources = {lab.source for lab in a.labels("dog")}
        assert sources == {"page"} and len(a.labels("dog")) == 4 and len(a.labels("dog", undone=True)) == 5

        browser.find_element(By.ID, "learn").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "results-title"), "Next to label for dog"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "estimate"), "Estimated precision"))
        ranked = browser.find_elements(By.CSS_SELECTOR, "#results li.result")
        assert len(ranked) == 10
        labelled = set(found[:4])
        assert not labelled & {(r.get_attribute("data-file"), float(r.get_attribute("data-start")))
                               for r in ranked}
        shot = tmp_path / "label-page.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("ESCNET_LABEL_SCREENSHOT"):
            shutil.copy(shot, os.environ["ESCNET_LABEL_SCREENSHOT"])
        assert _console_errors(browser) == []
    finally:
        proc.terminate()
        proc.wait(30)
