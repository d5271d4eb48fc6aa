"""The one place that knows where files live: the workdir layout (score_sde's), the shared statistics folder,
checkpoint discovery by step, and the workdir lock.

  WORKDIR/config.json                       the resolved config of the last run
  WORKDIR/checkpoints/checkpoint_{k}.pth    snapshots every snapshot_freq steps (k = step // snapshot_freq)
  WORKDIR/checkpoints-meta/checkpoint.pth   preemption checkpoint every snapshot_freq_for_preemption steps
  WORKDIR/samples/                          training snapshot grids (step_{s}.png) and --mode=sample output
  WORKDIR/tensorboard/                      loss, lr, grad norm, eval loss
  WORKDIR/eval/                             the sweep: results.{json,md,csv}, plots, grids, samples/{cell}.npz
  WORKDIR/analysis/                         the SSB and GEN analyses
  WORKDIR/diffusers/                        --mode=export_diffusers: a DDPMPipeline folder of the EMA weights
  WORKDIR/memorization/n{n}/                one training sub-run per training-set size (same layout)
  STATS_DIR/{dataset}_{res}_stats.npz       FID reference statistics (sampling.stats_dir)
  STATS_DIR/{dataset}_{res}_moments.npz     late-start data moments
"""
import errno
import glob
import logging
import os
import re

import torch

from errors import InputError
from samplers import low_rank_fit



def config_path(workdir):
  return os.path.join(workdir, 'config.json')


def checkpoint_dir(workdir):
  return os.path.join(workdir, 'checkpoints')


def meta_dir(workdir):
  return os.path.join(workdir, 'checkpoints-meta')


def checkpoint_path(workdir, index):
  return os.path.join(checkpoint_dir(workdir), f'checkpoint_{index}.pth')


def meta_checkpoint_path(workdir):
  return os.path.join(meta_dir(workdir), 'checkpoint.pth')


def samples_dir(workdir):
  return os.path.join(workdir, 'samples')


def snapshot_grid_path(workdir, step):
  return os.path.join(samples_dir(workdir), f'step_{step}.png')


def sample_path(config, workdir, step, options):
  """Default --mode=sample output: the file name encodes every setting that changes the samples: the sampler's
  ``options`` (the plan's: a string value as itself, a number as name + value, e.g. ``f-pndm``, ``eta0.5``), the
  late-start fit, the precision and the training step of the checkpoint (``step``), e.g.
  ``ddim_n10_late_start_gls_tc400_exact_step4000_N64_seed42.npz``."""
  s = config.sampling
  parts = [s.method, f'n{s.num_steps}', s.grid, s.init, f'tc{s.t_start}']
  parts += [v if isinstance(v, str) else f'{k}{v:g}' for k, v in sorted(options.items())]
  if s.init == 'gls':
    rank = f'-rank{s.gls_rank}' if s.gls_rank else ''
    parts.append(s.gls_fit + rank + ('-f32' if s.gls_dtype == 'float32' else ''))
  if config.eval.precision != 'fp32':
    parts.append(config.eval.precision)
  parts += [f'step{int(step)}', f'N{s.num_samples}', f'seed{config.seed}']
  return os.path.join(samples_dir(workdir), '_'.join(parts) + '.npz')


def tensorboard_dir(workdir):
  return os.path.join(workdir, 'tensorboard')


def eval_dir(workdir):
  return os.path.join(workdir, 'eval')


def diffusers_dir(workdir):
  return os.path.join(workdir, 'diffusers')


def analysis_dir(workdir):
  return os.path.join(workdir, 'analysis')


def memorization_dir(workdir, num_train, tag=''):
  return os.path.join(workdir, 'memorization', f'n{num_train}{tag}')


def fid_stats_path(config):
  """FID reference statistics of the training split: {stats_dir}/{dataset}_{image_size}_stats.npz."""
  d = config.data
  return os.path.join(config.sampling.stats_dir, f'{d.dataset.lower()}_{d.image_size}_stats.npz')


def moments_path(config):
  """Late-start moments: sampling.moments_file, or {stats_dir}/{dataset}_{image_size}_moments.npz; where the full
  covariance is too large to form (samplers.low_rank_fit) the file holds a rank-r fit: ..._moments_r{r}.npz."""
  d = config.data
  dim = d.num_channels * d.image_size ** 2
  low_rank = low_rank_fit.full_covariance_bytes(dim) > low_rank_fit.FULL_COVARIANCE_MAX_BYTES
  suffix = f'_r{config.sampling.gls_rank}' if low_rank else ''
  return config.sampling.moments_file or os.path.join(config.sampling.stats_dir,
                                                      f'{d.dataset.lower()}_{d.image_size}_moments{suffix}.npz')


# ------------------------------------------------------------------------------------------ checkpoints
def _read_step(path):
  """The step stored in a checkpoint (memory-mapped, so the weights are not read); None if unreadable."""
  try:
    ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    return int(ckpt['step'])
  except Exception:  # any unreadable file: the caller reports it
    return None


