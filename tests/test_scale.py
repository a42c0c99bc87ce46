"""Beyond one process: DDP under torchrun (gloo on CPU), folds in parallel, Optuna sweeps, and
logs that suit a file."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_flags, write_esc50_like

from escnet.cli import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TINY_ESC10 = ["--subset", "esc10", "--folds", "1", "--set", "model.name=cnn10", "--set", "model.args.width=8",
              "--set", "data.sample_rate=16000", "--set", "features.n_fft=512", "--set", "features.win_length=512",
              "--set", "features.hop_length=256", "--set", "features.n_mels=40", "--set", "train.batch_size=32",
              "--lr", "0.003", "--quiet"]
TONES = tiny_flags("--set", "model.name=crnn", "--set", "train.batch_size=6", "--quiet")


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    """Three classes of tones, six clips per class and fold: learnable in an epoch."""
    clips = [(f"{f}-{10 * t + i}-A-{t}.wav", f, t, ".wav") for f in (1, 2) for t in (0, 1, 2) for i in range(6)]
    return write_esc50_like(tmp_path_factory.mktemp("tones") / "d", clips, sr=8000, seconds=1.0)


def _env(threads: int = 1) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


KILL_AFTER_FIRST_EPOCH = """
import os, signal, sys
from escnet.runs import RunDir
real = RunDir.save_epoch
def save(*args, **kwargs):
    real(*args, **kwargs)
    if os.environ.get("RANK") == "0":
        os.kill(os.getpid(), signal.SIGKILL)
