"""Frame-level events: soundscapes with frame targets, the frame head, its settings, and
events read off frames (several classes at once, files and streams alike)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FrameToneModel, tiny_config, tones

from escnet.deploy.events import EventSettings, Stream, detect_events, events_of
from escnet.errors import ConfigError, EscnetError
from escnet.models import SoundClassifier
from escnet.transforms.scenes import EMPTY, GRID_SECONDS, SECOND_DB, make_scenes

RATE = 8000


def _burst_clips() -> tuple[torch.Tensor, torch.Tensor]:
    """8 clips of 2 s: silence, a 1 s tone (its own frequency) from 0.5 s, silence."""
    t = torch.arange(2 * RATE) / RATE
    on = ((t >= 0.5) & (t < 1.5)).float()
    clips = torch.stack([0.5 * torch.sin(2 * torch.pi * (300 + 200 * k) * t) * on for k in range(8)])
    return clips, torch.arange(8)


def _tone_stands_out(audio: torch.Tensor, freq: float) -> bool:
    """Whether the power near ``freq`` is 100 times the median just above it (coloured noise
    falls by at most a few times over that span)."""
    power = torch.fft.rfft(audio).abs().square()
    freqs = torch.fft.rfftfreq(len(audio), 1 / RATE)
    above = power[(freqs > freq + 100) & (freqs < freq + 300)].median()
    return bool(power[(freqs - freq).abs() < 20].max() > 100 * above)


def test_scenes_label_each_sound_where_it_is_and_nowhere_else():
    clips, labels = _burst_clips()
    torch.manual_seed(0)
    rows, sounds, empty, levels = 0, [], 0, []
    for _ in range(25):
        scenes = make_scenes(clips, torch.full((8,), 2 * RATE), labels, 8, RATE, 3.0)
        assert scenes.wav.shape == (8, 3 * RATE) and scenes.activity.shape == (8, 8, 300)
        for i in range(8):
            rows += 1
            active = scenes.activity[i].sum(1)
            heard = torch.nonzero(active).flatten()
            sounds.append(len(heard))
            weights = scenes.clip_targets[i]
            if not len(heard):
                empty += 1
                assert weights.sum() == 0
                continue
            assert len(heard) <= 2 and heard.tolist() == torch.nonzero(weights).flatten().tolist()
            assert weights.sum().item() == pytest.approx(1.0)
            # a sound's frames: its 1 s tone, less what fell past either end of the scene
            assert all(0.1 - GRID_SECONDS <= active[c] * GRID_SECONDS <= 1.0 + 2 * GRID_SECONDS
                       for c in heard)
            # two whole sounds: the second within SECOND_DB of the first (tones of equal
            # amplitude: their spectral peaks' ratio is their gains')
            if len(heard) == 2 and all(active[c] * GRID_SECONDS > 1.0 - 2 * GRID_SECONDS for c in heard):
                spectrum, freqs = torch.fft.rfft(scenes.wav[i]).abs(), torch.fft.rfftfreq(3 * RATE, 1 / RATE)
                peaks = [spectrum[(freqs - (300 + 200 * int(c))).abs() < 2].max() for c in heard]
                levels.append(abs(20 * torch.log10(peaks[0] / peaks[1])).item())
            # a lone sound's tone is in its labelled cells, and not in the others
            if len(heard) == 1:
                c = int(heard[0])
                cells = scenes.wav[i].reshape(300, -1)
                inside = scenes.activity[i, c] > 0
                assert _tone_stands_out(cells[inside].flatten(), 300 + 200 * c)
                if (~inside).sum() > 20:
                    assert not _tone_stands_out(cells[~inside].flatten(), 300 + 200 * c)
        targets = scenes.frame_targets(10, 0.3)  # frames that tile the scene
        assert targets.shape == (8, 10, 8) and targets.min() >= 0 and targets.max() <= 1
        torch.testing.assert_close(targets.mean(1), scenes.activity.mean(2), atol=1e-6, rtol=0)
        # the model's 0.32 s frames: each its own 32 cells, the last only its 12 inside the scene
        targets = scenes.frame_targets(10, 0.32)
        torch.testing.assert_close(targets[:, 3], scenes.activity[..., 96:128].mean(-1))
        torch.testing.assert_close(targets[:, 9], scenes.activity[..., 288:].mean(-1))
    assert abs(empty / rows - EMPTY) < 0.08 and 2 in sounds and 1 in sounds
    assert len(levels) > 5 and max(levels) < SECOND_DB + 0.5 and max(levels) > SECOND_DB / 2


def test_a_frame_head_and_soundscapes_go_together():
    base = {"model.name": "mn04", "data.sample_rate": 32000, "features.frontend": "efficientat",
            "features.n_fft": 1024, "features.win_length": 800, "features.hop_length": 320,
            "features.n_mels": 128, "data.clip_seconds": 2.0}
    good = tiny_config(**base, **{"model.args.frame_head": True, "augment.scenes": True})
    SoundClassifier.check(good)
    with pytest.raises(ConfigError, match=r"augment\.scenes=true"):
        SoundClassifier.check(tiny_config(**base, **{"model.args.frame_head": True}))
    with pytest.raises(ConfigError, match="model has none"):
        SoundClassifier.check(tiny_config(**base, **{"augment.scenes": True}))
    with pytest.raises(ConfigError, match="mixup_alpha"):
        SoundClassifier.check(good.replace({"augment.mixup_alpha": 0.3}))
    with pytest.raises(ConfigError, match=r"frame_head.*head=mlp"):
        SoundClassifier.check(good.replace({"model.args.head": "linear"}))
    # one pass of the trunk gives the clip logits and a frame per 32 log-mel frames
    model = SoundClassifier.from_config(good).eval()
    with torch.no_grad():
        logits, frames = model.backbone(model.features(torch.zeros(2, 64000))[0], None, with_frames=True)
    assert logits.shape == (2, good.model.num_classes)
    assert frames.shape == (2, 7, good.model.num_classes)  # 201 log-mel frames → 7


def test_a_frames_context_starts_as_nothing_and_reaches_its_steps_each_side():
    """model.args.frame_context=2: at the start the frames are the frame head's alone (the
    context block is the identity, as the probed head expects); once it has learnt, a step's
    frame reads the trunk's steps up to 2 away and none further."""
    base = {"model.name": "mn04", "model.args.frame_head": True, "augment.scenes": True}
    with pytest.raises(ConfigError, match=r"frame_context=9: must be 0 to 8"):
        SoundClassifier.from_config(tiny_config(**base, **{"model.args.frame_context": 9}))
    with pytest.raises(ConfigError, match=r"frame_context=2: .*needs frame_head=true"):
        SoundClassifier.from_config(tiny_config(**{"model.name": "mn04", "model.args.frame_context": 2}))
    backbone = SoundClassifier.from_config(tiny_config(**base, **{"model.args.frame_context": 2})).backbone.eval()
    trunk = torch.randn(1, backbone.embed_dim, 3, 12)
    with torch.no_grad():
        plain = backbone.frame_head(trunk.mean(dim=2).transpose(1, 2))
        torch.testing.assert_close(backbone.frame_logits(trunk), plain)
        torch.nn.init.normal_(backbone.frame_context.layers[-1].weight)  # as if trained
        changed = trunk.clone()
        changed[..., 6] += 1.0
        moved = (backbone.frame_logits(changed) - backbone.frame_logits(trunk)).abs().amax(-1)[0]
    assert (moved[4:9] > 1e-4).all() and (moved[[*range(4), *range(9, 12)]] == 0).all()
    # the new layers learn at the frame head's rate, not the trunk's
    assert {id(p) for p in backbone.frame_context.parameters()} <= {id(p) for p in backbone.frame_parameters()}


