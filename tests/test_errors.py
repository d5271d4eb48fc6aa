"""errors.py: the one-line cause that every file and backend error message embeds, and the signal handling that
turns SIGTERM / SIGINT into one 'stopped:' line (Preempted)."""
import os
import signal
import threading

import pytest

from errors import InputError, Preempted, one_line, signal_handler, stop_on_signals


def test_one_line_keeps_the_type_and_the_first_line_only():
  assert one_line(ValueError('bad header\n  at byte 4\n')) == 'ValueError: bad header'
  assert one_line(EOFError()) == 'EOFError'  # no message: the type alone, no dangling colon
  assert one_line(OSError('  \n')) == 'OSError'


def test_one_line_cuts_a_long_first_line_at_200_characters():
  line = one_line(RuntimeError('x' * 500))
  assert line == 'RuntimeError: ' + 'x' * 200


def test_input_error_is_a_value_error():
  assert isinstance(InputError('a'), ValueError)


@pytest.mark.parametrize('message,kept', [
    ('This file contains pickled (object) data. If you trust the file you can load it unsafely using the '
     '`allow_pickle=` keyword argument or `pickle.load()`.', 'This file contains pickled (object) data.'),
    ('Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely succeed, but '
     'it can result in arbitrary code execution.', 'Weights only load failed.'),
])
def test_one_line_never_passes_on_advice_to_load_unsafely(message, kept):
  """numpy's and torch's messages go on to advise unpickling the file; the cause is kept, the advice cut."""
  assert one_line(ValueError(message)) == f'ValueError: {kept}'


def _describe(signame, err):
  return f'{signame} in the test; {type(err).__name__} raised by the handler'


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_stop_on_signals_raises_preempted_with_the_described_line(signum):
  before = signal.getsignal(signum)
  with pytest.raises(Preempted) as err:
    with stop_on_signals(_describe):
      os.kill(os.getpid(), signum)
      for _ in range(10 ** 8):  # the handler raises at the next bytecode; this never ends on its own
        pass
  name = signal.Signals(signum).name
  assert str(err.value) == f'{name} in the test; Preempted raised by the handler'
  assert err.value.exit_code == 128 + signum and signal.getsignal(signum) is before  # the old handler is back


def test_a_handler_inside_takes_over_and_other_preempted_pass_unchanged():
  """Training's handler (only records the signal) replaces the outer one inside, and its own Preempted keeps its
  message."""
  received = []
  with pytest.raises(Preempted, match='^own message$'):
    with stop_on_signals(_describe):
      with signal_handler(lambda signum, frame: received.append(signum)):
        os.kill(os.getpid(), signal.SIGTERM)
      assert received == [signal.SIGTERM]
      raise Preempted('own message', signal.SIGTERM)


def test_signal_handler_installs_nothing_outside_the_main_thread():
  seen = []

  def run():
    with signal_handler(lambda *a: None) as installed:
      seen.append(installed)

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == [False]


@pytest.mark.parametrize('signum,exitcode', [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 0)])
def test_a_forked_child_does_what_the_signal_did_before(signum, exitcode):
  """A DataLoader worker forked inside the block gets a scheduler's SIGTERM (or Ctrl-C) too: it ends as it would
  have without the handler (killed by SIGTERM; KeyboardInterrupt for SIGINT, which the target here absorbs), and
  never raises Preempted with a traceback."""
  import multiprocessing
  with stop_on_signals(_describe):
    child = multiprocessing.get_context('fork').Process(target=_signal_yourself, args=(signum,))
    child.start()
    child.join(60)
  assert child.exitcode == exitcode


def _signal_yourself(signum):
  try:
    os.kill(os.getpid(), signum)
    for _ in range(10 ** 8):
      pass
  except KeyboardInterrupt:
    return
  os._exit(3)  # the signal changed nothing
