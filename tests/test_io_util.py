"""io_util: atomic writes (no half-written file, no temp file left, the usual permissions), stale temp clean-up,
JSON / CSV / npz / text helpers and the markdown table."""
import csv
import os
import stat

import numpy as np
import pytest

import io_util
from errors import InputError


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_creates_folders_and_replaces_the_file(tmp_path):
  path = tmp_path / 'a' / 'b' / 'x.bin'
  assert io_util.atomic_write(str(path), lambda f: f.write(b'one')) == str(path)
  io_util.atomic_write(str(path), lambda f: f.write(b'two'))
  assert path.read_bytes() == b'two' and os.listdir(path.parent) == ['x.bin']


@pytest.mark.parametrize('exc', [RuntimeError, KeyboardInterrupt])
def test_atomic_write_leaves_no_temp_file_and_keeps_the_old_file_on_an_exception(tmp_path, exc):
  path = tmp_path / 'x.json'
  path.write_text('old')

  def half_then_fail(f):
    f.write('{"half": ')
    raise exc('killed mid-write')

  with pytest.raises(exc):
    io_util.atomic_write(str(path), half_then_fail, binary=False)
  assert os.listdir(tmp_path) == ['x.json'] and path.read_text() == 'old'
  with pytest.raises(exc):  # a first write that fails leaves nothing at all
    io_util.atomic_write(str(tmp_path / 'new.json'), half_then_fail, binary=False)
  assert os.listdir(tmp_path) == ['x.json']


def test_atomic_write_gives_the_usual_permissions(tmp_path, umask022):
  """0666 minus the umask, as open() would give; not mkstemp's 0600 (stats files are shared between users)."""
  path = io_util.write_text(str(tmp_path / 'x.txt'), 'hi')
  assert _mode(path) == 0o644
  os.umask(0o077)
  assert _mode(io_util.write_text(str(tmp_path / 'y.txt'), 'hi')) == 0o600
  os.umask(0o002)
  assert _mode(io_util.save_json({}, str(tmp_path / 'z.json'))) == 0o664


def test_remove_stale_tmp_removes_only_temp_files_of_killed_writes(tmp_path):
  stale = [tmp_path / '.checkpoint_3.pth.k2j1x9.tmp', tmp_path / '.results.json.abc.tmp']
  keep = [tmp_path / 'checkpoint_3.pth', tmp_path / 'notes.tmp', tmp_path / '.hidden']
  for p in stale + keep:
    p.write_bytes(b'x')
  assert sorted(io_util.remove_stale_tmp(str(tmp_path))) == sorted(map(str, stale))
  assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in keep)
  assert io_util.remove_stale_tmp(str(tmp_path)) == []
  assert io_util.remove_stale_tmp(str(tmp_path / 'missing')) == []  # a folder not made yet: nothing to do


def test_json_round_trip(tmp_path):
  obj = {'b': [1, 2.5, None, 'x'], 'a': {'nested': True}, 'n': 3}
  path = str(tmp_path / 'sub' / 'o.json')
  io_util.save_json(obj, path)
  assert io_util.load_json(path) == obj
  text = open(path).read()
  assert text.index('"a"') < text.index('"b"') < text.index('"n"')  # sorted keys: stable diffs
  assert io_util.load_json(str(tmp_path / 'missing.json')) is None
  assert io_util.load_json(str(tmp_path / 'missing.json'), default={}) == {}


def test_write_csv(tmp_path):
  path = io_util.write_csv(str(tmp_path / 't.csv'), ['method', 'n', 'fid'],
                           [('ddim', 5, 12.25), ('pndm, s', 10, float('nan'))])
  with open(path, newline='') as f:
    rows = list(csv.reader(f))
  assert rows == [['method', 'n', 'fid'], ['ddim', '5', '12.25'], ['pndm, s', '10', 'nan']]
  io_util.write_csv(path, ['only'], [])
  assert open(path).read().splitlines() == ['only']


