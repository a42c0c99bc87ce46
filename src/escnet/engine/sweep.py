"""Recipe search on Optuna: ``escnet sweep --space space.yaml --storage URL --trials N``.

Every trial is a normal run directory (``OUT/trial-NNN``) trained by :func:`escnet.engine.train.train`
with the trial's settings on top of the base config; each epoch's held-out accuracy is reported
to Optuna (step = epochs done so far, over the trial's folds), whose median pruner stops trials
that fall behind the others at the same step. The objective is the run's mean held-out accuracy.
Workers on several machines share a search by pointing at the same storage and study name
(``postgresql://user:password@host/db``; SQLite for one machine).

A search space is a YAML mapping from a setting (``section.key``, or ``model.args.NAME``) to:

- ``{low: A, high: B}``: a uniform range (integers when both ends are integers; ``step: S``);
- ``{low: A, high: B, log: true}``: a log-uniform range;
- ``{choices: [a, b, c]}``: one of the values.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from escnet.config import TaskConfig, read_yaml
from escnet.errors import ConfigError, EscnetError
from escnet.figures import pyplot
from escnet.files import atomic_write_text, make_output_dir
from escnet.models.registry import resolve_args

try:
    import optuna
except ImportError:  # the CLI says which extra to install
    optuna = None


@dataclass(frozen=True)
class Dimension:
    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    @property
    def integer(self) -> bool:
        return self.choices is None and (isinstance(self.step, int) or (
            isinstance(self.low, int) and isinstance(self.high, int) and not self.log))

    def distribution(self):
        """The Optuna distribution this dimension samples from."""
        d = optuna.distributions
        if self.choices is not None:
            return d.CategoricalDistribution(list(self.choices))
        if self.integer:
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial) -> Any:
        dist = self.distribution()
        if self.choices is not None:
            return trial.suggest_categorical(self.key, dist.choices)
        if self.integer:
            return trial.suggest_int(self.key, dist.low, dist.high, step=dist.step, log=dist.log)
        return trial.suggest_float(self.key, dist.low, dist.high, step=dist.step, log=dist.log)


def load_space(path: str | Path, base: TaskConfig) -> list[Dimension]:
    """Read and check a search space: every key a setting of ``base`` (its model's arguments
    included), every range non-empty, every value one the setting accepts."""
    path = Path(path)
    raw = read_yaml(path, "search space")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: a search space is a mapping from settings to ranges or choices")
    space = []
    for key, spec in raw.items():
        where = f"{path}: {key}"
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ConfigError(f"{where}: give {{low: A, high: B[, log: true, step: S]}} or "
                              "{choices: [...]}")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}: choices must be a non-empty list")
            dim = Dimension(key, choices=tuple(choices))
            values = choices
        else:
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)):
                raise ConfigError(f"{where}: low and high must be finite numbers")
            if not low < high:
                raise ConfigError(f"{where}: empty range (low {low} is not below high {high})")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0")
            step = spec.get("step")
            if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                                     or not math.isfinite(step) or not 0 < step <= high - low):
                raise ConfigError(f"{where}: step {step!r}: must be a number above 0 and at most "
                                  f"high - low ({high - low:g})")
            if step is not None and spec.get("log"):
                raise ConfigError(f"{where}: a log range takes no step (Optuna steps linear ranges only)")
            dim = Dimension(key, low, high, bool(spec.get("log", False)), spec.get("step"))
            values = [low, high]
        for value in values:  # each end, or each choice, must be a valid setting
            try:
                config = base.replace({key: value})
                if key.startswith("model.args."):  # the model's own arguments, by its signature
                    resolve_args(config.model.name, config.model.args)
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
        space.append(dim)
    return space


HEARTBEAT_SECONDS = 10
"""Each running trial's worker records a heartbeat this often in a database storage (Optuna's
heartbeat)."""
GRACE_SECONDS = 60
"""A running trial whose worker has not beaten for this long is an orphan (its worker was
killed): the next worker to start marks it failed and runs its settings again."""


def open_study(storage: str, name: str, prune_after: int, pruner: str = "median"):
    """Create or load the study ``name`` in ``storage`` (shared by every worker). A database
    storage gets heartbeats, so trials of killed workers are found (:func:`run_sweep`)."""
    if optuna is None:
        raise ModuleNotFoundError("escnet sweep needs optuna", name="optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = (optuna.pruners.MedianPruner(n_startup_trials=prune_after, n_warmup_steps=0)
              if pruner == "median" else optuna.pruners.NopPruner())
    for attempt in range(5):
        try:
            where = storage
            if storage.split(":", 1)[0].split("+")[0] in ("sqlite", "postgresql", "mysql"):
                # the callback's name changed in Optuna 4.9 (the old one warns from then on)
                renamed = "heartbeat_stale_trial_callback" in inspect.signature(
                    optuna.storages.RDBStorage).parameters
                again = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback",
                                optuna.storages.RetryFailedTrialCallback)
                with warnings.catch_warnings():  # Optuna marks heartbeats experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    retry = {"heartbeat_stale_trial_callback" if renamed else "failed_trial_callback":
                             again(max_retry=1)}
                    where = optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_SECONDS,
                                                       grace_period=GRACE_SECONDS, **retry)
            return optuna.create_study(storage=where, study_name=name, direction="maximize",
                                       pruner=chosen, load_if_exists=True)
        except Exception as err:  # bad URL, unreachable server, missing driver: the user's to fix
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            # two workers creating one new SQLite storage at once: the second finds the tables
            # half made; it is only a race, so look again
            racing = ("already exists", "UNIQUE constraint failed", "database is locked")
            if any(words in reason for words in racing) and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise EscnetError(f"storage={storage}: cannot open it ({reason[:200]})") from None


def check_space(study, space: list[Dimension]) -> None:
    """A study keeps one kind of distribution per setting (Optuna refuses a float range where
    earlier trials sampled choices): say so before any trial starts."""
    mine = {dim.key: dim.distribution() for dim in space}
    for trial in study.get_trials(deepcopy=False):
        for key, theirs in trial.distributions.items():
            if key in mine:
                try:
                    optuna.distributions.check_distribution_compatibility(theirs, mine[key])
                except ValueError:
                    raise ConfigError(f"study={study.study_name}: it searched {key} as "
                                      f"{type(theirs).__name__}, not {type(mine[key]).__name__}; "
                                      "keep its kind of range in the space, or start a new study") from None


def run_sweep(base: TaskConfig, space: list[Dimension], study, trials: int, out: str | Path,
              progress: bool = False, announce=print) -> None:
    """Run ``trials`` trials of ``study`` in this process, each a run in ``OUT/trial-NNN``."""
    from escnet.engine.train import train

    check_space(study, space)
    out = make_output_dir(out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats (in-memory storage)
    # a failed orphan's settings wait as a new trial, marked with the number it replaces
    again = [t.system_attrs["failed_trial"] for t in study.get_trials(
        deepcopy=False, states=[optuna.trial.TrialState.WAITING]) if "failed_trial" in t.system_attrs]
    if again:
        announce(f"trial(s) {', '.join(map(str, again))}: their worker stopped without a word (no "
                 "heartbeat within the grace period); marked failed, their settings run again")

    def objective(trial) -> float:
        settings = {dim.key: dim.suggest(trial) for dim in space}
        config = base.replace(settings)
        run_dir = out / f"trial-{trial.number:03d}"
        trial.set_user_attr("run", str(run_dir))
        announce(f"trial {trial.number}: {settings} → {run_dir}")
        steps = [0]

        def report(entry: dict) -> None:
            steps[0] += 1
            trial.report(entry["test_accuracy"], steps[0])
            if trial.should_prune():
                announce(f"trial {trial.number}: pruned after {steps[0]} epoch(s) at "
                         f"{100 * entry['test_accuracy']:.1f} %")
                raise optuna.TrialPruned()

        summary = train(config, run_dir, progress=progress, callbacks=[report])
        announce(f"trial {trial.number}: {100 * summary['accuracy_mean']:.1f} %")
        return summary["accuracy_mean"]

    study.optimize(objective, n_trials=trials, catch=())


def write_trials(study, out: str | Path) -> tuple[list[dict], Path]:
    """``OUT/trials.csv`` (every trial of the study: number, state, accuracy, settings, run) and
    ``OUT/trials.png`` (Optuna's optimization history); returns the rows and the CSV's path."""
    out = make_output_dir(out)
    rows = []
    keys = sorted({k for t in study.trials for k in t.params})
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     "accuracy": "" if t.value is None else f"{t.value:.4f}",
                     "epochs": len(t.intermediate_values), **{k: t.params.get(k, "") for k in keys},
                     "run": t.user_attrs.get("run", "")})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["trial", "state", "accuracy", "epochs", *keys, "run"])
    writer.writeheader()
    writer.writerows(rows)
    path = atomic_write_text(out / "trials.csv", buffer.getvalue())
    if any(t.value is not None for t in study.trials):
        pyplot()
        from optuna.visualization.matplotlib import plot_optimization_history

        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore")
            axes = plot_optimization_history(study)
        axes.figure.set_size_inches(7, 4)
        axes.figure.tight_layout()
        axes.figure.savefig(out / "trials.png", dpi=110)
    return rows, path