def _overlapping_tones() -> np.ndarray:
    """10 s: a 500 Hz tone 1–6 s and a 2000 Hz one 3–5 s (both at once for 2 s), quiet hiss."""
    return tones(10, [(1.0, 6.0, 500), (3.0, 5.0, 2000)], RATE, np.random.default_rng(1))


def test_a_frame_model_reports_two_sounds_at_once_the_same_in_any_chunking(tmp_path):
    import soundfile as sf

    wav = _overlapping_tones()
    path = tmp_path / "two.wav"
    sf.write(path, wav, RATE, subtype="FLOAT")
    settings = EventSettings(min_duration=0.25)
    events = detect_events(FrameToneModel(), path, settings)
    assert [e.label for e in events] == ["low", "high"]
    for e, (start, end) in zip(events, ((1.0, 6.0), (3.0, 5.0)), strict=True):
        assert abs(e.start - start) <= 0.3 and abs(e.end - end) <= 0.6
    # the defaults a frame model gets: its clip length as the window, the median of 3 hops
    stream = Stream(FrameToneModel(), settings)
    assert stream.settings.window == 2.0 and stream.settings.smooth == 3 and stream.settings.on == 0.7
    messages = []
    for k in range(0, wav.size, 1234):  # odd chunks
        messages += stream.feed(wav[k:k + 1234]).events
    messages += stream.finish().events
    assert [e.to_dict() for e in events_of(messages)] == [e.to_dict() for e in events]
    # both are open at once: the high tone starts before the low one ends
    starts = [m for m in messages if m.state == "start"]
    low_end = next(m for m in messages if m.state == "end" and m.label == "low")
    assert [m.label for m in starts] == ["low", "high"] and starts[1].decided < low_end.decided


