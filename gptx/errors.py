"""The error types users see.

`gptx.main` turns each of these into one line on stderr and an exit status a job scheduler can act on
(README, "Exit codes"): 2 for a user error (a bad config, unreadable data, a checkpoint that cannot be
converted, a missing file), 3 for a training run that diverged (`NonFiniteLossError`), 75 for a run stopped by
SIGTERM after saving (`Preempted`: rerun the same command to resume). Every other exception keeps its
traceback (exit 1).

This module imports nothing from gptx, so any module may import it.
"""


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


class DataError(ValueError):
    """Input data that cannot be read; the message names the file and line."""


class InteropError(ValueError):
    """A checkpoint that cannot be converted; the message names the file, key or option."""


class CheckpointError(DataError):
    """No checkpoint of a run can be read (each damaged one has been moved aside); the message names them."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss (or gradient norm, or parameters); the last good checkpoint is kept."""


class Preempted(Exception):
    """A run stopped by SIGTERM after saving its checkpoint; rerunning the same command resumes it."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step} by SIGTERM; rerun the same command to resume")
        self.step = step


# Exit statuses of `gptx.main` (documented in README.md, "Exit codes").
EXIT_BUG, EXIT_USER_ERROR, EXIT_DIVERGED, EXIT_PREEMPTED = 1, 2, 3, 75


__all__ = ["ConfigError", "DataError", "InteropError", "NonFiniteLossError", "Preempted", "CheckpointError"]
