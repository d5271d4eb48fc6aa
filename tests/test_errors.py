"""errors.py: the one-line cause that every file and backend error message embeds."""
from errors import InputError, one_line


def test_one_line_keeps_the_type_and_the_first_line_only():
  assert one_line(ValueError('bad header\n  at byte 4\n')) == 'ValueError: bad header'
  assert one_line(EOFError()) == 'EOFError'  # no message: the type alone, no dangling colon
  assert one_line(OSError('  \n')) == 'OSError'


def test_one_line_cuts_a_long_first_line_at_200_characters():
  line = one_line(RuntimeError('x' * 500))
  assert line == 'RuntimeError: ' + 'x' * 200


def test_input_error_is_a_value_error():
  assert isinstance(InputError('a'), ValueError)
