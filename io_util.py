"""The one place that writes files: atomic writes (temp file in the same folder, fsync, rename), JSON/CSV/npz
helpers, and headless plotting. Readers never see a half-written file, and a killed write leaves only a
``.NAME.*.tmp`` file that ``remove_stale_tmp`` cleans up on the next start."""
import csv
import errno
import glob
import json
import os
import shutil
import tempfile
import zipfile
import zlib

import numpy as np

from errors import InputError, StorageError, one_line


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def atomic_write(path, write_fn, binary=True):
  """Calls ``write_fn(f)`` on a temporary file next to ``path``, then renames it onto ``path``.

  The file gets the usual permissions (0666 minus the umask), not mkstemp's 0600.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=folder)
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())  # a crash after the rename must not leave a truncated file
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException as err:
    if os.path.exists(tmp):
      os.remove(tmp)
    cause = storage_cause(err, folder)
    if cause:
      raise StorageError(f'cannot write {path}: {cause}. Free space there or choose another folder; '
                         'the files already there are unchanged') from err
    raise
  return path


USER_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM)  # EFBIG: ulimit -f


def storage_cause(err, folder):
  """The user-fixable cause of a failed write, or None: an OSError (the error or one it was raised from or while
  handling) with a full disk, read-only file system, quota, file-size limit or missing permission; or torch.save's
  RuntimeError when the file system took fewer bytes than it wrote ('file write failed', 'unexpected pos')."""
  seen = err
  while seen is not None:
    if isinstance(seen, OSError) and seen.errno in USER_ERRNOS:
      return os.strerror(seen.errno)
    seen = seen.__cause__ or seen.__context__
  if isinstance(err, RuntimeError) and any(m in str(err) for m in ('write failed', 'unexpected pos')):
    try:
      free = shutil.disk_usage(folder).free
    except OSError:
      return 'the file system refused the write'
    return (f'the file system refused the write ({free / 2 ** 20:.1f} MiB free in {folder}; a quota or a file-size '
            'limit, ulimit -f, can refuse it too)')
  return None


def remove_stale_tmp(folder):
  """Deletes ``.*.tmp`` files that an atomic write killed mid-way left in ``folder``; returns their paths."""
  stale = glob.glob(os.path.join(folder, '.*.tmp'))
  for path in stale:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
  return stale


# What np.load raises on a damaged .npz (truncated, not a zip, a bad member, a missing key): the readers catch this
# tuple and name the file and what to do, instead of a traceback.
NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)


def load_npz(path, keys, fix):
  """{key: array} of the ``keys`` of the npz file ``path``, read whole, never unpickling anything.

  Raises InputError, one line naming the file and ending in ``fix`` (what the file must hold or what to do), when
  the file is not a readable npz (damaged, truncated, another format), lacks a key, or holds a key as an array of
  Python objects (dtype object: reading it would unpickle, which is refused).
  """
  try:
    npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
      raise InputError(f'{path} is a single .npy array, not an npz: {fix}')
    with npz:
      missing = [k for k in keys if k not in npz.files]
      if missing:
        raise InputError(f'{path} has no {", ".join(map(repr, missing))} array (it holds {npz.files}): {fix}')
      for key in keys:
        dtype = _npz_dtype(npz, key)
        if dtype is not None and dtype.hasobject:
          raise InputError(f'{path}: {key!r} is an array of Python objects (dtype object), which is never '
                           f'unpickled: {fix}')
      return {k: npz[k] for k in keys}
  except InputError:
    raise
  except NPZ_ERRORS as err:
    if 'pickle' in str(err):  # numpy reads what is neither npz nor npy as a pickle; its advice is not passed on
      raise InputError(f'{path} is not an npz file (damaged or another kind of file, which is never unpickled): '
                       f'{fix}') from None
    raise InputError(f'{path} is not a readable npz ({one_line(err)}): it is damaged or truncated; {fix}') from None


def _npz_dtype(npz, key):
  """The dtype in the header of member ``key`` of an open npz, read without loading (or unpickling) the data;
  None for a header version numpy has no public reader for (3.0: utf-8 field names)."""
  readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
  with npz.zip.open(key + '.npy') as member:
    read_header = readers.get(np.lib.format.read_magic(member))
    return read_header(member)[2] if read_header else None


def save_npz(path, **arrays):
  """Atomic ``np.savez`` (uncompressed)."""
  return atomic_write(path, lambda f: np.savez(f, **arrays))


def file_sha256(path):
  """The sha256 hex digest of a file, read in 1 MiB blocks."""
  import hashlib
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def save_json(obj, path):
  """Atomic JSON write (indented, sorted keys)."""
  return atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True), binary=False)


def load_json(path, default=None):
  """The JSON object in ``path``, or ``default`` when the file does not exist.

  A file that does not parse is never trusted: with a ``default`` (a cache: results.json, floor.json) it is set
  aside as ``<path>.damaged-<time>`` with a warning and ``default`` is returned, so the caller recomputes it;
  without one it is an InputError naming the file."""
  if not os.path.exists(path):
    return default
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as err:
    if default is None:
      raise InputError(f'{path} is not valid JSON ({err}): the file is damaged; restore or remove it') from None
    return set_aside(path, f'not valid JSON ({err})', default)


def set_aside(path, why, result=None):
  """Renames a damaged cache file to ``<path>.damaged-<unix time>`` (kept for inspection, never read again), logs a
  warning naming it and ``why``; returns ``result``."""
  import logging
  import time
  aside = f'{path}.damaged-{int(time.time())}'
  os.replace(path, aside)
  logging.warning('%s is damaged (%s): set aside as %s; its contents will be recomputed', path, why, aside)
  return result


def write_text(path, text):
  """Atomic text write."""
  return atomic_write(path, lambda f: f.write(text), binary=False)


def write_csv(path, header, rows):
  """Atomic CSV write: one header row, then ``rows``."""
  def write(f):
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return atomic_write(path, write, binary=False)


def markdown_table(header, rows):
  """A markdown table (list of lines joined by newlines); floats are printed with 3 decimals."""
  fmt = lambda v: f'{v:.3f}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(map(str, header)) + ' |', '|' + '---|' * len(header)]
  return '\n'.join(lines + ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]) + '\n'


def pyplot():
  """matplotlib.pyplot on the headless Agg backend (library code never opens a window)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def save_figure(fig, path, dpi=120):
  """tight_layout, save (atomically) and close a matplotlib figure."""
  plt = pyplot()
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, dpi=dpi, format=os.path.splitext(path)[1][1:] or 'png'))
  plt.close(fig)
  return path