RunDir.save_epoch = save
from escnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ddp_on_cpu_rank_zero_writes_the_whole_fold_and_a_killed_run_resumes(esc50, tmp_path):
    args = ["train", "--data", str(esc50), *TINY_ESC10, "--epochs", "2"]
    whole = tmp_path / "whole"
    done = subprocess.run([*TORCHRUN, "-m", "escnet", *args, "--out", str(whole)], capture_output=True,
                          text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone talks and writes: one summary, each epoch once
    assert done.stdout.count("run saved in") == 1 and done.stderr.count("escnet: dataset ") == 1
    assert "Warning" not in done.stderr, done.stderr  # e.g. PyTorch deprecations, on every batch
    rows = list(csv.DictReader((whole / "fold-1" / "predictions.csv").open()))
    assert len(rows) == 80  # ESC-10's fold 1: the whole fold, gathered from both ranks
    assert len({r["path"] for r in rows}) == 80
    history = [json.loads(line) for line in (whole / "fold-1" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["folds"]["1"] == history[-1]["test_accuracy"]
    assert summary["folds"]["1"] > 0.2  # ten classes: above chance after two epochs

    # rank 0 dies after its first epoch: torchrun ends the other rank, the run resumes
    killed = tmp_path / "killed"
    script = tmp_path / "kill.py"
    script.write_text(KILL_AFTER_FIRST_EPOCH)
    crash = subprocess.run([*TORCHRUN, str(script), *args, "--out", str(killed)], capture_output=True,
                           text=True, timeout=600, env=_env())
    assert crash.returncode != 0
    assert len((killed / "fold-1" / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = subprocess.run([*TORCHRUN, "-m", "escnet", "train", "--resume", str(killed), "--quiet"],
                             capture_output=True, text=True, timeout=600, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (killed / "fold-1" / "predictions.csv").read_text() == (whole / "fold-1" / "predictions.csv").read_text()
    assert json.loads((killed / "summary.json").read_text())["folds"] == summary["folds"]


def test_parallel_folds_equal_sequential_folds(tones, tmp_path):
    """With --refit: each fold's model and its holdout model, the same in parallel as in sequence."""
    args = ["-m", "escnet", "train", "--data", str(tones), *TONES[:-1], "--refit",
            "--quiet", "--epochs", "2"]
    sequential = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "seq")], capture_output=True,
                                text=True, timeout=300, env=_env(1))
    assert sequential.returncode == 0, sequential.stderr
    parallel = subprocess.run([sys.executable, *args[:-3], "--epochs", "2", "--out", str(tmp_path / "par"),
                               "--parallel-folds", "2"],
                              capture_output=True, text=True, timeout=300, env=_env(2))
    assert parallel.returncode == 0, parallel.stderr
    epochs = [ln for ln in parallel.stdout.splitlines() if " epoch " in ln]
    stages = ("", " (holdout model)")
    assert sorted(ln.split(":")[0] for ln in epochs) == sorted(
        f"fold {f}{s} epoch   {e}/2" for f in (1, 2) for s in stages for e in (1, 2))
    names = ["fold-1/predictions.csv", "fold-2/predictions.csv", "metrics.json", "confusion.csv"]
    for name in names + [f"holdout/{n}" for n in names]:
        assert (tmp_path / "par" / name).read_text() == (tmp_path / "seq" / name).read_text(), name
    seq, par = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("seq", "par"))
    assert par["folds"] == seq["folds"] and par["status"] == "complete"
    # an interrupted parallel run resumes every unfinished fold
    shutil.copytree(tmp_path / "par", tmp_path / "cut")
    for fold in ("fold-1", "fold-2"):
        (tmp_path / "cut" / fold / "predictions.csv").unlink()
    (tmp_path / "cut" / "summary.json").unlink()
    assert main(["train", "--resume", str(tmp_path / "cut"), "--parallel-folds", "2", "--quiet"]) == 0
    assert (tmp_path / "cut" / "fold-2" / "predictions.csv").read_text() == \
        (tmp_path / "seq" / "fold-2" / "predictions.csv").read_text()


def test_a_fold_worker_reports_in_json_lines_epochs_then_its_result_or_an_error(tones, tmp_path, capsys):
    from escnet.engine import fold_worker

    run = tmp_path / "run"
    assert main(["train", "--data", str(tones), *TONES, "--epochs", "1", "--folds", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    (run / "fold-1" / "predictions.csv").unlink()  # the worker finishes the fold's files again
    assert fold_worker.main([str(run), "1"]) == 0
    messages = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert list(messages[-1]) == ["done"] and messages[-1]["done"]["epochs"] == 1
    assert (run / "fold-1" / "predictions.csv").exists()
    assert fold_worker.main([str(run), "7"]) == 2
    (message,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert message == {"error": f"fold 7: not a fold of {run}"}


def test_a_sweep_shared_by_two_workers_prunes_a_trial_that_falls_behind(tones, tmp_path):
    # ranges so narrow that every trial's numbers are fixed: good ones learn, the bad one does not
    (tmp_path / "good.yaml").write_text("train.learning_rate: {low: 0.01, high: 0.0100001, log: true}\n")
    (tmp_path / "bad.yaml").write_text("train.learning_rate: {low: 1.0e-8, high: 1.0000001e-8, log: true}\n")
    # every clip trains (no validation share): 6 clips a class, so that 2 epochs tell good from bad
    common = ["-m", "escnet", "sweep", "--data", str(tones), *TONES, "--set", "train.validation_share=0",
              "--folds", "1", "--epochs", "3",
              "--storage", f"sqlite:///{tmp_path / 'sweep.db'}", "--out", str(tmp_path / "sw"),
              "--prune-after", "2", "--trials", "1"]
    workers = [subprocess.Popen([sys.executable, *common, "--space", str(tmp_path / "good.yaml")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(1))
               for _ in range(2)]  # two workers of one search, at once
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
    third = subprocess.run([sys.executable, *common, "--space", str(tmp_path / "bad.yaml")],
                           capture_output=True, text=True, timeout=300, env=_env(2))
    assert third.returncode == 0, third.stderr
    trials = list(csv.DictReader((tmp_path / "sw" / "trials.csv").open()))
    assert [t["state"] for t in trials] == ["complete", "complete", "pruned"]
    assert int(trials[2]["epochs"]) < 3 and float(trials[2]["train.learning_rate"]) < 1e-7
    for t in trials:  # every trial is a normal run directory
        assert (Path(t["run"]) / "config.yaml").is_file()
    assert (Path(trials[0]["run"]) / "summary.json").is_file()
    assert (tmp_path / "sw" / "trials.png").stat().st_size > 5000
    assert "best: trial " in third.stdout


def test_scale_bad_inputs_are_one_line_and_start_nothing(tones, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text("train.learning_rate: {low: 0.01, high: 0.001}\n")
    (tmp_path / "unknown.yaml").write_text("train.warp_speed: {low: 1, high: 9}\n")
    (tmp_path / "ok.yaml").write_text("train.learning_rate: {low: 0.001, high: 0.01}\n")
    (tmp_path / "alias.yaml").write_text("a: &a {low: 1, high: 2}\ntrain.batch_size: *a\n")
    (tmp_path / "step.yaml").write_text("train.batch_size: {low: 1, high: 4, step: 0}\n")
    (tmp_path / "twice.yaml").write_text("train.learning_rate: {low: 1e-3, high: 1e-2}\n"
                                         "train.learning_rate: {low: 1e-4, high: 1e-3}\n")
    sweep = ["sweep", "--data", str(tones), *TONES, "--out", str(tmp_path / "sw"), "--trials", "1"]
    cases = [
        (["train", "--data", str(tones), *TONES, "--out", str(tmp_path / "r"), "--parallel-folds", "3"],
         "--parallel-folds 3: only 2 fold(s) left to train"),
        ([*sweep, "--space", str(tmp_path / "space.yaml"), "--storage", "sqlite:///x.db"],
         "empty range (low 0.01 is not below high 0.001)"),
        ([*sweep, "--space", str(tmp_path / "unknown.yaml"), "--storage", "sqlite:///x.db"],
         "train.warp_speed"),
        ([*sweep, "--space", str(tmp_path / "ok.yaml"), "--storage", "sqlite:////no/such/dir/x.db"],
         "--storage sqlite:////no/such/dir/x.db: cannot open it"),
        ([*sweep, "--space", str(tmp_path / "ok.yaml"), "--storage", "nosuchdb://x"], "cannot open it"),
        ([*sweep, "--space", str(tmp_path), "--storage", "sqlite:///x.db"], "search space is a folder"),
        ([*sweep, "--space", str(tmp_path / "alias.yaml"), "--storage", "sqlite:///x.db"],
         "alias.yaml: not valid YAML: line 2: aliases (*name) are not allowed"),
        ([*sweep, "--space", str(tmp_path / "twice.yaml"), "--storage", "sqlite:///x.db"],
         "twice.yaml: not valid YAML: line 2: key 'train.learning_rate' given twice"),
        ([*sweep, "--space", str(tmp_path / "step.yaml"), "--storage", "sqlite:///x.db"],
         "train.batch_size: step 0: must be a number above 0 and at most high - low (3)"),
    ]
    for args, words in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("escnet: error:")]
        assert len(errors) == 1 and words in errors[0] and "Traceback" not in err, (args, err)
    assert not (tmp_path / "r").exists() and not (tmp_path / "sw").exists()


def test_a_run_logged_to_a_file_has_plain_lines_not_progress_bars(tones, tmp_path):
    log = tmp_path / "train.log"
    with log.open("w") as out:  # as under nohup or Slurm: stdout and stderr to a file
        done = subprocess.run([sys.executable, "-m", "escnet", "train", "--data", str(tones), *TONES[:-1],
                               "--epochs", "3", "--out", str(tmp_path / "r")], stdout=out, stderr=out,
                              timeout=300, env=_env(2))
    text = log.read_text()
    assert done.returncode == 0 and "\r" not in text
    assert sum(" epoch " in ln for ln in text.splitlines()) == 6  # one line per epoch and fold


def _group_norm_rank(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from escnet.engine.distributed import GroupBatchNorm

    batch, weights = torch.load(f"{folder}/inputs.pt")
    # the store is the parent's, as torchrun's agent hosts it: a rank that hosted it could exit
    # while the other still talked to it (the store's thread then aborts the process)
    store = dist.TCPStore("127.0.0.1", port, world_size=2, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    norm = GroupBatchNorm(3)
    x = batch[rank::2].clone().requires_grad_(True)
    y = norm(x)
    (y * weights[rank::2]).sum().backward()
    torch.save((y.detach(), x.grad, norm.weight.grad, norm.running_mean, norm.running_var),
               f"{folder}/rank{rank}.pt")
    dist.barrier()  # as train() does: no rank tears the group down while the other uses it
    dist.destroy_process_group()
    # its results are saved: leave without C++ static destructors, where an exiting gloo thread
    # now and then aborts the process ("terminate called without an active exception")
    os._exit(0)


def test_group_batch_norm_on_two_processes_is_batch_norm_over_the_whole_batch(tmp_path):
    """What DDP on CPU normalises with: the moments of the global batch, gradients included."""
    import torch.distributed as dist

    generator = torch.Generator().manual_seed(1)
    batch = torch.randn(8, 3, 5, 4, generator=generator) * 3 + 1
    weights = torch.randn(8, 3, 5, 4, generator=generator)
    torch.save((batch, weights), tmp_path / "inputs.pt")
    store = dist.TCPStore("127.0.0.1", 0, world_size=2, is_master=True, wait_for_workers=False)
    torch.multiprocessing.spawn(_group_norm_rank, args=(store.port, str(tmp_path)), nprocs=2)
    del store
    reference = torch.nn.BatchNorm2d(3)
    x = batch.clone().requires_grad_(True)
    y = reference(x)
    (y * weights).sum().backward()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for rank, (got_y, got_grad, _, mean, var) in enumerate(ranks):
        assert torch.allclose(got_y, y.detach()[rank::2], atol=1e-5)
        assert torch.allclose(got_grad, x.grad[rank::2], atol=1e-4)
        assert torch.allclose(mean, reference.running_mean, atol=1e-6)
        assert torch.allclose(var, reference.running_var, atol=1e-5)
    # each rank's weight gradient is its share: DDP adds them (and averages over ranks)
    assert torch.allclose(ranks[0][2] + ranks[1][2], reference.weight.grad, atol=1e-4)


def test_a_restarted_sweep_fails_and_retries_the_trial_of_a_killed_worker(tones, tmp_path, monkeypatch):
    import optuna

    from escnet.config import load_config, parse_overrides
    from escnet.engine import sweep

    monkeypatch.setattr(sweep, "GRACE_SECONDS", 1)
    storage = f"sqlite:///{tmp_path / 'sweep.db'}"
    (tmp_path / "space.yaml").write_text("train.learning_rate: {low: 0.01, high: 0.0100001, log: true}\n")
    base = load_config(None, {"data.data_dir": str(tones), "data.folds": [1], "train.num_epochs": 1,
                              **parse_overrides([v for k, v in itertools.pairwise(TONES) if k == "--set"])})
    space = sweep.load_space(tmp_path / "space.yaml", base)
    study = sweep.open_study(storage, "s", prune_after=5)
    orphan = study.ask({d.key: d.distribution() for d in space})  # a worker starts a trial...
    study._storage.record_heartbeat(orphan._trial_id)  # ...beats once, and is killed
    time.sleep(3)  # past the 1 s grace, however the storage rounds its timestamps
    said: list[str] = []
    sweep.run_sweep(base, space, sweep.open_study(storage, "s", prune_after=5), 1, tmp_path / "sw",
                    announce=said.append)
    assert any("trial(s) 0: their worker stopped" in line for line in said), said
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL
    assert trials[1].state == optuna.trial.TrialState.COMPLETE and trials[1].params == trials[0].params
