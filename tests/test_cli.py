"""Every user mistake: one line on stderr naming the file or setting, exit code 2, no traceback."""

import subprocess
import sys

import pytest
import soundfile as sf
from conftest import tiny_flags, tone, write_esc50_like

from escnet.cli import main
from escnet.config import load_config


@pytest.fixture
def tiny(tmp_path):
    return write_esc50_like(tmp_path / "d", [(f"{f}-{i}-A-{t}.wav", f, t, ".wav")
                                             for f in (1, 2) for t in (0, 1) for i in range(2)])


def run_cli(args, capsys):
    code = main(args)
    err = capsys.readouterr().err
    return code, err


FAST = tiny_flags("--model", "crnn", "--quiet")


@pytest.mark.parametrize(("extra", "needle"), [
    (["--model", "resnet9000"], "unknown model; choose from"),
    (["--folds", "1,9"], "fold 9 does not exist"),
    (["--set", "train.learning_rate=-1"], "learning_rate=-1.0: must be > 0"),
    (["--set", "train.batch_size=lots"], "batch_size='lots': expected int"),
    (["--set", "n_mels"], "expected section.key=value"),
    (["--set", "model.args.kernal_size=3,3"], "model crnn takes no argument 'kernal_size'; it accepts cnn_out_channels, kernel_size"),
    (["--set", "features.nmels=3"], "unknown setting 'features.nmels' (did you mean features.n_mels"),
    (["--subset", "esc20"], "data.subset='esc20': must be one of all, esc10 (flag --subset)"),
    (["--set", "augment.waveform=gain,flanger"], "augment.waveform=['gain', 'flanger']: must be one of"),
    (["--set", "augment.snr_db=30,3"], "snr_db=(30.0, 3.0): must be a range low,high"),
    (["--set", "augment.mixup_alpha=-1"], "mixup_alpha=-1.0: must be >= 0"),
    (["--preset", "fastest"], "preset 'fastest': unknown preset; choose from best, fast, fast-robust"),
])
def test_bad_settings(tiny, tmp_path, capsys, extra, needle):
    code, err = run_cli(["train", "--data", str(tiny), "--out", str(tmp_path / "r"), *FAST, *extra], capsys)
    assert code == 2 and needle in err and err.count("\n") == 1 and err.startswith("escnet: error:")


def test_out_that_is_a_file(tiny, tmp_path, capsys):
    taken = tmp_path / "results.txt"
    taken.write_text("kept")
    code, err = run_cli(["train", "--data", str(tiny), "--out", str(taken), *FAST], capsys)
    assert code == 2 and f"{taken}: exists and is not a folder; choose another output folder" in err
    assert err.count("\n") == 1 and taken.read_text() == "kept"


def test_bad_audio_in_dataset_and_skip_bad(tiny, tmp_path, capsys):
    (tiny / "audio" / "2-1-A-1.wav").write_text("I am a text file")
    code, err = run_cli(["train", "--data", str(tiny), "--out", str(tmp_path / "r"), *FAST], capsys)
    # the run's first line says what dataset it found; the decoding error is then one line
    first, error = err.splitlines()
    assert code == 2 and first.startswith(f"escnet: dataset {tiny}: an ESC-50 folder")
    assert "2-1-A-1.wav" in error and error.endswith("data.skip_bad=true (flag --skip-bad)")
    code, err = run_cli(["train", "--data", str(tiny), "--out", str(tmp_path / "r"), *FAST, "--skip-bad",
                         "--epochs", "1", "--set", "data.clip_seconds=1", "--set", "train.batch_size=4"], capsys)
    assert code == 0 and "left out 1 unreadable audio file" in err


def test_missing_column_and_missing_data(tiny, tmp_path, capsys):
    csv_path = tiny / "meta" / "esc50.csv"
    csv_path.write_text(csv_path.read_text().replace("fold,", "fould,", 1))
    code, err = run_cli(["train", "--data", str(tiny), *FAST], capsys)
    assert code == 2 and "esc50.csv: missing column(s) fold" in err
    code, err = run_cli(["train", "--data", str(tmp_path / "nowhere"), *FAST], capsys)
    assert code == 2 and "no such file or folder" in err
    code, err = run_cli(["train", *FAST], capsys)
    assert code == 2 and "no dataset given" in err and "(flag --data)" in err