def test_markdown_table():
  table = io_util.markdown_table(['method', 'n', 'FID'], [('ddim', 5, 12.3456), ('ddpm', 10, 7.0)])
  assert table == ('| method | n | FID |\n'
                   '|---|---|---|\n'
                   '| ddim | 5 | 12.346 |\n'
                   '| ddpm | 10 | 7.000 |\n')
  assert io_util.markdown_table(['a'], []) == '| a |\n|---|\n'


def test_save_npz_round_trip(tmp_path):
  x = np.arange(12, dtype=np.float32).reshape(3, 4)
  path = io_util.save_npz(str(tmp_path / 'x.npz'), samples=x, step=np.int64(7))
  with np.load(path) as data:
    np.testing.assert_array_equal(data['samples'], x)
    assert int(data['step']) == 7
  assert os.listdir(tmp_path) == ['x.npz']


@pytest.mark.parametrize('error', [OSError(28, 'No space left on device'), OSError(30, 'Read-only file system'),
                                   RuntimeError('[enforce fail at inline_container.cc:664] . PytorchStreamWriter '
                                                'failed writing file data/0: file write failed')])
def test_a_refused_write_is_one_storage_error_naming_the_path_and_keeps_the_old_file(tmp_path, error):
  """A full disk (torch.save reports it as 'file write failed') or a read-only file system: StorageError, a one-line
  input error that names the path; the file already there is unchanged and no temp file is left."""
  from errors import InputError, StorageError
  path = tmp_path / 'checkpoint.pth'
  path.write_text('old')

  def fail(f):
    f.write(b'partial')
    raise error
  with pytest.raises(StorageError, match=str(path)) as info:
    io_util.atomic_write(str(path), fail)
  assert isinstance(info.value, InputError) and len(str(info.value).splitlines()) == 1
  assert path.read_text() == 'old' and sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pth']


def test_other_write_errors_keep_their_type(tmp_path):
  with pytest.raises(ZeroDivisionError):
    io_util.atomic_write(str(tmp_path / 'x'), lambda f: 1 / 0)


_FIX = 'it must hold "x", a numeric array'


@pytest.mark.parametrize('kind,match', [
    ('object_array', "'x' is an array of Python objects \\(dtype object\\), which is never unpickled"),
    ('missing_key', "has no 'x' array \\(it holds \\['y'\\]\\)"),
    ('pickle', 'is not an npz file'),
    ('truncated', 'is not a readable npz .*damaged or truncated'),
    ('npy', 'is a single .npy array, not an npz'),
])
def test_load_npz_refuses_what_it_cannot_read_in_one_line(tmp_path, kind, match):
  """Every npz the readers take is read without unpickling; what cannot be read is one InputError naming the file
  and what it must hold, and never numpy's advice to load it with allow_pickle."""
  import pickle
  path = tmp_path / 'f.npz'
  if kind == 'object_array':
    np.savez(path, x=np.array([None, 1], dtype=object))
  elif kind == 'missing_key':
    np.savez(path, y=np.zeros(3))
  elif kind == 'pickle':
    path.write_bytes(pickle.dumps({'x': 1}))
  elif kind == 'truncated':
    np.savez(path, x=np.zeros(100))
    path.write_bytes(path.read_bytes()[:300])
  else:
    np.save(tmp_path / 'f.npy', np.zeros(3))
    path = tmp_path / 'f.npy'
  with pytest.raises(InputError, match=match) as err:
    io_util.load_npz(str(path), ['x'], _FIX)
  msg = str(err.value)
  assert str(path) in msg and msg.endswith(_FIX) and '\n' not in msg and 'allow_pickle' not in msg, msg


def test_load_npz_reads_the_keys(tmp_path):
  path = tmp_path / 'f.npz'
  np.savez(path, x=np.arange(3.0), y=np.array('text'), z=np.zeros(2))
  out = io_util.load_npz(str(path), ['x', 'y'], _FIX)
  assert sorted(out) == ['x', 'y'] and out['x'].tolist() == [0.0, 1.0, 2.0] and str(out['y']) == 'text'