def test_a_frame_models_settings_are_its_own_unless_given():
    from escnet.deploy.events import CLIP_DEFAULTS

    assert EventSettings().resolved(False) == CLIP_DEFAULTS
    framed = EventSettings(on=0.6).for_model(FrameToneModel().info)
    assert framed.on == 0.6 and framed.window == 2.0 and framed.smooth == 3
    with pytest.raises(Exception, match="event setting window=3"):
        EventSettings(window=3.0).for_model(FrameToneModel().info)


def test_lookahead_reads_an_older_frame_deciding_later_at_the_same_place(tmp_path):
    from conftest import ToneModel

    wav = _overlapping_tones()
    runs = {}
    for lookahead in (0, 2):
        stream = Stream(FrameToneModel(), EventSettings(min_duration=0.25, lookahead=lookahead))
        messages = stream.feed(wav).events + stream.finish().events
        runs[lookahead] = [m for m in messages if m.state == "start"]
    assert [m.label for m in runs[0]] == [m.label for m in runs[2]] == ["low", "high"]
    for now, later in zip(runs[0], runs[2], strict=True):
        assert abs(later.time - now.time) <= 0.3  # placed where the sound is, either way
        assert later.decided - now.decided == pytest.approx(0.5, abs=0.26)  # two 0.25 s frames later
    with pytest.raises(Exception, match="lookahead=1: reads a frame model's frames"):
        EventSettings(lookahead=1).for_model(ToneModel().info)
    with pytest.raises(Exception, match="lookahead=9: must be 0 to 4"):
        EventSettings(lookahead=9).for_model(FrameToneModel().info)


def test_a_frame_model_is_read_over_its_training_scenes_unpadded_and_adding_audio_calls_no_model():
    """A frame model that says how long its scenes were (``frame_window``) and its frame step is
    read over windows that long, not its clip length; its frames, the last running past the
    window's end, are placed where they are; a server adds each frame of audio at once and
    calls the model only where :meth:`Stream.add` says a window is due."""
    wav = _overlapping_tones()
    model = FrameToneModel(frame_seconds=0.3, frame_window=1.0)  # 4 frames, the last 0.2 s past
    shapes: list[tuple[int, int]] = []
    score = model.score
    model.score = lambda windows: shapes.append(windows.shape) or score(windows)
    stream = Stream(model, EventSettings(min_duration=0.25))
    assert stream.settings.window == 1.0
    messages, due = [], 0
    for k in range(0, wav.size, 800):  # 0.1 s frames, as a microphone sends them
        before = len(shapes)
        if stream.add(wav[k:k + 800]):
            assert len(shapes) == before  # adding never calls the model
            due += 1
            messages += stream.score_due().events
            assert len(shapes) - before <= 1  # one call for the window, none if it was silent
    messages += stream.finish().events
    assert due == 40 and 20 <= len(shapes) < 40  # a window every 0.25 s of 10 s; quiet ones not scored
    assert {s[1] for s in shapes} == {RATE}  # 1 s windows, unpadded to the 2 s clip
    events = events_of(messages)
    assert [e.label for e in events] == ["low", "high"]
    for e, (start, end) in zip(events, ((1.0, 6.0), (3.0, 5.0)), strict=True):
        assert abs(e.start - start) <= 0.3 and abs(e.end - end) <= 0.6
    # each hop's frame is placed at the middle of the part of the window it covers: the third of
    # four 0.3 s frames ends 0.1 s before the window's end; the last covers its final 0.1 s
    for lookahead, before_end in ((1, 0.25), (0, 0.05)):
        hops = Stream(model, EventSettings(lookahead=lookahead)).feed(wav).scores
        assert all(h.centre == pytest.approx(h.end - before_end) for h in hops if h.probabilities is not None)
    # the same events from feed() in other chunks
    again = Stream(model, EventSettings(min_duration=0.25))
    other = [m for k in range(0, wav.size, 3001) for m in again.feed(wav[k:k + 3001]).events]
    assert events_of(other + again.finish().events) == events
    # more frames back than a window holds: the setting is named
    with pytest.raises(EscnetError, match=r"lookahead=4: a window of 0\.5 s gives 2 frame"):
        Stream(FrameToneModel(frame_seconds=0.3, frame_window=0.5), EventSettings(lookahead=4))
    short = Stream(FrameToneModel(steps=3), EventSettings(lookahead=3))  # no step: its frames tell
    with pytest.raises(EscnetError, match=r"lookahead=3: a window of 2 s gives 3 frame"):
        short.feed(wav[: 2 * RATE])


