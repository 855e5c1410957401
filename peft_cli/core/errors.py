"""The exceptions that cross layers.

The CLI turns a `UserError` into a one-line message on stderr and exit status 2. `Interrupted`
means a run was stopped by a signal and left a checkpoint (exit 130 after Ctrl-C, else 1). `Busy`
means another process trains the run (exit 3). Anything else that escapes a run is a
failure of the run (exit 1). Library code raises `UserError` only for input it can name: a config
key, a file and row, a value.
"""


class UserError(Exception):
    """Bad usage, bad config or bad input data. The message names the key/file/value and the fix."""


class NotMergeable(UserError):
    """The method adds modules that cannot be folded into the base model (e.g. bottleneck adapters)."""


class Interrupted(Exception):
    """The run was stopped by a signal or Ctrl-C; `result.json` says cancelled. `signum` is the
    signal that stopped it (SIGINT for Ctrl-C: the CLI exits 130)."""

    def __init__(self, message: str, signum: int | None = None) -> None:
        super().__init__(message)
        self.signum = signum


class Busy(Exception):
    """Another live process is training this run folder (run/lock.py); this one skips it."""
