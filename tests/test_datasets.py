import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import tiny_config, tone, write_esc50_like

from escnet.config import TaskConfig
from escnet.data.cache import build_waveform_cache
from escnet.data.datasets import WaveformDataset, class_balanced_sampler, collate
from escnet.data.tables import load_table, make_splits, parse_esc50_name, read_esc50
from escnet.errors import AudioError, ConfigError, DataError


def test_parse_esc50_name():
    assert parse_esc50_name("1-100032-A-0.wav") == (1, 0)
    assert parse_esc50_name("5-9032-C-49.ogg") == (5, 49)
    assert parse_esc50_name("audio/3-1-B-12.flac") == (3, 12)
    assert parse_esc50_name("noise.wav") is None
    assert parse_esc50_name("1-2-A.wav") is None


def test_stem_matching_across_extensions(tmp_path):
    root = write_esc50_like(tmp_path / "d", [
        ("1-1-A-0.wav", 1, 0, ".ogg"), ("1-2-A-3.wav", 1, 3, ".flac"), ("2-3-A-0.wav", 2, 0, ".wav"),
        ("2-4-A-3.wav", 2, 3, ".ogg"),
    ])
    table = read_esc50(root)
    assert [p.name for p in table.paths] == ["1-1-A-0.ogg", "1-2-A-3.flac", "2-3-A-0.wav", "2-4-A-3.ogg"]
    assert table.classes == ["class0", "class3"] and table.labels.tolist() == [0, 1, 0, 1]
    assert table.folds.tolist() == [1, 1, 2, 2]
    esc10 = read_esc50(root, "esc10")  # the helper flags even targets as ESC-10
    assert esc10.classes == ["class0"] and len(esc10) == 2


def test_missing_audio_and_columns(tmp_path):
    root = write_esc50_like(tmp_path / "d", [("1-1-A-0.wav", 1, 0, ".wav"), ("2-1-A-1.wav", 2, 1, ".wav")])
    (root / "audio" / "2-1-A-1.wav").unlink()
    with pytest.raises(DataError, match="no audio file for 1 row"):
        read_esc50(root)
    assert len(read_esc50(root, skip_missing=True)) == 1
    (root / "meta" / "esc50.csv").write_text("filename,target\n1-1-A-0.wav,0\n")
    with pytest.raises(DataError, match=r"missing column.*fold"):
        read_esc50(root)


def test_glob_mode_parses_labels(tmp_path):
    for name in ["1-1-A-0.wav", "1-2-A-7.ogg", "2-3-B-7.flac", "notes.txt"]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            sf.write(tmp_path / name, tone(300, 8000, 0.1), 8000)
    table = load_table(TaskConfig().replace({"data.data_dir": str(tmp_path)}))
    assert table.classes == ["0", "7"] and table.labels.tolist() == [0, 1, 1]
    assert table.folds.tolist() == [1, 1, 2]


def test_class_folders_get_stratified_folds(tmp_path):
    for cls in ["cat", "dog", "rain"]:
        (tmp_path / cls).mkdir()
        for i in range(10):
            sf.write(tmp_path / cls / f"{i}.wav", tone(300, 8000, 0.1), 8000)
    table = load_table(TaskConfig().replace({"data.data_dir": str(tmp_path), "train.seed": 3}))
    assert table.classes == ["cat", "dog", "rain"] and len(table) == 30
    assert table.fold_ids == [1, 2, 3, 4, 5]
    for label in range(3):  # every class spread evenly: 2 clips per fold
        assert np.bincount(table.folds[table.labels == label], minlength=6)[1:].tolist() == [2] * 5
    assert any("stratified" in n for n in table.notes)
    again = load_table(TaskConfig().replace({"data.data_dir": str(tmp_path), "train.seed": 3}))
    assert again.folds.tolist() == table.folds.tolist()


def test_csv_table(tmp_path):
    for i in range(4):
        sf.write(tmp_path / f"{i}.wav", tone(300, 8000, 0.1), 8000)
    (tmp_path / "t.csv").write_text("path,label,fold\n0.wav,a,1\n1.wav,b,1\n2.wav,a,2\n3.wav,b,2\n")
    table = load_table(TaskConfig().replace({"data.data_dir": str(tmp_path / "t.csv")}))
    assert table.classes == ["a", "b"] and table.folds.tolist() == [1, 1, 2, 2]
    (tmp_path / "bad.csv").write_text("file,label\n0.wav,a\n")
    with pytest.raises(DataError, match=r"missing column.*path"):
        load_table(TaskConfig().replace({"data.data_dir": str(tmp_path / "bad.csv")}))


