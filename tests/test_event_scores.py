"""Scoring events on annotated recordings: sed_eval's F-scores and error rates, PSDS, the
annotations checked row by row, and ``escnet evaluate-events`` on a real model."""

import json
import random
from types import SimpleNamespace as Ev

import numpy as np
import pytest
import soundfile as sf
from conftest import ToneModel, tone_scene

from escnet.cli import main
from escnet.data.annotations import Annotation, Recordings, read_annotations
from escnet.data.audio import load_audio
from escnet.data.tables import read_esc50
from escnet.deploy.event_evaluation import evaluate_events, match_annotations
from escnet.deploy.event_metrics import Scores, event_counts, segment_counts
from escnet.deploy.events import EventSettings
from escnet.deploy.psds import SCENARIOS, PsdsSettings, ScoreTrack, psds
from escnet.errors import DataError


def ev(label, start, end):
    return Ev(label=label, start=start, end=end)


def test_event_based_counts_by_hand_substitutions_and_undefined_scores():
    ref = [ev("dog", 1.0, 2.0), ev("dog", 5.0, 9.0), ev("rain", 3.0, 4.0)]
    est = [ev("dog", 1.1, 2.1),    # onset and offset within 0.2 s: hit
           ev("dog", 5.1, 8.3),    # offset 0.7 s early, within 20 % of 4 s: hit
           ev("dog", 1.15, 2.05),  # the first dog again: counted once (matching), an insertion
           ev("cat", 3.1, 4.1)]    # where the rain is, with the wrong label: a substitution
    overall, per_class = event_counts(ref, est)
    assert (overall.ref, overall.sys, overall.tp, overall.subs, overall.fn, overall.fp) == (3, 4, 2, 1, 0, 1)
    assert overall.f1 == pytest.approx(4 / 7) and overall.error_rate == pytest.approx(2 / 3)
    assert per_class["dog"].f1 == pytest.approx(0.8)
    assert per_class["rain"].precision is None and per_class["rain"].f1 is None  # nothing detected
    assert per_class["rain"].error_rate == 1.0
    assert per_class["cat"].recall is None and per_class["cat"].error_rate is None  # nothing annotated
    scores = Scores.empty()
    scores.add((overall, per_class))
    average = scores.class_average()
    assert average["f1"] == pytest.approx(0.8) and average["error_rate"] == pytest.approx(0.75)
    json.dumps(scores.to_dict(), allow_nan=False)  # undefined is null, never NaN
    nothing, _ = event_counts([], [])
    assert (nothing.f1, nothing.precision, nothing.recall, nothing.error_rate) == (None, None, None, None)
    only_false, _ = event_counts([], [ev("dog", 0, 1)])
    assert only_false.precision == 0.0 and only_false.f1 is None


def test_segment_based_conventions_zero_length_and_past_the_end():
    ref = [ev("dog", 0.2, 1.0),     # segment 0 (ends on its boundary)
           ev("bell", 2.0, 2.0),    # an instant on a boundary: no segment
           ev("bell", 2.5, 2.5),    # an instant inside segment 2
           ev("rain", 3.2, 5.0)]    # runs past the 3.5 s recording: segment 4 is not counted
    est = [ev("dog", 0.5, 1.5), ev("rain", 3.0, 3.4), ev("cat", 2.1, 2.2)]
    overall, per_class = segment_counts(ref, est, duration=3.5)
    assert (per_class["dog"].tp, per_class["dog"].fp, per_class["dog"].fn) == (1, 1, 0)
    assert (per_class["bell"].ref, per_class["bell"].fn) == (1, 1)
    assert (per_class["rain"].ref, per_class["rain"].tp) == (1, 1)
    # per segment: 0 hit; 1 an insertion; 2 bell against cat, a substitution; 3 hit
    assert (overall.ref, overall.sys, overall.tp, overall.subs, overall.fn, overall.fp) == (3, 4, 2, 1, 0, 1)
    assert overall.error_rate == pytest.approx(2 / 3)


def _random_events(rng, labels, n, length=20.0):
    out = []
    for _ in range(n):
        a = round(rng.uniform(0, length), 1)
        out.append(ev(rng.choice(labels), a, round(a + rng.choice([0.0, 0.5, 1.0, rng.uniform(0, 4)]), 1)))
    return out


def _same(ours, theirs) -> bool:
    """Our score against sed_eval's: ``None`` where it has NaN."""
    return (theirs != theirs) if ours is None else abs(ours - theirs) < 1e-9


