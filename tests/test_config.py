from pathlib import Path

import pytest
import torch

from escnet.config import TaskConfig, from_dict, list_presets, load_config, parse_overrides, preset_config
from escnet.errors import ConfigError
from escnet.models import create_model


def test_defaults_are_the_reports():
    c = TaskConfig()
    assert (c.batch_size, c.learning_rate, c.weight_decay, c.num_epochs) == (128, 3e-4, 1e-5, 20)
    assert (c.n_mels, c.cnn_out_channels, c.kernel_size, c.stride) == (64, 8, (5, 20), (2, 8))
    assert (c.hidden_size, c.gru_num_layers, c.bidirectional, c.num_classes) == (64, 2, False, 50)
    assert (c.sample_rate, c.n_fft, c.win_length, c.hop_length) == (44100, 1024, 1024, 256)
    assert c.train_ratio == 0.9
    # Derived, and equal to the report's constants at its settings.
    assert (c.length_wav, c.length) == (220_500, 862)


def test_derived_lengths_follow_settings():
    c = TaskConfig(sample_rate=16000, clip_seconds=2.0, hop_length=160)
    assert c.length_wav == 32000 and c.length == 32000 // 160 + 1


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_file_round_trip(tmp_path, suffix):
    c = TaskConfig(learning_rate=1e-3, kernel_size=(3, 9), folds=[1, 3], f_max=8000.0)
    path = tmp_path / f"c{suffix}"
    if suffix == ".yaml":
        c.save(path)
    else:
        lines = []
        for k, v in c.to_dict().items():
            if v is None:
                continue
            lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}")
        path.write_text("\n".join(lines).replace("'", '"'))
    assert load_config(path) == c


def test_overrides_win_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.01\nbatch_size: 16\n")
    c = load_config(path, parse_overrides(["learning_rate=1e-3", "kernel_size=3,9", "bidirectional=true"]))
    assert (c.learning_rate, c.batch_size, c.kernel_size, c.bidirectional) == (1e-3, 16, (3, 9), True)


@pytest.mark.parametrize(("values", "needle"), [
    ({"learning_rate": -1}, "learning_rate"),
    ({"batch_size": "many"}, "batch_size"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"train_ratio": 1.0}, "train_ratio"),
    ({"win_length": 2048}, "win_length"),
    ({"f_max": 30000.0}, "f_max"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"kernel_size": [5]}, "kernel_size"),
    ({"bidirectional": "maybe"}, "bidirectional"),
    ({"folds": [0]}, "folds"),
    ({"folds": [2, 2]}, r"folds=\[2, 2\]: names a fold twice"),
    ({"lr": 1}, "unknown setting 'lr'"),
    ({"length_wav": 1000}, "derived"),
    ({"path2noise": "/no/such/folder"}, "path2noise"),
    ({"augment": ["gain", "gain"]}, "names a transform twice"),
    ({"time_stretch_rate": [0.0, 1.2]}, "time_stretch_rate"),
    ({"noise_colors": ["purple"]}, "noise_colors"),
    ({"augment_policy": "two"}, "augment_policy"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"ema_decay": 1.0}, "ema_decay"),
])
def test_bad_values_name_the_setting(values, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(values)


def test_a_range_accepts_one_value_for_a_fixed_setting():
    c = load_config(None, parse_overrides(["pitch_shift_semitones=3", "gain_db=-6,6",
                                           "augment=gain,time_shift"]))
    assert c.pitch_shift_semitones == (3.0, 3.0) and c.gain_db == (-6.0, 6.0)
    assert c.augment == ["gain", "time_shift"] and c.waveform_augment
    assert not c.replace(augment_copies=4).waveform_augment


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["learning_rate"])


def test_bad_config_files(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.yaml").write_text("- just\n- a list\n")
    (tmp_path / "c.toml").write_text("x = = 1")
    for name, needle in [("a.json", "must end in"), ("b.yaml", "mapping"), ("c.toml", "not valid"),
                         ("missing.yaml", "not found")]:
        with pytest.raises(ConfigError, match=needle):
            load_config(tmp_path / name)


def test_presets_ship_with_the_package_and_apply_under_file_and_overrides(tmp_path):
    assert {"best", "fast"} <= set(list_presets())
    fast = preset_config("fast")
    assert fast != TaskConfig() and fast.model == "cnn10"
    path = tmp_path / "c.yaml"
    path.write_text("num_epochs: 3\n")
    c = load_config(path, {"seed": 7}, preset="fast")
    assert c == fast.replace(num_epochs=3, seed=7)
    with pytest.raises(ConfigError, match=r"unknown preset; choose from .*fast"):
        preset_config("fastest")


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_builds_its_model_for_its_training_windows_and_whole_clips(name):
    # A preset whose settings do not fit together (a window too short for the model's pools,
    # a width the model rejects) fails here, not after an hour of a user's run.
    config = preset_config(name)
    model = create_model(config.model, config)
    for frames in (config.crop_frames or config.length, config.length):
        assert model(torch.randn(2, config.n_mels, frames)).shape == (2, config.num_classes)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_file_loads(path):
    # A config whose settings were renamed or removed fails here, not in a user's long run.
    config = load_config(path)
    assert config.model in path.read_text()
