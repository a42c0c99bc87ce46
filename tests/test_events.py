"""Sound events: the tracker, the stream, files and streams alike."""


import numpy as np
import pytest
import soundfile as sf
from conftest import ToneModel, tone_scene

from escnet.data.pcm import PcmFormat, read_wav_header
from escnet.deploy.events import (
    EventSettings,
    EventTracker,
    Stream,
    detect_events,
    events_of,
    stream_file,
)
from escnet.deploy.events.stream import ONSET_HOPS
from escnet.errors import AudioError, EscnetError


def _push_all(tracker, series, hop=0.25):
    out = []
    for k, p in enumerate(series, start=1):
        out += tracker.push(k * hop, None if p is None else np.array(p))
    return out


def test_tracker_hysteresis_gap_min_duration_by_hand():
    s = EventSettings(hop=0.25, window=1.0, smooth=1, on=0.5, off=0.3, min_duration=0.5, max_gap=0.5)
    tracker = EventTracker(["a", "b"], s)
    a = [0, 0, 0.6, 0.7, 0.4, 0.2, 0.6, 0.8, 0.1, 0.1, 0.1, 0.1, 0, 0, 0, 0, 0]
    b = [0] * 12 + [0.9, 0, 0, 0, 0]  # one window: shorter than min_duration, never said
    series = [[x, y] for x, y in zip(a, b, strict=True)]
    series[13] = None  # a silent window counts as zero
    messages = _push_all(tracker, series)
    # window k ends at 0.25 k and is placed at its centre 0.25 k - 0.5; an event spans its
    # windows' centres ± hop/2; the dip at k=6 (0.25 s below off) does not end it
    assert [(m.label, m.state, m.time, m.decided, m.confidence) for m in messages] == [
        ("a", "start", 0.125, 1.0, 0.7), ("a", "end", 1.625, 2.75, 0.8)]
    assert tracker.finish(5.0) == []


def test_smoothing_ignores_a_one_window_spike_and_finish_ends_open_events():
    s = EventSettings(window=1.0, smooth=2, on=0.5, off=0.3, min_duration=0.25)
    tracker = EventTracker(["a"], s)
    assert _push_all(tracker, [[0.0], [0.9], [0.0], [0.0]]) == []  # mean of two hops: 0.45
    tracker = EventTracker(["a"], s)
    messages = _push_all(tracker, [[0.0], [0.9], [0.9], [0.9]])
    assert [m.state for m in messages] == ["start"]
    end = tracker.finish(1.1)
    assert [(m.state, m.decided) for m in end] == [("end", 1.1)]


@pytest.mark.parametrize("bad", [{"hop": 0}, {"hop": float("nan")}, {"on": float("nan")}, {"window": 9},
                                 {"window": 0.05}, {"on": 0},
                                 {"off": 0.9}, {"smooth": 0}, {"max_gap": -1}, {"hop": 2.5}])
def test_nonsense_settings_are_refused_by_name(bad):
    with pytest.raises(EscnetError, match=f"event setting {next(iter(bad))}="):
        EventSettings(**bad).check(clip_seconds=5.0)


def test_stream_finds_the_tones_once_each_and_never_the_noise():
    model = ToneModel()
    wav, truth = tone_scene()
    stream = Stream(model, EventSettings(window=0.5, hop=0.25, smooth=1))
    messages = stream.feed(wav).events + stream.finish().events
    events = events_of(messages)
    assert [e.label for e in events] == ["low", "high"]  # once each; the noise is unknown, not an event
    for event, (label, start, end) in zip(events, truth, strict=True):
        assert event.label == label
        assert abs(event.start - start) <= 0.5 and abs(event.end - end) <= 0.5
    starts = [m for m in messages if m.state == "start"]
    assert all(m.decided - t[1] <= 1.0 for m, t in zip(starts, truth, strict=True))  # latency


def test_file_and_stream_give_the_same_events_in_any_chunks_and_at_another_rate(tmp_path):
    model = ToneModel()
    settings = EventSettings(window=0.5, hop=0.25, smooth=2)
    rng = np.random.default_rng(1)
    for rate in (8000, 16000):
        wav, _ = tone_scene(rate)
        path = tmp_path / f"scene{rate}.wav"
        sf.write(path, wav, rate, subtype="FLOAT")
        from_file = detect_events(model, path, settings)
        assert [e.label for e in from_file] == ["low", "high"]
        stream = Stream(model, settings, input_rate=rate)
        messages, k = [], 0
        while k < wav.size:
            n = int(rng.integers(1, 3000))
            messages += stream.feed(wav[k:k + n]).events
            k += n
        messages += stream.finish().events
        assert events_of(messages) == from_file


