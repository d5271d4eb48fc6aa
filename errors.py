"""Errors that mean bad input, not a bug: a wrong config value, a missing or corrupt file, a foreign checkpoint,
a run that diverged. ``main.py`` prints them as one line and exits non-zero; any other exception keeps its
traceback, because it is a bug in the code."""


class InputError(ValueError):
  """Bad input from the user: the message names the field or file and says what to do.

  It subclasses ValueError so that callers that catch ValueError keep working.
  """


def one_line(err) -> str:
  """'Type: first line of the message' (at most 200 characters; 'Type' alone for an empty message): the cause
  of an error in a one-line message or warning."""
  text = str(err).strip().splitlines()
  return f'{type(err).__name__}: {text[0][:200]}' if text else type(err).__name__
