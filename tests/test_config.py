from pathlib import Path

import numpy as np
import pytest
import torch

from escnet.config import (
    SECTIONS,
    TaskConfig,
    from_dict,
    list_presets,
    load_config,
    parse_overrides,
    preset_config,
)
from escnet.errors import ConfigError
from escnet.models import SoundClassifier, create_model, model_arguments, resolve_args
from escnet.transforms.waveform import WaveformAugment


def test_defaults_are_the_reports():
    c = TaskConfig()
    t, f, d = c.train, c.features, c.data
    assert (t.batch_size, t.learning_rate, t.weight_decay, t.num_epochs) == (128, 3e-4, 1e-5, 20)
    assert (d.sample_rate, f.n_fft, f.win_length, f.hop_length, f.n_mels) == (44100, 1024, 1024, 256, 64)
    assert d.train_ratio == 0.9 and c.model.num_classes == 50
    # The report's model settings are its models' own defaults.
    crnn = resolve_args("crnn", {})
    assert (crnn["cnn_out_channels"], crnn["kernel_size"], crnn["stride"]) == (8, [5, 20], [2, 8])
    assert (crnn["hidden_size"], crnn["gru_num_layers"], crnn["bidirectional"]) == (64, 2, False)
    # Derived, and equal to the report's constants at its settings.
    assert (c.length_wav, c.length) == (220_500, 862)


def test_derived_lengths_follow_settings():
    c = TaskConfig().replace({"data.sample_rate": 16000, "data.clip_seconds": 2.0, "features.hop_length": 160})
    assert c.length_wav == 32000 and c.length == 32000 // 160 + 1


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_file_round_trip_in_sections(tmp_path, suffix):
    c = TaskConfig().replace({"train.learning_rate": 1e-3, "model.name": "crnn",
                              "model.args.kernel_size": (3, 9), "data.folds": [1, 3],
                              "features.f_max": 8000.0})
    path = tmp_path / f"c{suffix}"
    if suffix == ".yaml":
        c.save(path)
        assert list(__import__("yaml").safe_load(path.read_text())) == list(SECTIONS)
    else:
        lines = []
        for section, values in c.to_dict().items():
            lines.append(f"[{section}]")
            for k, v in values.items():
                if v is None or isinstance(v, dict):
                    continue
                lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}")
            if section == "model":
                lines += ["[model.args]", "kernel_size = [3, 9]"]
        path.write_text("\n".join(lines).replace("'", '"'))
    assert load_config(path) == c


def test_overrides_win_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.01\n  batch_size: 16\nmodel:\n  name: crnn\n")
    c = load_config(path, parse_overrides(["train.learning_rate=1e-3", "model.args.kernel_size=3,9",
                                           "model.args.bidirectional=true"]))
    assert (c.train.learning_rate, c.train.batch_size) == (1e-3, 16)
    assert c.model.args == {"kernel_size": "3,9", "bidirectional": True}
    # The model coerces and completes its own arguments.
    args = resolve_args(c.model.name, c.model.args)
    assert args["kernel_size"] == (3, 9) and args["bidirectional"] is True and args["hidden_size"] == 64


