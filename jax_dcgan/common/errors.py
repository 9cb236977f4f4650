"""Why a command ends early, as the command line reports it: one paragraph, no traceback.

`UserError` is bad input: what is wrong, where, and how to fix it. `TrainingStopped`
is a run that ended before its last step for a reason that is not the user's input
(diverged losses, a signal, a lost process); its message says what was saved and how to continue.
"""

from __future__ import annotations

__all__ = ["Diverged", "Interrupted", "ProcessLost", "TrainingStopped", "UserError",
           "check_batch_split", "error_line", "summarize"]


class UserError(Exception):
    """Bad input from the user: what is wrong, where, and how to fix it, in one paragraph."""
    exit_code = 2


class TrainingStopped(Exception):
    """A run that stopped early; the message names the checkpoint to continue from."""
    exit_code = 1


class Diverged(TrainingStopped):
    """The losses stopped being finite."""
    exit_code = 3


class ProcessLost(TrainingStopped):
    """Another process of a multi-process run was lost; every process must restart."""
    exit_code = 4


class Interrupted(TrainingStopped):
    """SIGINT or SIGTERM, after a checkpoint was written. Exits with 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def error_line(command: str, error: BaseException) -> str:
    """How a command reports the error it ends with."""
    return f"jax-dcgan {command}: error: {error}"


def summarize(e: BaseException, limit: int = 300) -> str:
    """'TypeName: first line of the message': enough of a library's exception for a
    one-paragraph error."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:limit] if text else 'no details'}"


def check_batch_split(batch_size: int, devices: int, processes: int = 1) -> None:
    """The global batch must split evenly over every device of every process."""
    if batch_size % devices:
        hint = " or set --devices" if processes == 1 else ""
        raise UserError(f"--batch-size {batch_size} does not split evenly over {devices} "
                        f"devices; use a multiple of {devices}{hint}.")
