"""One process of :func:`escnet.engine.parallel.train_folds_in_parallel`:
``python -m escnet.engine.fold_worker RUNDIR FOLD`` trains one fold of a run and reports to its
parent in JSON lines on stdout: ``{"epoch": {...}}`` after every epoch, then ``{"done": {...}}``
(what the summary keeps of the fold) or ``{"error": "..."}`` (an
:class:`~escnet.errors.EscnetError`'s message; exit status 2). Anything else is a bug: a
traceback on stderr, whose last line the parent reports. A worker exits within a second of
its parent's death, however the parent died.
"""

from __future__ import annotations

import json
import sys

from escnet.engine.train import train_fold_of_run
from escnet.errors import EscnetError
from escnet.machine import die_with_parent


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    run_dir, fold = argv if argv is not None else sys.argv[1:]
    die_with_parent()  # a worker left training would write the run beside whatever resumes it
    try:
        result = train_fold_of_run(run_dir, fold, callbacks=[lambda entry: _send({"epoch": entry})])
    except EscnetError as err:
        _send({"error": str(err)})
        return 2
    _send({"done": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