def test_splits_and_unknown_fold(tmp_path):
    root = write_esc50_like(tmp_path / "d", [(f"{f}-{i}-A-{t}.wav", f, t, ".wav")
                                             for f in (1, 2, 3) for t in (0, 1) for i in range(5)])
    table = load_table(TaskConfig().replace({"data.data_dir": str(root)}))
    splits = make_splits(table, TaskConfig().replace({"data.folds": [2]}))
    (name, train, test, validation, unknown), = splits
    assert name == "2" and set(table.folds[test]) == {2} and 2 not in set(table.folds[train])
    assert 2 not in set(table.folds[validation]) and not set(train) & set(validation) and not len(unknown)
    with pytest.raises(ConfigError, match=r"fold 7 does not exist.*1, 2, 3"):
        make_splits(table, TaskConfig().replace({"data.folds": [7]}))
    (_, train, test, validation, _), = make_splits(table, TaskConfig().replace({"data.protocol": "random", "data.train_ratio": 0.8}))
    assert len(test) == 6 and sorted(np.bincount(table.labels[test]).tolist()) == [3, 3]
    assert not set(train) & set(test) and len(train) + len(test) + len(validation) == len(table)


def test_validation_keeps_recordings_whole_and_unknown_classes_stay_out(tmp_path):
    # 3 folds × 4 classes × 5 recordings, two takes of each (A, B)
    root = write_esc50_like(tmp_path / "d", [(f"{f}-{f}{i}{t}-{take}-{t}.wav", f, t, ".wav")
                                             for f in (1, 2, 3) for t in range(4) for i in range(5)
                                             for take in "AB"])
    config = TaskConfig().replace({"data.data_dir": str(root), "train.validation_share": 0.2})
    table = load_table(config)
    for split in make_splits(table, config):
        assert not set(split.validation) & (set(split.train) | set(split.test))
        # 20 % of each class's 20 training clips, whole recordings: 4 clips (2 recordings) per class
        assert np.bincount(table.labels[split.validation]).tolist() == [4, 4, 4, 4]
        source = lambda i: table.paths[i].stem.split("-")[1]  # noqa: E731
        assert not {source(i) for i in split.validation} & {source(i) for i in split.train}
    again = make_splits(table, config)
    assert [list(s.validation) for s in again] == [list(s.validation) for s in make_splits(table, config)]
    assert list(make_splits(table, config.replace({"train.seed": 1}))[0].validation) != list(again[0].validation)
    assert not len(make_splits(table, config.replace({"train.validation_share": 0.0}))[0].validation)

    open_config = config.replace({"data.unknown_names": ["class1"]})
    table = load_table(open_config)
    assert table.known_classes == ["class0", "class2", "class3"] and table.classes[-1] == "class1"
    for split in make_splits(table, open_config):
        unknown = table.labels == 3
        assert not unknown[split.train].any() and not unknown[split.validation].any()
        assert not unknown[split.test].any() and unknown[split.unknown].all()
        assert set(table.folds[split.unknown]) == {int(split.name)} and len(split.unknown) == 10
    drawn = load_table(config.replace({"data.unknown_classes": 2}))
    assert drawn.unknown == 2 and drawn.classes[-2:] == load_table(
        config.replace({"data.unknown_classes": 2})).classes[-2:]
    with pytest.raises(ConfigError, match=r"data\.unknown_names: dog is not a class"):
        load_table(config.replace({"data.unknown_names": ["dog"]}))
    with pytest.raises(ConfigError, match="leaves 1 of the 4 classes"):
        load_table(config.replace({"data.unknown_classes": 3}))


def test_cache_built_once_and_rebuilt_on_change(tmp_path):
    root = write_esc50_like(tmp_path / "d", [("1-1-A-0.wav", 1, 0, ".ogg"), ("2-1-A-1.wav", 2, 1, ".flac")])
    config = tiny_config(**{"data.data_dir": str(root), "data.clip_seconds": 1.5, "data.cache_dir": str(tmp_path / "c")})
    waves, _ = build_waveform_cache(load_table(config), config, progress=False)
    assert waves.shape == (2, 12000) and isinstance(waves, np.memmap)
    assert np.abs(waves[0, :8000]).max() > 0.1 and np.all(waves[0, 8000:] == 0)  # 1 s clip padded
    files = sorted(p.name for p in (tmp_path / "c").iterdir())
    build_waveform_cache(load_table(config), config, progress=False)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == files  # reused, not rebuilt
    build_waveform_cache(load_table(config.replace({"data.sample_rate": 16000})), config.replace({"data.sample_rate": 16000}),
                         progress=False)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2  # new rate → new cache
    sf.write(root / "audio" / "1-1-A-0.ogg", tone(900, 8000, 1.0), 8000)  # audio changed
    fresh, _ = build_waveform_cache(load_table(config), config, progress=False)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 3 and not np.allclose(fresh[0], waves[0])