def test_counts_and_scores_agree_with_sed_eval_on_random_event_lists():
    sed_eval = pytest.importorskip("sed_eval", reason="sed_eval (and dcase_util) not installed")
    rng = random.Random(0)
    labels = ["a", "b", "c"]
    for _ in range(200):
        ref, est = _random_events(rng, labels, rng.randint(0, 7)), _random_events(rng, labels, rng.randint(0, 7))
        as_dicts = [[{"event_label": e.label, "onset": e.start, "offset": e.end, "filename": "x"} for e in x]
                    for x in (ref, est)]
        event = sed_eval.sound_event.EventBasedMetrics(labels, t_collar=0.2, percentage_of_length=0.2)
        event.evaluate(*as_dicts)
        segment = sed_eval.sound_event.SegmentBasedMetrics(labels, time_resolution=1.0)
        segment.evaluate(*as_dicts, evaluated_length_seconds=24.0)
        for ours, theirs in ((event_counts(ref, est, 0.2, 0.2), event), (segment_counts(ref, est, 24.0), segment)):
            o, t = ours[0], theirs.overall
            assert (o.tp, o.fn, o.fp, o.ref, o.sys) == (t["Ntp"], t.get("D", t["Nfn"]), t.get("I", t["Nfp"]),
                                                        t["Nref"], t["Nsys"])
            assert o.subs == t.get("S", t.get("Nsubs"))
            for label in labels:
                mine, c = ours[1].get(label), theirs.class_wise[label]
                assert ((mine.tp, mine.fn, mine.fp) if mine else (0, 0, 0)) == (c["Ntp"], c["Nfn"], c["Nfp"])
            scores = Scores.empty()
            scores.add(ours)
            results = theirs.results()
            assert _same(o.f1, results["overall"]["f_measure"]["f_measure"])
            if o.error_rate is not None:  # sed_eval divides by N + eps: no reference, no rate
                assert _same(o.error_rate, results["overall"]["error_rate"]["error_rate"])
            average = scores.class_average()["f1"]
            theirs_average = results["class_wise_average"]["f_measure"]["f_measure"]
            assert (theirs_average != theirs_average) if average is None else abs(average - theirs_average) < 1e-4


def _track(pieces, duration, n_classes=1, k=0):
    """A score track from ``(start, end, score)`` pieces of class ``k``, zero elsewhere."""
    edges = sorted({0.0, duration, *(t for a, b, _ in pieces for t in (a, b))})
    scores = np.zeros((len(edges) - 1, n_classes))
    for a, b, s in pieces:
        scores[edges.index(a):edges.index(b), k] = s
    return ScoreTrack(np.array(edges), scores)


def test_psds_by_hand():
    # 72 s of audio: one false detection is 50 per hour
    ref = {"x": [ev("dog", 1, 2), ev("dog", 5, 6)]}
    track = {"x": _track([(1, 2, 0.9), (5, 6, 0.5), (8, 9, 0.7)], 72.0)}
    s = PsdsSettings(dtc=0.7, gtc=0.7, alpha_st=1.0, max_efpr=100)
    # thresholds 0.9: (1/2 found, 0 per hour); 0.7: (1/2, 50); 0.5: (2/2, 50)
    assert psds(track, ref, {"x": 72.0}, ["dog"], s)["psds"] == pytest.approx((0.5 * 50 + 1.0 * 50) / 100)
    # a detection half inside its event fails the tolerance of scenario 1, not that of scenario 2
    shifted = {"x": _track([(1.5, 2.5, 0.9), (5, 6, 0.9)], 72.0)}
    strict = psds(shifted, ref, {"x": 72.0}, ["dog"], SCENARIOS[1])
    loose = psds(shifted, ref, {"x": 72.0}, ["dog"], SCENARIOS[2])
    assert strict["psds"] == pytest.approx(0.5 * 50 / 100)  # one found, with one false per 72 s
    assert loose["psds"] == pytest.approx(1.0)