@pytest.mark.parametrize(("values", "needle"), [
    ({"train": {"learning_rate": -1}}, r"train.learning_rate=-1.0: must be > 0"),
    ({"train": {"batch_size": "many"}}, "train.batch_size"),
    ({"train": {"batch_size": 1.5}}, "train.batch_size"),
    ({"train": {"learning_rate": float("inf")}}, "train.learning_rate.*finite"),
    ({"train": {"learning_rate": "nan"}}, "train.learning_rate.*finite"),
    ({"data": {"train_ratio": 1.0}}, "data.train_ratio"),
    ({"features": {"win_length": 2048}}, "features.win_length"),
    ({"features": {"f_max": 30000.0}}, "features.f_max"),
    ({"train": {"optimizer": "sgd"}}, "train.optimizer"),
    ({"data": {"folds": [0]}}, "data.folds"),
    ({"data": {"folds": [2, 2]}}, r"folds=\[2, 2\]: names a fold twice"),
    ({"train": {"lr": 1}}, r"unknown setting 'train.lr' \(did you mean train.learning_rate"),
    ({"optim": {"lr": 1}}, "unknown section 'optim'; sections are data, features"),
    ({"data": {"length_wav": 1000}}, "unknown setting"),
    ({"augment": {"noise_dir": "/no/such/folder"}}, "augment.noise_dir"),
    ({"augment": {"waveform": ["gain", "gain"]}}, "names a transform twice"),
    ({"augment": {"waveform": ["gain", "flanger"]}}, "augment.waveform.*must be one of"),
    ({"augment": {"time_stretch_rate": [0.0, 1.2]}}, "time_stretch_rate"),
    ({"augment": {"noise_colors": ["purple"]}}, "noise_colors"),
    ({"augment": {"policy": "two"}}, "augment.policy"),
    ({"train": {"label_smoothing": 1.0}}, "label_smoothing"),
    ({"train": {"ema_decay": 1.0}}, "ema_decay"),
    ({"model": {"args": 3}}, "model.args must be a mapping"),
    ({"train": {"refit": True, "validation_share": 0}}, "train.refit=True: needs validation clips"),
    ({"train": {"refit": True}, "data": {"train_per_class": 5}}, "train.refit=True: .*train_per_class"),
])
def test_bad_values_name_the_setting(values, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(values)


def test_a_flat_config_of_an_older_escnet_is_refused_saying_so(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("model: crnn\nlearning_rate: 0.001\n")
    for call in (lambda: load_config(path), lambda: from_dict({"model": "crnn", "learning_rate": 1e-3})):
        with pytest.raises(ConfigError, match="older escnet"):
            call()


@pytest.mark.parametrize(("name", "args", "needle"), [
    ("cnn10", {"dim": 64}, "model cnn10 takes no argument 'dim'; it accepts width, dropout, head_dropout"),
    ("ast", {"width": 8}, "model ast takes no argument 'width'; it accepts patch, dim"),
    ("kumar", {"width": 8}, "it accepts none"),
    ("cnn10", {"width": 0}, r"model.args.width=0: must be > 0 \(model cnn10\)"),
    ("cnn10", {"width": "wide"}, "model.args.width='wide': expected int"),
    ("ast", {"dim": 30, "heads": 4}, "divisible by heads"),
    ("crnn", {"kernel_size": [99, 3]}, "taller than features.n_mels"),
])
def test_a_models_arguments_are_its_own(name, args, needle):
    config = TaskConfig().replace({"model.name": name, "model.args": args})
    with pytest.raises(ConfigError, match=needle):
        SoundClassifier.from_config(config)


def test_every_model_declares_defaults_for_its_arguments():
    for name in ("cnn10", "crnn", "ast", "vgg19", "lstm", "baseline", "advanced", "kumar"):
        for arg, (_, default) in model_arguments(name).items():
            assert default is not __import__("inspect").Parameter.empty, f"{name}.{arg} has no default"


def test_changing_the_model_drops_the_old_models_arguments():
    fast = preset_config("fast")
    assert fast.model.args["width"] == 16
    crnn = load_config(None, {"model.name": "crnn"}, preset="fast")
    assert crnn.model.args == {}
    SoundClassifier.from_config(crnn)  # builds: cnn10's width does not reach the CRNN


def test_a_range_accepts_one_value_for_a_fixed_setting():
    c = load_config(None, parse_overrides(["augment.pitch_shift_semitones=3", "augment.gain_db=-6,6",
                                           "augment.waveform=gain,time_shift"]))
    assert c.augment.pitch_shift_semitones == (3.0, 3.0) and c.augment.gain_db == (-6.0, 6.0)
    assert c.augment.waveform == ["gain", "time_shift"] and c.waveform_augment
    assert not c.replace({"augment.copies": 4}).waveform_augment


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        parse_overrides(["train.learning_rate"])


def test_bad_config_files(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.yaml").write_text("- just\n- a list\n")
    (tmp_path / "c.toml").write_text("x = = 1")
    (tmp_path / "d.yaml").write_bytes(b"\xff\xfe\x00binary")
    for name, needle in [("a.json", "must end in"), ("b.yaml", "mapping"), ("c.toml", "not valid"),
                         ("missing.yaml", "not found"), ("d.yaml", "config file is not UTF-16 text")]:
        with pytest.raises(ConfigError, match=needle):
            load_config(tmp_path / name)


def test_presets_ship_with_the_package_and_apply_under_file_and_overrides(tmp_path):
    assert {"best", "fast"} <= set(list_presets())
    fast = preset_config("fast")
    assert fast != TaskConfig() and fast.model.name == "cnn10"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  num_epochs: 3\n")
    c = load_config(path, {"train.seed": 7}, preset="fast")
    assert c == fast.replace({"train.num_epochs": 3, "train.seed": 7})
    with pytest.raises(ConfigError, match=r"unknown preset; choose from .*fast"):
        preset_config("fastest")


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_its_model_for_its_training_windows_and_whole_clips(name):
    # A preset whose settings do not fit together (a window too short for the model's pools,
    # a width the model rejects) fails here, not after an hour of a user's run.
    config = preset_config(name)
    m, n_mels = config.model, config.features.n_mels
    model = create_model(m.name, n_mels=n_mels, frames=config.length, num_classes=m.num_classes, **m.args)
    for frames in (config.crop_frames or config.length, config.length):
        assert model(torch.randn(2, n_mels, frames)).shape == (2, m.num_classes)
    # Each of its waveform transforms runs at its sample rate (LAME, soxr and the rooms take
    # 16 kHz as well as 44.1 kHz) and keeps the clip's length.
    clip = np.random.default_rng(0).normal(0, 0.1, config.data.sample_rate).astype(np.float32)
    always = config.replace({"augment.policy": "each", "augment.p": 1.0}).augment
    for transform in config.augment.waveform:
        y = WaveformAugment(always, config.data.sample_rate, [transform])(clip, 0)
        assert y.shape == clip.shape and np.isfinite(y).all() and not np.array_equal(y, clip), transform


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_file_loads_and_builds(path):
    # A config whose settings were renamed or removed fails here, not in a user's long run.
    config = load_config(path)
    assert config.model.name in path.read_text()
    SoundClassifier.from_config(config, pretrained=False)  # weights named, not fetched


def test_unknown_scores_are_checked_in_one_place_with_the_model():
    """A score's name is declared once (models/unknown.SCORES); the config takes any string and
    the model's check refuses what no model or this one cannot give, before any work."""
    from escnet.models.unknown import resolve_score

    config = load_config(None, {"train.unknown_score": "energyy"})  # a config alone cannot know
    with pytest.raises(ConfigError, match=r"train.unknown_score='energyy': one of auto, msp, energy"):
        resolve_score(config.train.unknown_score, True, "mn04")
    with pytest.raises(ConfigError, match=r"train\.unknown_score=knn: with train\.refit"):
        resolve_score("knn", True, "mn04", refit=True)
    with pytest.raises(ConfigError, match=r"train\.unknown_score=knn: model cnn10 has no embedding"):
        resolve_score("knn", False, "cnn10")
    assert resolve_score("auto", True, "mn04") == "energy+knn"
    assert resolve_score("auto", True, "mn04", refit=True) == "energy"


def test_text_inputs_may_be_pipes_and_never_read_a_device_forever(tmp_path):
    """Config files and annotation tables are read through one owner (``files.read_input``): a
    named pipe or a shell's ``<(...)`` is read like a file; a device that never ends, a folder
    and a missing file are each one line naming the input."""
    import os
    import threading

    from escnet.data.annotations import read_annotations
    from escnet.errors import DataError

    def piped(name: str, text: str):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda: fifo.write_text(text))
        writer.start()
        return fifo, writer

    fifo, writer = piped("c.yaml", "train:\n  num_epochs: 3\n")
    assert load_config(fifo).train.num_epochs == 3
    writer.join()
    fifo, writer = piped("ann.csv", "file,onset,offset,label\na.wav,1,2,dog\n")
    assert [(a.file, a.label) for a in read_annotations(fifo)] == [("a.wav", "dog")]
    writer.join()
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    with pytest.raises(ConfigError, match=r"zero\.yaml: config file longer than 64 MB"):
        load_config(zero)
    with pytest.raises(DataError, match=r"zero\.yaml: annotation file longer than 64 MB"):
        read_annotations(zero)
    (tmp_path / "d.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"d\.yaml: config file is a folder"):
        load_config(tmp_path / "d.yaml")
    with pytest.raises(DataError, match=r"gone\.csv: annotation file not found"):
        read_annotations(tmp_path / "gone.csv")


def test_yaml_reads_1e_minus_4_as_the_number_every_user_means(tmp_path):
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string; escnet's config files and search spaces
    read it as a number, as YAML 1.2 does."""
    from escnet.config import read_config_file, read_yaml

    (tmp_path / "c.yaml").write_text("train:\n  learning_rate: 1e-4\n  weight_decay: 5E-2\n")
    assert read_config_file(tmp_path / "c.yaml") == {"train": {"learning_rate": 1e-4, "weight_decay": 0.05}}
    (tmp_path / "s.yaml").write_text("train.learning_rate: {low: 1e-4, high: 1.5e-2, log: true}\nname: 1e\n")
    assert read_yaml(tmp_path / "s.yaml", "search space") == {
        "train.learning_rate": {"low": 1e-4, "high": 0.015, "log": True}, "name": "1e"}
