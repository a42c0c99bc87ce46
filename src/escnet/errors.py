"""User-facing errors.

Anything raised as :class:`EscnetError` is a mistake the user can fix (a bad file, a bad setting).
The CLI prints its message as one line and exits with status 2, without a traceback.
"""

from pathlib import Path


class EscnetError(Exception):
    """A user mistake: the message names the file or setting and what to do."""


class ConfigError(EscnetError):
    """A configuration value of the wrong type or out of range."""


class AudioError(EscnetError):
    """An audio file that cannot be decoded, is empty or is truncated."""


class DataError(EscnetError):
    """A dataset folder or table that does not have the expected layout."""


def make_output_dir(path: str | Path) -> Path:
    """Create the output folder ``path`` (and its parents), or raise :class:`EscnetError` saying
    why it cannot be: a file of that name, no permission, a full disk."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EscnetError(f"{path}: exists and is not a folder; choose another --out") from None
    except OSError as err:
        raise EscnetError(f"{path}: cannot create this output folder ({err.strerror})") from None
    return path