def test_psds_classes_average_less_their_spread_and_cross_triggers():
    ref = {"x": [ev("dog", 1, 2), ev("rain", 10, 20)]}
    scores = _track([(1, 2, 0.9)], 72.0, 2, 0).scores
    edges = _track([(1, 2, 0.9)], 72.0, 2, 0).edges
    # rain is never detected: its ROC is 0, dog's is 1; mean 0.5, std 0.5
    assert psds({"x": ScoreTrack(edges, scores)}, ref, {"x": 72.0}, ["dog", "rain"],
                PsdsSettings(0.7, 0.7, alpha_st=0.0))["psds"] == pytest.approx(0.5)
    assert psds({"x": ScoreTrack(edges, scores)}, ref, {"x": 72.0}, ["dog", "rain"],
                PsdsSettings(0.7, 0.7, alpha_st=1.0))["psds"] == pytest.approx(0.0)
    # dog also fires inside the rain: a false positive, and a cross-trigger on rain
    both = _track([(1, 2, 0.9), (12, 14, 0.9)], 72.0, 2, 0)
    plain = psds({"x": both}, ref, {"x": 72.0}, ["dog", "rain"], PsdsSettings(0.7, 0.7, alpha_st=0.0))
    crossed = psds({"x": both}, ref, {"x": 72.0}, ["dog", "rain"],
                   PsdsSettings(0.7, 0.7, 0.3, alpha_ct=1.0, alpha_st=0.0))
    assert plain["per_class"]["dog"]["auc"] == pytest.approx(0.5)  # found, at 50 false per hour
    # one cross-trigger in 10 s of rain is 360 per hour: past 100 before dog is found
    assert crossed["per_class"]["dog"]["auc"] == pytest.approx(0.0)


def test_psds_agrees_with_sed_scores_eval_on_random_scores():
    pytest.importorskip("sed_scores_eval", reason="sed_scores_eval not installed")
    from sed_scores_eval.base_modules.scores import create_score_dataframe
    from sed_scores_eval.intersection_based import psds as their_psds

    rng = np.random.default_rng(0)
    classes, tried = ["a", "b", "c"], 0
    while tried < 8:
        tracks, truth, frames = {}, {}, {}
        for f in ("f0", "f1", "f2"):
            edges = np.unique(np.round(np.r_[0, rng.uniform(0, 60, 39), 60], 2))
            scores = np.round(rng.uniform(0, 1, (len(edges) - 1, 3)) ** 3, 1)
            tracks[f], frames[f] = ScoreTrack(edges, scores), create_score_dataframe(scores, edges, classes)
            truth[f] = []
            for _ in range(rng.integers(1, 5)):
                a, c = round(float(rng.uniform(0, 55)), 2), str(rng.choice(classes))
                b = min(round(a + float(rng.uniform(0.5, 6)), 2), 60.0)
                if all(c != label or b < x or a > y for x, y, label in truth[f]):  # one sound, one row
                    truth[f].append((a, b, c))
        if {c for events in truth.values() for *_, c in events} != set(classes):
            continue  # sed_scores_eval wants every class annotated
        tried += 1
        durations = dict.fromkeys(tracks, 60.0)
        reference = {f: [ev(c, a, b) for a, b, c in events] for f, events in truth.items()}
        for s in (*SCENARIOS.values(), PsdsSettings(0.5, 0.5, alpha_st=0.0, max_efpr=500)):
            theirs = their_psds(scores=frames, ground_truth=truth, audio_durations=durations,
                                dtc_threshold=s.dtc, gtc_threshold=s.gtc, cttc_threshold=s.cttc,
                                alpha_ct=s.alpha_ct, alpha_st=s.alpha_st, max_efpr=s.max_efpr)[0]
            assert psds(tracks, reference, durations, classes, s)["psds"] == pytest.approx(theirs, abs=1e-4)


def _recordings(tmp_path):
    rate = 8000
    wav, truth = tone_scene(rate)
    (tmp_path / "rec" / "day2").mkdir(parents=True)
    sf.write(tmp_path / "rec" / "scene.wav", wav, rate, subtype="FLOAT")
    sf.write(tmp_path / "rec" / "day2" / "quiet.flac", wav * 0, rate)
    return tmp_path / "rec", truth


def _csv(tmp_path, rows, name="ann.csv"):
    path = tmp_path / name
    path.write_text("file,onset,offset,label\n" + "".join(f"{r}\n" for r in rows))
    return path


@pytest.mark.parametrize("row, says", [
    ("nowhere.wav,1,2,low", "line 3: no recording 'nowhere.wav'"),
    ("scene.wav,1,2,bird", "line 3: label 'bird' is none of the model's 2 classes"),
    ("scene.wav,9.5,10,low", "line 3: starts at 9.5 s, after scene.wav ends (9.000 s)"),
    ("scene.wav,2.5,3.5,LOW ", "line 3: 'low' from 2.5 to 3.5 s overlaps"),
    ("scene.wav,3,1,low", "line 3: ends at 1 s, before it starts"),
])
def test_annotations_are_checked_row_by_row(tmp_path, row, says):
    folder, _ = _recordings(tmp_path)
    with pytest.raises(DataError, match=says.replace("(", r"\(").replace(")", r"\)")):
        rows = read_annotations(_csv(tmp_path, ["scene.wav,1.0,3.0,low", row]))
        match_annotations(rows, folder, ["low", "high"])


