"""User-facing errors.

Anything raised as :class:`EscnetError` is a mistake the user can fix (a bad file, a bad setting).
The CLI prints its message as one line and exits with status 2, without a traceback.
"""


class EscnetError(Exception):
    """A user mistake: the message names the file or setting and what to do."""


class ConfigError(EscnetError):
    """A configuration value of the wrong type or out of range."""


class AudioError(EscnetError):
    """An audio file that cannot be decoded, is empty or is truncated."""


class UnreadableAudioError(AudioError):
    """Not audio at all, or in a format libsndfile does not decode."""


class NonFiniteAudioError(AudioError):
    """Samples that are NaN or infinite."""


class AudioTooLongError(AudioError):
    """Audio longer than a limit the caller set."""


class DataError(EscnetError):
    """A dataset folder or table that does not have the expected layout."""


class CheckpointError(EscnetError):
    """A file given as a checkpoint that is not a trusted escnet checkpoint of a known format."""