def test_a_long_sound_is_one_event_and_scores_come_every_hop():
    model = ToneModel()
    rate = model.info.sample_rate
    t = np.arange(12 * rate) / rate
    wav = (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)
    updates = [Stream(model).feed(wav)]
    assert len(updates[0].scores) == 48  # 12 s at the default hop of 0.25 s
    stream = Stream(model)
    messages = [m for k in range(0, wav.size, 800) for m in stream.feed(wav[k:k + 800]).events]
    messages += stream.finish().events
    assert [(m.label, m.state) for m in messages] == [("low", "start"), ("low", "end")]


def test_pcm_formats_and_a_wav_header_read_from_a_pipe(tmp_path):
    s16 = np.array([0, 16384, -32768, 32767], "<i2").tobytes()
    assert PcmFormat(8000, "s16").decode(s16).tolist() == pytest.approx([0, 0.5, -1, 32767 / 32768])
    assert PcmFormat(8000, "u8").decode(bytes([128, 192, 0])).tolist() == [0, 0.5, -1]
    s24 = b"".join(int(v).to_bytes(3, "little", signed=True) for v in (0, 2**22, -(2**23), -1))
    assert PcmFormat(8000, "s24").decode(s24).tolist() == pytest.approx([0, 0.5, -1, -(2.0**-23)])
    stereo = np.array([0.5, -0.5, 1.0, 0.0], "<f4").tobytes()
    assert PcmFormat(8000, "f32", 2).decode(stereo).tolist() == [0.0, 0.5]
    with pytest.raises(AudioError, match="not a whole number"):
        PcmFormat(8000, "s16").decode(b"\x00\x01\x02")
    with pytest.raises(AudioError, match="NaN"):
        PcmFormat(8000, "f32").decode(np.array([np.nan], "<f4").tobytes())
    with pytest.raises(AudioError, match="sample rate"):
        PcmFormat(10**9, "s16")
    # a WAV as arecord writes it to a pipe: sizes 0xFFFFFFFF, read without seeking
    path = tmp_path / "a.wav"
    sf.write(path, np.full(100, 0.25, np.float32), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"
    stream = __import__("io").BytesIO(bytes(data))
    pcm = read_wav_header(stream.read, "pipe")
    assert (pcm.sample_rate, pcm.format, pcm.channels) == (16000, "s16", 1)
    assert np.concatenate(list(pcm.chunks(stream.read))).tolist() == pytest.approx([0.25] * 100, abs=1e-4)
    for subtype, expected in (("PCM_24", "s24"), ("PCM_U8", "u8"), ("FLOAT", "f32"), ("PCM_32", "s32")):
        sf.write(path, np.full(100, 0.25, np.float32), 16000, subtype=subtype)
        stream = __import__("io").BytesIO(path.read_bytes())
        pcm = read_wav_header(stream.read, "pipe")
        assert pcm.format == expected
        assert np.concatenate(list(pcm.chunks(stream.read))).tolist() == pytest.approx([0.25] * 100, abs=1e-2)
    with pytest.raises(AudioError, match="not a WAV stream"):
        read_wav_header(__import__("io").BytesIO(b"ID3\x04" + bytes(40)).read, "pipe")


def test_stream_file_scores_a_real_model_on_real_clips(five_class_exports, esc50):
    """The fold-1 export of the five-class model: a dog clip's hops are mostly "dog"."""
    from escnet.deploy.predict import load_model_file

    model = load_model_file(five_class_exports[0].path)
    clip = sorted((esc50 / "audio").glob("1-*-A-0.*"))[0]  # fold 1, class 0 (dog)
    hops = [s for u in stream_file(model, clip) for s in u.scores]
    ends = [s.end for s in hops]
    grid = [e for e in ends if abs(e / 0.25 - round(e / 0.25)) < 1e-4]
    assert grid[:20] == pytest.approx([0.25 * (k + 1) for k in range(20)])  # every 0.25 s...
    assert len(grid) <= 21 and ends[-1] == pytest.approx(5.0, abs=0.01)  # ...and one at the very end
    # ...and a few more, a hop apart from where each bark began: in order, each once
    assert ends == sorted(set(ends)) and 0 < len(ends) - len(grid) <= ONSET_HOPS * 10
    assert all(s.probabilities is None or s.probabilities.shape == (5,) for s in hops)
