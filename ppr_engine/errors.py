"""Error types that the API and the CLI turn into one clear message each.

An `InputError` is the caller's fault (bad checkpoint, bad data, bad spec): it must not be
retried. Anything else that escapes the engine is a system fault.
"""


class PPRError(Exception):
    """Base class of every error the engine raises on purpose."""


class InputError(PPRError, ValueError):
    """The caller's input is wrong; retrying will not help."""


class CheckpointError(InputError):
    """A checkpoint could not be loaded safely or does not fit the architecture."""


class DatasetError(InputError):
    """A data reference or archive is invalid, unsafe or unreadable."""


class SpecError(InputError):
    """An audit or purify spec names something unknown or inconsistent."""


class GateError(InputError):
    """A gate expression is malformed or names an unknown report field."""


class Cancelled(PPRError):
    """The job was cancelled between two steps."""


class TimeLimitExceeded(Cancelled):
    """The job outlived its time limit and stopped at its next progress report."""