def test_bad_file_reported_up_front_or_skipped(tmp_path):
    root = write_esc50_like(tmp_path / "d", [(f"{f}-{i}-A-{i - 1}.wav", f, i - 1, ".wav") for f in (1, 2)
                                             for i in (1, 2)])
    (root / "audio" / "2-2-A-1.wav").write_text("not audio")
    config = tiny_config(**{"data.data_dir": str(root), "data.cache_dir": str(tmp_path / "c")})
    with pytest.raises(AudioError, match=r"1 unreadable audio file.*2-2-A-1\.wav.*data.skip_bad=true"):
        build_waveform_cache(load_table(config), config, progress=False)
    waves, table = build_waveform_cache(load_table(config), config.replace({"data.skip_bad": True}), progress=False)
    assert len(table) == 3 and len(waves) == 3 and "2-2-A-1.wav" not in {p.name for p in table.paths}
    assert any("left out 1" in n for n in table.notes)
    assert np.abs(np.array(waves[2])).max() > 0.1  # rows line up with the remaining files


def test_collator_pads_and_reports_lengths():
    items = [{"wav": torch.ones(5), "label": 1}, {"wav": torch.ones(3), "label": 0}]
    batch = collate(items)
    assert batch["wav"].shape == (2, 5) and batch["wav"][1, 3:].eq(0).all()
    assert batch["length"].tolist() == [5, 3] and batch["label"].tolist() == [1, 0]
    ds = WaveformDataset(np.zeros((3, 7), np.float32), np.array([0, 1, 2]), [2, 0])
    assert len(ds) == 2 and ds[0]["label"] == 2 and ds[0]["wav"].shape == (7,)


def test_balanced_sampler_weights_and_draws():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = class_balanced_sampler(labels, torch.Generator().manual_seed(0))
    assert sampler.weights[0].item() == pytest.approx(1 / 90) and sampler.weights[-1].item() == pytest.approx(0.1)
    drawn = labels[list(sampler)]
    assert len(drawn) == 100 and 0.35 < drawn.mean() < 0.65  # ~half minority class, not 10 %


def test_few_clips_per_class_are_drawn_by_the_seed_and_leave_the_test_fold_whole(tmp_path):
    from escnet.data.tables import few_per_class

    labels = np.repeat(np.arange(4), 10)
    picked = few_per_class(labels, np.arange(40), 3, 0, "1")
    assert np.bincount(labels[picked]).tolist() == [3, 3, 3, 3] and list(picked) == sorted(picked)
    assert list(few_per_class(labels, np.arange(40), 3, 0, "1")) == list(picked)
    assert list(few_per_class(labels, np.arange(40), 3, 1, "1")) != list(picked)
    assert len(few_per_class(labels, np.arange(40), 50, 0, "1")) == 40  # more than a class has: all
    root = write_esc50_like(tmp_path / "d", [(f"{f}-{i}-A-{t}.wav", f, t, ".wav")
                                             for f in (1, 2) for t in (0, 1) for i in range(4)])
    config = tiny_config(**{"data.data_dir": str(root), "data.train_per_class": 2})
    table = load_table(config)
    (_, train, test, validation, _), _ = make_splits(table, config)
    assert len(train) == 4 and len(test) == 8 and not set(train) & set(validation)


def test_a_dataset_with_a_file_name_that_is_not_utf8_trains_and_its_run_files_are_utf8(tmp_path, capsys):
    import os

    from conftest import tiny_flags

    from escnet.cli import main

    for label, freq in (("low", 400), ("high", 1600)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(5):
            sf.write(tmp_path / "data" / label / f"{i}.wav", tone(freq * (1 + i / 20), 8000, 1.0), 8000)
    odd = tmp_path / "data" / "low" / os.fsdecode(b"caf\xe9.wav")  # a name a Latin-1 system wrote
    try:
        sf.write(os.fsencode(odd), tone(420, 8000, 1.0), 8000)
    except (OSError, sf.LibsndfileError):
        pytest.skip("this file system takes only UTF-8 names")
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "data"), "--model", "crnn", "--epochs", "1", "--out",
                 str(out), "--quiet", *tiny_flags()])
    assert code == 0, capsys.readouterr().err
    written = "".join(p.read_text(encoding="utf-8") for p in out.rglob("*.csv"))  # UTF-8, every one
    assert "caf\\xe9.wav" in written