def test_annotations_as_spreadsheets_and_raven_write_them(tmp_path):
    rows = "file,onset,offset,label\nscene.wav,1.5,3,low\n"
    (tmp_path / "u16.csv").write_text(rows, encoding="utf-16")  # a spreadsheet's "Unicode text"
    (tmp_path / "semi.csv").write_text("file;onset;offset;label\nscene.wav;1,5;3;low\n")  # decimal comma
    (tmp_path / "tabs.csv").write_text(rows.replace(",", "\t"))
    for name in ("u16.csv", "semi.csv", "tabs.csv"):
        assert [(a.file, a.start, a.end, a.label) for a in read_annotations(tmp_path / name)] == \
            [("scene.wav", 1.5, 3.0, "low")], name
    (tmp_path / "latin.csv").write_bytes(b"file,onset,offset,label\nscene.wav,1,2,Gr\xfcnspecht\n")
    with pytest.raises(DataError, match=r"latin\.csv: line 2: annotation file is not UTF-8 text \(byte 0xfc\)"):
        read_annotations(tmp_path / "latin.csv")
    raven = "Selection\tView\tBegin Time (s)\t{}Begin Path\tAnnotation\n"
    (tmp_path / "a.Table.1.selections.txt").write_text(raven.format("") + "1\tSpectrogram 1\t0.5\tx.wav\tdog\n")
    with pytest.raises(DataError, match=r"a Raven selection table without the column\(s\) End Time \(s\)"):
        read_annotations(tmp_path / "a.Table.1.selections.txt")
    (tmp_path / "b.Table.1.selections.txt").write_text(raven.format("End Time (s)\t") + "1\tSpectrogram 1\t0.5\t1\n")
    with pytest.raises(DataError, match=r"line 2: no label"):  # a row cut short
        read_annotations(tmp_path / "b.Table.1.selections.txt")


def test_an_annotation_names_its_recording_by_path_name_or_a_longer_path():
    recordings = Recordings(["night/a.wav", "day/a.wav", "day/b.flac", "c.WAV"])

    def find(file):
        return recordings.find(Annotation(file, 0, 1, "x", where="t.csv: line 2"))

    assert [find(f) for f in ("day/a.wav", "./day/b.flac", "b", "b.flac", "C:\\Users\\me\\rec\\day\\b.flac",
                              "/home/me/rec/night/a.wav", "NIGHT/A.WAV", "c.wav", "c", "e.wav", "day/c.wav")] == \
        ["day/a.wav", "day/b.flac", "day/b.flac", "day/b.flac", "day/b.flac", "night/a.wav",
         "night/a.wav", "c.WAV", "c.WAV", None, "c.WAV"]
    with pytest.raises(DataError, match=r"t\.csv: line 2: 'a\.wav' could be any of day/a\.wav, night/a\.wav"):
        find("a.wav")


def test_audacity_tracks_match_their_recordings_and_unannotated_ones_hold_no_events(tmp_path):
    folder, _ = _recordings(tmp_path)
    track = tmp_path / "scene.txt"  # an Audacity label track, named after its recording
    track.write_text("1.0\t3.0\tLow\n6.5\t7.5\thigh\n")
    (folder / "broken.wav").write_bytes(b"RIFF not really")
    reference = match_annotations(read_annotations(track), folder, ["low", "high"])
    assert sorted(reference.files) == ["day2/quiet.flac", "scene.wav"]
    assert list(reference.unreadable) == ["broken.wav"]  # listed, left out
    named = _csv(tmp_path, ["./broken.wav,1,2,low"])  # unless a row names it
    with pytest.raises(DataError, match=r"line 2: broken.wav cannot be read"):
        match_annotations(read_annotations(named), folder, ["low", "high"])
    assert [(a.file, a.label) for a in reference.events["scene.wav"]] == [("scene.wav", "low"),
                                                                         ("scene.wav", "high")]
    # --audio given a recording instead of its folder, or a folder that is not there
    rows = read_annotations(track)
    with pytest.raises(DataError, match=r"scene.wav: not a folder; give the folder that holds"):
        match_annotations(rows, folder / "scene.wav", ["low", "high"])
    with pytest.raises(DataError, match=r"nowhere: no such folder of recordings"):
        match_annotations(rows, folder / "nowhere", ["low", "high"])
    assert reference.events["day2/quiet.flac"] == []


