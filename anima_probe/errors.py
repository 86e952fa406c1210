"""Which failures are the user's to fix, and which are bugs? The project's own error types, in one place.

Everything the suite raises on purpose derives from `AnimaProbeError`: the command line catches exactly these and
prints their one-line message (exit 2, or the type's own `exit_code`), so that any other exception -- a bug --
keeps its traceback. `UsageError` is a flag, override or config value the user passed; `InputError` is a file, row or
key in the user's data. They also derive from the built-in type that callers caught before (`ValueError`, `KeyError`,
`FileNotFoundError`), so library code that handles those keeps working.
"""

from __future__ import annotations


class AnimaProbeError(Exception):
    """Base of every error the suite raises on purpose; its message is one line naming the culprit."""

    exit_code = 2

    def __str__(self) -> str:
        # KeyError quotes its message; every project error prints its message as written
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class UsageError(AnimaProbeError, ValueError):
    """A command-line flag, `key=value` override or config value that is out of range or malformed."""


class UnknownNameError(UsageError, KeyError):
    """A name (experiment, config key, hook point, family, ...) that is not among the known ones."""


class InputError(AnimaProbeError, ValueError):
    """A file, row or key of the user's data (model files, caption sets, run folders) that cannot be used."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the user named (or that a model folder should hold) does not exist."""


class RunFailed(AnimaProbeError, RuntimeError):
    """A run that started and stopped on a condition it checks (e.g. a non-finite loss); exit 1, nothing kept."""

    exit_code = 1