def checkpoints(workdir):
  """Checkpoint files of a workdir as [(step, path)], newest (highest step) first.

  The order comes from the step stored inside each file, never from modification times. Unreadable files come
  last with step None, so a caller can name them.
  """
  paths = glob.glob(os.path.join(checkpoint_dir(workdir), 'checkpoint_*.pth'))
  paths = [p for p in paths if re.fullmatch(r'checkpoint_\d+\.pth', os.path.basename(p))]
  if os.path.exists(meta_checkpoint_path(workdir)):
    paths.append(meta_checkpoint_path(workdir))
  found = [(_read_step(p), p) for p in paths]
  return sorted(found, key=lambda sp: (sp[0] is not None, sp[0] or 0, sp[1] == meta_checkpoint_path(workdir)),
                reverse=True)


# ------------------------------------------------------------------------------------------ folders and lock
def ensure_writable(folder, what='--workdir'):
  """Creates ``folder`` and checks that a file can be written there, before any expensive work."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise InputError(f'{what} {folder} is a file, not a folder: pass a folder path')
  try:
    os.makedirs(folder, exist_ok=True)
    probe = os.path.join(folder, f'.write_test_{os.getpid()}')
    with open(probe, 'w'):
      pass
    os.remove(probe)
  except OSError as err:
    raise InputError(f'{what} {folder} is not writable ({err.strerror}): pass a folder you can write to') from err
  return folder


def ensure_stats_dir_writable(config):
  """ensure_writable on the folder fid_stats_path(config) goes in (sampling.stats_dir); returns that folder."""
  return ensure_writable(os.path.dirname(os.path.abspath(fid_stats_path(config))), 'sampling.stats_dir')


def _pid_alive(pid):
  try:
    os.kill(pid, 0)
  except OSError as err:
    return err.errno == errno.EPERM
  return True


class WorkdirLock:
  """Exclusive lock on one kind of work (``name``: train, eval, ...) in a workdir; a second run of that kind is
  refused with the holder's PID and command.

  The lock is a file ``WORKDIR/.lock_{name}`` holding the owner's PID and command. It is written in full to a
  temporary file first and then hard-linked to its name (the link fails if the name exists), so a lock file never
  appears without its PID. A lock whose process is gone (killed run) is stale and taken over; a lock file without
  a readable PID (another run creating it on a file system without hard links, or a damaged file) is never taken
  over: the run is refused and the message says what to do. Use as a context manager; released on exit.
  """

  def __init__(self, workdir, name='train'):
    self.path = os.path.join(workdir, f'.lock_{name}')
    self.held = False

  def acquire(self):
    for _ in range(3):
      if self._create():
        self.held = True
        return self
      pid, cmd = self._owner()
      if pid is None:
        raise InputError(f'the workdir lock {self.path} exists but names no process (another run may be starting '
                         f'in {os.path.dirname(self.path)}): retry in a moment; delete {self.path} only if no run '
                         'uses this workdir')
      if pid != os.getpid() and _pid_alive(pid):
        raise InputError(f'{os.path.dirname(self.path)} is in use by process {pid} ({cmd}); wait for it to '
                         f'finish or use another --workdir (delete {self.path} only if that process is gone)')
      self._remove_stale(pid)
    raise InputError(f'could not take the workdir lock {self.path}; another run may be starting there')

  def _create(self):
    """Creates the lock file with this process's PID and command, atomically; False when it already exists."""
    import sys
    text = f'{os.getpid()}\n{" ".join(sys.argv)[:200]}\n'
    tmp = f'{self.path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      f.write(text)
    try:
      os.link(tmp, self.path)
    except FileExistsError:
      return False
    except OSError:  # no hard links on this file system: O_EXCL (the file is empty until the write below)
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      with os.fdopen(fd, 'w') as f:
        f.write(text)
    finally:
      os.remove(tmp)
    return True

  def _remove_stale(self, pid):
    """Removes the lock of the dead process ``pid``: renamed aside first, so that a lock another run took over
    in the meantime is put back instead of deleted."""
    aside = f'{self.path}.{os.getpid()}.stale'
    try:
      os.rename(self.path, aside)
    except FileNotFoundError:  # another run removed it first
      return
    if self._owner(aside)[0] == pid:
      why = ('it names this run: a PID reused after the run that wrote it ended' if pid == os.getpid()
             else f'process {pid} is gone')  # PIDs are often reused in containers
      logging.warning('removed stale workdir lock %s (%s)', self.path, why)
    else:  # a fresh lock of another run: put it back (unless a third run got there first)
      try:
        os.link(aside, self.path)
      except OSError:
        pass
    os.remove(aside)

  def _owner(self, path=None):
    """(PID, command) written in the lock file; (None, '?') when it is missing, empty or unreadable."""
    try:
      with open(path or self.path) as f:
        lines = f.read().splitlines()
      return int(lines[0]), (lines[1] if len(lines) > 1 else '?')
    except (OSError, ValueError, IndexError):
      return None, '?'

  def release(self):
    if self.held:
      self.held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
