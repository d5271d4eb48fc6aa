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

from errors import StorageError


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


def save_npz(path, **arrays):
  """Atomic ``np.savez`` (uncompressed)."""
  return atomic_write(path, lambda f: np.savez(f, **arrays))


def save_json(obj, path):
  """Atomic JSON write (indented, sorted keys)."""
  return atomic_write(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True), binary=False)


def load_json(path, default=None):
  """The JSON object in ``path``, or ``default`` when the file does not exist."""
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


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
