"""User-facing errors.

Every mistake a user can make (bad config key, wrong shape, missing file), every storage fault
(full disk, a file cut short) and a diverged run raise a subclass of `KdjaxError` whose message
is one line saying what is wrong and how to fix it. The CLI prints `kdjax: error: <message>` for
these and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations


class KdjaxError(Exception):
    """Base class of the errors that point at a user mistake, not at a bug in kdjax."""


class ConfigError(KdjaxError, ValueError):
    """An invalid configuration value; the message names the key."""


class ShapeError(KdjaxError, ValueError):
    """Arrays of incompatible shapes were passed to a loss or model; the message names both."""


class CheckpointError(KdjaxError):
    """A checkpoint or HF directory is missing, incomplete or does not match the model."""


class DataError(KdjaxError):
    """Input data is missing, empty or in an unknown format."""


class StorageError(KdjaxError):
    """A file could not be written or read (full disk, permissions, a file cut short); the
    message names the file and how to recover."""


class NonFiniteError(KdjaxError):
    """Weights or optimizer state hold NaN or inf: refused before they reach a checkpoint, a
    model directory or an export."""
