"""The error types users see.

`gptx.main` turns each of these into one line, `gptx: error: <message>`, and an exit status: 2 for
a user error (a bad config, unreadable data, a checkpoint that cannot be converted, a missing file),
1 for a training run that diverged (`NonFiniteLossError`). Every other exception keeps its traceback.

This module imports nothing from gptx, so any module may import it.
"""


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


class DataError(ValueError):
    """Input data that cannot be read; the message names the file and line."""


class InteropError(ValueError):
    """A checkpoint that cannot be converted; the message names the file, key or option."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


__all__ = ["ConfigError", "DataError", "InteropError", "NonFiniteLossError"]
