"""Errors that mean bad input, not a bug: a wrong config value, a missing or corrupt file, a foreign checkpoint,
a run that diverged. ``main.py`` prints them as one line and exits non-zero; any other exception keeps its
traceback, because it is a bug in the code."""


class InputError(ValueError):
  """Bad input from the user: the message names the field or file and says what to do.

  It subclasses ValueError so that callers that catch ValueError keep working.
  """


class ConfigError(InputError):
  """A config value that cannot work; the message names the field and what to do (configs.validation checks what
  it can before any work; the data and model modules raise it for what only they can know)."""


class StorageError(InputError):
  """A write that the file system refused for a reason the user can fix (a full disk, a read-only file system, no
  permission); the message names the path."""


class Preempted(Exception):
  """Training stopped on SIGTERM / SIGINT after writing a checkpoint of the current step (how SLURM and most
  schedulers preempt a job). ``exit_code`` is 128 + the signal number, as a shell reports a killed process."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.exit_code = 128 + int(signum)


def one_line(err) -> str:
  """'Type: first line of the message' (at most 200 characters; 'Type' alone for an empty message): the cause
  of an error in a one-line message or warning."""
  text = str(err).strip().splitlines()
  return f'{type(err).__name__}: {text[0][:200]}' if text else type(err).__name__
