"""The run directory's owner: checkpoint formats, what a new run may write into, atomic files."""

import pytest
import torch
from conftest import tiny_config

from escnet.errors import CheckpointError, EscnetError
from escnet.files import atomic_write_json, atomic_write_text
from escnet.models import SoundClassifier
from escnet.runs import CHECKPOINT_FORMAT, RunDir, load_checkpoint, load_model, mean_std, save_checkpoint

CONFIG = tiny_config(**{"model.name": "lstm", "model.num_classes": 3})


def checkpoint(path, **changes):
    model = SoundClassifier.from_config(CONFIG)
    save_checkpoint(path, {"model": model.state_dict(), "config": CONFIG.to_dict(),
                           "classes": ["a", "b", "c"], "epoch": 1, "test_accuracy": 0.5, **changes})
    return model


def test_a_checkpoint_round_trips_with_its_format_and_config(tmp_path):
    model = checkpoint(tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["config"] == CONFIG
    loaded, _ = load_model(tmp_path / "c.pt")
    x = torch.randn(2, 8000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


@pytest.mark.parametrize(("changes", "needle"), [
    ({"format": CHECKPOINT_FORMAT + 1}, "written by a newer escnet"),
    ({"format": 1}, "written by an older escnet"),
    ({"format": "two"}, "written by a newer escnet"),
    ({"classes": ["a", "b"]}, "class list does not match"),
    ({"config": {"model": "lstm"}}, "older escnet"),
])
def test_checkpoints_of_other_formats_are_refused_in_one_line(tmp_path, changes, needle):
    checkpoint(tmp_path / "c.pt", **changes)
    with pytest.raises(CheckpointError, match=needle):
        load_checkpoint(tmp_path / "c.pt")


def test_files_that_are_not_escnet_checkpoints(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    torch.save({"model": SoundClassifier.from_config(CONFIG)}, tmp_path / "pickled.pt")  # a whole module
    good = tmp_path / "good.pt"
    checkpoint(good)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:1000])
    checkpoint(tmp_path / "other.pt", model={"rnn.weight": torch.zeros(1)})
    for name, needle in [("text.pt", "not an escnet checkpoint"), ("plain.pt", "no format version"),
                         ("pickled.pt", "not a trusted escnet checkpoint"), ("cut.pt", "damaged"),
                         ("missing.pt", "not found")]:
        with pytest.raises(CheckpointError, match=needle) as err:
            load_checkpoint(tmp_path / name)
        assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "other.pt")


def test_a_new_run_only_goes_into_a_new_or_empty_folder(tmp_path):
    RunDir(tmp_path / "new").create(CONFIG)
    assert (tmp_path / "new" / "config.yaml").is_file() and RunDir(tmp_path / "new").exists
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").create(CONFIG)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metrics.json").write_text("the user's own file")
    with pytest.raises(EscnetError, match="not empty and not an escnet run"):
        RunDir(tmp_path / "mine").create(CONFIG)
    assert (tmp_path / "mine" / "metrics.json").read_text() == "the user's own file"
    assert not (tmp_path / "mine" / "config.yaml").exists()
    with pytest.raises(EscnetError, match="already holds a run"):
        RunDir(tmp_path / "new").create(CONFIG)
    with pytest.raises(EscnetError, match=r"different settings \(train.seed\)"):
        RunDir(tmp_path / "new").create(CONFIG.replace({"train.seed": 1}), resume=True)
    RunDir(tmp_path / "new").create(CONFIG.replace({"train.num_workers": 2}), resume=True,
                                    result_free=("train.num_workers",))


def test_atomic_writes_leave_no_partial_or_temporary_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_text(tmp_path / "a.txt", "two")
    with pytest.raises(ValueError):  # NaN is not JSON: the old file stays whole
        atomic_write_json(tmp_path / "a.txt", {"x": float("nan")})
    assert (tmp_path / "a.txt").read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_mean_and_std_over_folds_is_the_population_std():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1))
