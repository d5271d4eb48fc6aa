"""Errors that mean bad input, not a bug: a wrong config value, a missing or corrupt file, a foreign checkpoint,
a run that diverged. ``main.py`` prints them as one line and exits non-zero; any other exception keeps its
traceback, because it is a bug in the code."""
import contextlib
import os
import signal
import threading


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
  """A run stopped on SIGTERM / SIGINT (how SLURM and most schedulers preempt a job; Ctrl-C): training after writing
  a checkpoint of the current step, any other mode through ``stop_on_signals``. ``exit_code`` is 128 + the signal
  number, as a shell reports a killed process."""

  def __init__(self, message, signum):
    super().__init__(message)
    self.signum = int(signum)
    self.exit_code = 128 + self.signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def signal_handler(handler, signals=STOP_SIGNALS):
  """``handler(signum, frame)`` handles ``signals`` inside the block; the previous handlers come back afterwards.
  Yields True, or False where nothing is installed: outside the main thread, where Python cannot set handlers.

  Only this process runs ``handler``: a child forked inside the block (a DataLoader worker, which a scheduler's
  SIGTERM or a Ctrl-C reaches too) does what the signal did before, so it ends as quietly as it used to."""
  if threading.current_thread() is not threading.main_thread():
    yield False
    return
  owner = os.getpid()

  def in_owner(signum, frame):
    if os.getpid() == owner:
      return handler(signum, frame)
    _as_before(previous[signum], signum, frame)

  previous = {s: signal.signal(s, in_owner) for s in signals}
  try:
    yield True
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _as_before(previous, signum, frame):
  """What ``signum`` did under the handler ``previous``: call it (Python's SIGINT handler raises KeyboardInterrupt),
  or, for the default action, take it (a SIGTERM ends the process); an ignored signal stays ignored."""
  if callable(previous):
    previous(signum, frame)
  elif previous == signal.SIG_DFL:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_on_signals(describe):
  """Inside the block SIGTERM and SIGINT raise Preempted at once, so a mode unwinds through its ``finally`` blocks,
  locks and atomic writes (which delete their temporary files) and ends in one line instead of a silent kill.

  The message is ``describe(signal name, err)`` (err: the raised Preempted, whose traceback shows where the run
  was), computed as it leaves the block, when the files on disk are final. A handler installed inside (training's:
  finish the step, write a checkpoint) takes over until it puts this one back."""
  def handler(signum, frame):
    err = Preempted(signal.Signals(signum).name, signum)
    err.stop_handler = handler
    raise err

  with signal_handler(handler):
    try:
      yield
    except Preempted as err:
      if getattr(err, 'stop_handler', None) is not handler:
        raise  # training's own, with its own message
      raise Preempted(describe(str(err), err), err.signum) from None


# Where a library's message goes on to advise loading a file unsafely (numpy's allow_pickle, torch's
# weights_only=False): one_line cuts the message there, so that advice is never passed on.
UNSAFE_ADVICE = ('If you trust the file', 'Re-running `torch.load`', 'allow_pickle=True', 'weights_only=False')


def one_line(err) -> str:
  """'Type: first line of the message' (at most 200 characters; 'Type' alone for an empty message): the cause
  of an error in a one-line message or warning. The line ends before any advice to load a file unsafely."""
  text = str(err).strip().splitlines()
  line = text[0] if text else ''
  for advice in UNSAFE_ADVICE:
    line = line.split(advice)[0]
  line = line.strip()
  return f'{type(err).__name__}: {line[:200]}' if line else type(err).__name__
