"""The ``escnet`` command: a thin layer over the Python API, a module per group of commands.

The library raises; this package talks. User mistakes (:class:`~escnet.errors.EscnetError`)
print one line and exit with status 2; the library names settings (``out=x.csv: ...``,
``setting train.seed=...``) and :func:`main` says them as the flags the user typed. The
library's notes and warnings (the ``escnet`` logger) are printed as ``escnet: ...`` lines on
stderr.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import select
import sys
import warnings
from typing import ClassVar, NoReturn

from escnet.cli import archive, classify, data, events, serving, training
from escnet.cli.common import setting_flags, text
from escnet.config import similar_settings
from escnet.errors import EscnetError

COMMANDS = (*training.COMMANDS, *classify.COMMANDS, *events.COMMANDS, *archive.COMMANDS, *serving.COMMANDS,
            *data.COMMANDS)
"""Each adds a sub-command (its options, and ``func``: the function that runs it)."""

# Libraries of the extras; a command that needs a missing one says which.
SERVE_LIBRARIES = {"fastapi", "uvicorn", "starlette", "python_multipart", "multipart"}
OPTIONAL_LIBRARIES = {"torch", "librosa", "tqdm", "audiomentations", "matplotlib", "sklearn", "onnx",
                      "onnxscript", "onnxruntime", "tensorboard", "optuna", *SERVE_LIBRARIES}


class _Parser(argparse.ArgumentParser):
    """argparse, saying which typed option was probably meant when its error comes from a
    misspelling (``--modle``: "the following arguments are required: --model")."""

    typed: ClassVar[list[str]] = []
    """The command line being parsed (set by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        known = [option for action in self._actions for option in action.option_strings]
        for word in (w.split("=")[0] for w in self.typed if w.startswith("--")):
            if word not in known and (close := difflib.get_close_matches(word, known, 1)):
                message += f" ({word} is not an option of this command; did you mean {close[0]}?)"
                break
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="escnet", description=(
        "Environmental sound classification: train, evaluate and compare models on ESC-50 "
        "and your own recordings."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _unknown_flag_error(extras: list[str], has_set: bool, command: str, known: list[str]) -> str:
    """One line for flags argparse does not know: the setting a flag names (pointing to
    ``--set``), else the ``command``'s option it probably meant (``known``)."""
    message = f"escnet: error: unrecognized arguments: {' '.join(extras)}"
    flag = next((x for x in extras if x.startswith("--")), None)
    if flag is None:
        return message
    key, _, value = flag[2:].partition("=")
    if has_set and (close := similar_settings(key.replace("-", "_"))):
        following = extras[extras.index(flag) + 1:]
        value = value or (following[0] if following and not following[0].startswith("-") else "VALUE")
        hint = f"--set {close[0]}={value}"
        if len(close) > 1:
            hint += f"; similar: {', '.join(close[1:])}"
        return f"{message} (settings without a flag go through --set: {hint})"
    hints = [f"did you mean {o}? escnet {command} --help lists the options"
             for o in difflib.get_close_matches(f"--{key}", known, 1)]
    hints += ["other settings go through --set SECTION.KEY=VALUE"] if has_set else []
    return f"{message} ({'; '.join(hints)})" if hints else message


def as_typed(message: str, command: argparse.ArgumentParser | None) -> str:
    """``message`` as the user typed it: a parameter of the command's (``out=x.csv``, ``fold=K``)
    becomes its flag (``--out x.csv``, ``--fold K``), and a setting with a flag of its own (the
    common ones, or the command's ``settings`` default) gets it added (``data.skip_bad`` →
    ``(flag --skip-bad)``)."""
    options = {a.dest: a.option_strings[-1] for a in command._actions if a.option_strings} if command else {}
    for dest, option in options.items():  # not a setting's key (section.key=) nor part of a word
        message = re.sub(rf"(?<![\w.-]){re.escape(dest)}=", f"{option} ", message)
    own = command.get_default("settings") if command else None
    for key, flag in {**setting_flags(), **(own or {})}.items():
        if f"setting {key}=" in message or f"setting {key}:" in message or f"set {key}=" in message:
            return f"{message} (flag {flag})"
    return message


class _Lines(logging.Handler):
    """The library's notes and warnings as ``escnet: message`` lines on stderr, above any
    progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the runtime-only install has no progress bars to keep clear of
            print(f"escnet: {text(record.getMessage())}", file=sys.stderr)
        else:
            tqdm.write(f"escnet: {text(record.getMessage())}", file=sys.stderr)


def _talk() -> None:
    logger = logging.getLogger("escnet")
    if not any(isinstance(h, _Lines) for h in logger.handlers):
        logger.addHandler(_Lines())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    choices = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return choices.get(command)


def _reader_gone() -> bool:
    """Whether standard output is a pipe nobody reads any more (the poll of its write end says
    so with ``POLLERR``)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no real file
        return False
    return any(events & select.POLLERR for _, events in poll.poll(0))


def main(argv: list[str] | None = None) -> int:
    _talk()
    parser = build_parser()
    _Parser.typed = sys.argv[1:] if argv is None else argv
    args, extras = parser.parse_known_args(argv)
    if extras:
        command = _subparser(parser, args.command)
        known = [o for a in (command._actions if command else []) for o in a.option_strings]
        print(_unknown_flag_error(extras, hasattr(args, "set"), args.command, known), file=sys.stderr)
        return 2
    # other libraries' warnings are said after the work, and not at all before a one-line error;
    # deprecations are for those libraries' developers (Python hides them outside __main__)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        try:
            code = args.func(args)
        except ModuleNotFoundError as err:
            if err.name is None or err.name.split(".")[0] not in OPTIONAL_LIBRARIES:
                raise
            name = err.name.split(".")[0]
            extra = "serve" if name in SERVE_LIBRARIES else "sweep" if name == "optuna" else \
                "export" if args.command == "export" else "train"
            why = "" if args.command in ("predict", "serve") else \
                " (the runtime install only classifies with .onnx models)"
            print(f"escnet: error: escnet {args.command} needs {name}, which is not installed: "
                  f"pip install 'escnet[{extra}]'{why}", file=sys.stderr)
            return 2
        except EscnetError as err:
            # one line, whatever names it holds (a file name with a newline in it)
            print(f"escnet: error: {text(as_typed(str(err), _subparser(parser, args.command)))}",
                  file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as err:  # torch's out-of-memory errors are RuntimeErrors
            if not isinstance(err, MemoryError) and not any(
                    words in str(err) for words in ("can't allocate memory", "out of memory")):
                raise
            resume = " (resume with --resume RUNDIR)" if args.command == "train" else ""
            print(f"escnet: error: out of memory: lower train.batch_size, the model's size or the "
                  f"features (n_mels, clip_seconds){resume}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            if not _reader_gone():
                raise  # another pipe than the output's: not the user's doing
            # the reader of the output went away (| head): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
            return 141  # 128 + SIGPIPE, what a shell reports for such a tool
        except KeyboardInterrupt:
            hint = " (continue with --resume RUNDIR)" if args.command == "train" else ""
            print(f"\nescnet: interrupted{hint}", file=sys.stderr)
            return 130
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return code