def test_a_model_scored_on_tone_recordings(tmp_path):
    folder, truth = _recordings(tmp_path)
    path = _csv(tmp_path, [f"scene.wav,{a},{b},{label}" for label, a, b in truth])
    reference = match_annotations(read_annotations(path), folder, ["low", "high"])
    result = evaluate_events(ToneModel(), reference, EventSettings(window=0.5, hop=0.25, smooth=1),
                             collar=0.5, offset_share=0.2)
    report = result.to_dict()
    assert report["files"] == 2 and report["events"] == 2 and report["detected"] == 2
    assert report["event_based"]["overall"]["f1"] == 1.0  # both found, within 0.5 s
    assert report["segment_based"]["overall"]["f1"] >= 0.8  # a detection may spill into a segment
    assert report["psds"]["classes"] == ["high", "low"] and report["psds"]["psds"] > 0.5
    json.dumps(report, allow_nan=False)
    # the same recording, annotated with a third of its events shifted by 2 s: worse, not better
    shifted = _csv(tmp_path, ["scene.wav,3.0,5.0,low", "scene.wav,6.5,7.5,high"], "shifted.csv")
    worse = evaluate_events(ToneModel(), match_annotations(read_annotations(shifted), folder, ["low", "high"]),
                            EventSettings(window=0.5, hop=0.25, smooth=1), collar=0.5).to_dict()
    assert worse["event_based"]["overall"]["f1"] == 0.5
    assert worse["psds"]["psds"] < report["psds"]["psds"]


def test_evaluate_events_command_on_real_clips_and_bad_input(five_class_exports, esc50, tmp_path, capsys):
    table = read_esc50(esc50)
    fold1 = [(path, table.classes[label]) for path, label, fold in
             zip(table.paths, table.labels, table.folds, strict=True) if fold == 1]
    clips = [c for name in ("dog", "rain") for c in [c for c in fold1 if c[1] == name][:2]]
    rate, gap = 16000, np.zeros(16000, np.float32)
    parts, rows, t = [], [], 0.0
    for path, name in clips:
        wav = load_audio(path, rate)
        parts += [wav, gap]
        rows.append(f"scene.wav,{t:.3f},{t + wav.size / rate:.3f},{name}")
        t += (wav.size + gap.size) / rate
    (tmp_path / "rec").mkdir()
    sf.write(tmp_path / "rec" / "scene.wav", np.concatenate(parts), rate)
    annotations = _csv(tmp_path, rows)
    model = str(five_class_exports[0].path)
    code = main(["evaluate-events", model, "--audio", str(tmp_path / "rec"), "--annotations",
                 str(annotations), "--json", "--out", str(tmp_path / "eval"), "--quiet"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == len(rows) and report["hours"] == pytest.approx(t / 3600, abs=1e-3)
    assert set(report["event_based"]["per_class"]) >= {"dog", "rain"}
    assert report["segment_based"]["overall"]["ref"] > 0
    assert (tmp_path / "eval" / "evaluation.json").is_file()
    assert len(list((tmp_path / "eval").glob("*.png"))) == 1
    # the text report, and a bad row: one line naming it, exit 2, nothing scored
    assert main(["evaluate-events", model, "--audio", str(tmp_path / "rec"), "--annotations",
                 str(annotations), "--quiet"]) == 0
    assert "event-based" in capsys.readouterr().out
    bad = _csv(tmp_path, [*rows, "scene.wav,1,2,helicopter"], "bad.csv")
    assert main(["evaluate-events", model, "--audio", str(tmp_path / "rec"), "--annotations", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"line {len(rows) + 2}: label 'helicopter'" in err[0]
    # an output folder that holds something is refused before any work
    assert main(["evaluate-events", model, "--audio", str(tmp_path / "rec"), "--annotations",
                 str(annotations), "--out", str(tmp_path / "eval")]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["evaluate-events", model, "--audio", str(tmp_path / "rec"), "--annotations",
                 str(annotations), "--out", str(annotations)]) == 2  # a file where a folder goes
    assert "exists and is a file, not a folder; choose a new folder" in capsys.readouterr().err
    assert annotations.read_text().startswith("file,")  # untouched