def test_a_frame_models_step_and_scenes_travel_in_its_metadata_and_bad_ones_are_refused(tmp_path):
    from dataclasses import replace

    from escnet.deploy.onnx_model import ModelInfo
    from escnet.errors import CheckpointError

    info = replace(FrameToneModel().info, frame_seconds=0.32, frame_window=3.0)
    back = ModelInfo.from_metadata(info.metadata(), tmp_path / "m.onnx")
    assert (back.frame_seconds, back.frame_window) == (0.32, 3.0)
    old = {k: v for k, v in info.metadata().items() if k not in ("escnet.frame_seconds", "escnet.frame_window")}
    assert ModelInfo.from_metadata(old, tmp_path / "m.onnx").frame_window is None  # escnet 0.8's files
    for bad in ("-1", "0", "true", '"3"', "1e9", "NaN", "[3]"):
        with pytest.raises(CheckpointError, match=r"m\.onnx: damaged escnet metadata"):
            ModelInfo.from_metadata({**info.metadata(), "escnet.frame_window": bad}, tmp_path / "m.onnx")


def test_a_frame_model_starts_at_a_new_sounds_first_frame_and_follows_it_through_a_pause():
    """After quiet, the first frame that hears a sound starts its event (the median of 3 would
    wait a hop for a second one), a blip too short to announce is still never an event, and a
    sound that pauses and begins again while its class is still heard (a dog's next bark) is
    one event that ends where the sound does."""
    model = FrameToneModel(clip_seconds=3.0, frame_seconds=0.32, frame_window=3.0)
    rng = np.random.default_rng(0)
    # a 0.32 s frame hears the tone once it holds a third of it: in the frame read at the window
    # ending at 1.25 s (0.44 to 0.12 s before the end); the median of 3 hears it at 1.5 s
    stream = Stream(model, EventSettings(min_duration=0.2))
    messages = stream.feed(tones(6, [(1.0, 3.0, 500)], RATE, rng)).events + stream.finish().events
    start = next(m for m in messages if m.state == "start")
    assert start.label == "low" and start.decided == pytest.approx(1.25) and start.time == pytest.approx(1.0)
    stream = Stream(model, EventSettings(min_duration=0.2))
    assert stream.feed(tones(6, [(1.0, 1.15, 500)], RATE, rng)).events + stream.finish().events == []
    # 1.0-2.0 s, a 0.6 s pause, 2.6-4.0 s: one event, to 4.0 s (not to the first part's end, nor
    # to where the frames' median last heard it)
    stream = Stream(model)
    wav = tones(9, [(1.0, 2.0, 500), (2.6, 4.0, 500)], RATE, rng)
    events = events_of(stream.feed(wav).events + stream.finish().events)
    assert [(e.label, round(e.start, 2), round(e.end, 2)) for e in events] == [("low", 1.0, 4.0)]


def test_a_sound_the_frames_know_late_starts_where_it_began_unless_another_event_is_open():
    """A sound heard as its class only after a while (here: a tone too faint for its frames for
    its first 1.5 s, loud enough for the level envelope) starts where it began after quiet, not
    where its frames rose; with another sound's event open, the sound that began may be that
    one's, and its frames say where."""
    model = FrameToneModel(clip_seconds=3.0, frame_seconds=0.32, frame_window=3.0)
    t = np.arange(9 * RATE) / RATE

    def low(lo: float, hi: float, amplitude: float) -> np.ndarray:
        return amplitude * np.sin(2 * np.pi * 500 * t) * ((t >= lo) & (t < hi))

    faint_then_loud = low(1.0, 2.5, 0.03) + low(2.5, 4.5, 0.3)
    alone = tones(9, [], RATE, np.random.default_rng(0)) + faint_then_loud.astype(np.float32)
    stream = Stream(model)
    events = events_of(stream.feed(alone).events + stream.finish().events)
    assert [(e.label, round(e.start, 2)) for e in events] == [("low", 1.0)]
    # the same with a high tone sounding from 0.5 s: its event is open when the low one's rises
    both = tones(9, [(0.5, 3.5, 2000)], RATE, np.random.default_rng(0)) + faint_then_loud.astype(np.float32)
    stream = Stream(model)
    events = {e.label: e for e in events_of(stream.feed(both).events + stream.finish().events)}
    assert events["high"].start == pytest.approx(0.5, abs=0.05) and 2.0 <= events["low"].start <= 2.5