def test_a_cache_folder_that_cannot_be_made_says_where_its_name_came_from(tiny, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ESCNET_CACHE", str(blocker))
    code, err = run_cli(["train", "--data", str(tiny), "--out", str(tmp_path / "r"), *FAST], capsys)
    assert code == 2 and f"the cache folder {blocker} ($ESCNET_CACHE, else ~/.cache/escnet; or --cache-dir)" in err
    code, err = run_cli(["train", "--data", str(tiny), "--out", str(tmp_path / "r"), *FAST, "--cache-dir",
                         str(blocker)], capsys)
    assert code == 2 and f"setting data.cache_dir='{blocker}': cannot create it" in err


def test_preset_trains_with_its_recipe_under_the_command_line(tiny, tmp_path, capsys):
    out = tmp_path / "r"
    code, _ = run_cli(["train", "--preset", "fast", "--data", str(tiny), "--out", str(out), "--epochs", "1",
                       "--folds", "1", "--set", "data.clip_seconds=1", "--set", "augment.crop_seconds=0.5", "--quiet"], capsys)
    saved = (out / "config.yaml").read_text()
    assert code == 0 and "name: cnn10" in saved and "head_dropout: 0.2" in saved
    assert "num_epochs: 1" in saved and "crop_seconds: 0.5" in saved and "sample_rate: 22050" in saved
    code, err = run_cli(["train", "--preset", "fast", "--resume", str(out)], capsys)
    assert code == 2 and "drop --preset" in err


def test_existing_run_is_not_overwritten(tiny, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.yaml").write_text("model: crnn\n")
    code, err = run_cli(["train", "--data", str(tiny), "--out", str(tmp_path / "r"), *FAST], capsys)
    assert code == 2 and "already holds a run" in err


def test_predict_and_evaluate_bad_inputs(tmp_path, capsys):
    (tmp_path / "notes.wav").write_text("hello")
    (tmp_path / "fake.pt").write_text("not a checkpoint")
    sf.write(tmp_path / "ok.wav", tone(300, 8000, 0.5), 8000)
    code, err = run_cli(["predict", "--model", str(tmp_path / "fake.pt"), str(tmp_path / "ok.wav")], capsys)
    assert code == 2 and "fake.pt: not an escnet checkpoint" in err
    code, err = run_cli(["predict", "--model", str(tmp_path), str(tmp_path / "ok.wav")], capsys)
    assert code == 2 and "no fold-*/last.pt" in err
    code, err = run_cli(["evaluate", str(tmp_path)], capsys)
    assert code == 2 and "not an escnet run" in err


def test_augment_preview_bad_inputs(tmp_path, capsys):
    code, err = run_cli(["augment-preview", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "nope.wav: file not found" in err and err.count("\n") == 1
    sf.write(tmp_path / "ok.wav", tone(300, 8000, 0.5), 8000)
    # in a process of its own, so that every library's first import happens here
    done = subprocess.run([sys.executable, "-m", "escnet.cli", "augment-preview", str(tmp_path / "ok.wav"),
                           "--out", str(tmp_path / "o"), "--set", "augment.noise_dir=" + str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0  # the clip itself is a noise file in that folder, at 8 kHz: resampled
    # to the run's rate without a warning for each noise file, nor other libraries' deprecations
    assert "Warning" not in done.stderr, done.stderr
    (tmp_path / "quiet").mkdir()
    code, err = run_cli(["augment-preview", str(tmp_path / "ok.wav"), "--out", str(tmp_path / "o"),
                         "--set", "augment.noise_dir=" + str(tmp_path / "quiet")], capsys)
    assert code == 2 and "augment.noise_dir" in err and "no audio files" in err


def test_console_script_has_no_traceback(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "escnet.cli", "train", "--data", str(tmp_path / "empty.wav")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "a dataset file must be a CSV" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "escnet.cli", "train", "--epochs", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid int value: 'x'" in proc.stderr


def test_output_piped_to_a_reader_that_stops_ends_quietly():
    """``escnet models | head -1``: the reader closes the pipe; escnet stops as Unix tools do."""
    proc = subprocess.Popen([sys.executable, "-m", "escnet.cli", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # gone before anything is written
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141 and err == "", err


@pytest.mark.parametrize(("args", "needle"), [
    (["train", "--ema", "0.99"], "--set train.ema_decay=0.99"),
    (["train", "--label-smoothing=0.1"], "--set train.label_smoothing=0.1"),
    (["train", "--mixup", "0.2"], "--set augment.mixup_alpha=0.2; similar: augment.mixup_mode"),
    (["train", "--quux"], "other settings go through --set SECTION.KEY=VALUE"),
    (["train", "--lr-warmup", "3"], "other settings go through"),
    (["models", "--ema"], "unrecognized arguments: --ema\n"),
])
def test_unknown_flag_points_to_the_setting(capsys, args, needle):
    code, err = run_cli(args, capsys)
    assert code == 2 and needle in err and err.count("\n") == 1 and err.startswith("escnet: error:")


@pytest.mark.parametrize("command", [["train"], ["sweep", "--space", "s.yaml", "--storage", "sqlite:///x.db"],
                                     ["benchmark", "--models", "crnn,lstm"], ["augment-preview", "a.wav", "--out", "o"]])
def test_every_command_that_builds_a_config_takes_the_same_config_flags(command):
    from escnet.cli import build_parser
    from escnet.cli.common import config_of

    args = build_parser().parse_args([*command, "--preset", "fast", "--epochs", "7", "--skip-bad",
                                      "--set", "train.seed=3", "--set", "train.num_epochs=9"])
    config, fast = config_of(args), load_config(preset="fast")
    assert config.train.seed == 3 and config.data.skip_bad
    assert config.train.num_epochs == 9  # --set comes last and wins over the flag
    assert config.features == fast.features and config.train.learning_rate == fast.train.learning_rate


def test_a_misspelt_required_option_says_which_was_meant(capsys):
    from escnet.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["listen", "--modle", "fast.onnx"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "required: --model" in err and "--modle is not an option of this command; did you mean --model?" in err
