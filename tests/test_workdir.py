"""workdir: checkpoint discovery by the step stored in each file (never by name or time), the writability check,
and the workdir lock (a second writer refused with the holder's PID, stale locks taken over, released on exit)."""
import logging
import os
import subprocess

import pytest
import torch

import workdir as wd
from errors import InputError


@pytest.fixture
def unwritable_folder(tmp_path):
  """A folder that exists but in which no file can be created: a chmod 0o500 folder, or /proc when the tests run
  as root (root ignores the permission bits; nothing can be created in /proc, even by root)."""
  folder = tmp_path / 'read_only'
  folder.mkdir()
  folder.chmod(0o500)
  try:
    (folder / 'probe').touch()
  except PermissionError:
    yield str(folder)
  else:
    (folder / 'probe').unlink()
    yield '/proc'
  folder.chmod(0o700)


def dead_pid():
  """The PID of a process that has exited (PIDs are not reused until the counter wraps around)."""
  proc = subprocess.Popen(['true'])
  proc.wait()
  return proc.pid


def _fake_checkpoint(path, step):
  path.parent.mkdir(parents=True, exist_ok=True)
  torch.save({'step': step, 'model': {}, 'ema': {}, 'optimizer': {}}, str(path))


def test_checkpoints_are_ordered_by_their_stored_step(tmp_path):
  ckpt = tmp_path / 'checkpoints'
  steps = {'checkpoint_1.pth': 10, 'checkpoint_2.pth': 20, 'checkpoint_10.pth': 100, 'checkpoint_9.pth': 5}
  for name, step in steps.items():
    _fake_checkpoint(ckpt / name, step)
  _fake_checkpoint(tmp_path / 'checkpoints-meta' / 'checkpoint.pth', 35)
  (ckpt / 'checkpoint_3.pth').write_bytes(b'not a checkpoint')  # unreadable: last, step None
  for name in ('checkpoint_4.pth.bak', '.checkpoint_5.pth.x1y2.tmp', 'other.pth'):
    (ckpt / name).write_bytes(b'ignored')
  # "touch" in the wrong order: modification times must not matter, nor the number in the name
  for i, name in enumerate(['checkpoint_10.pth', 'checkpoint_2.pth', 'checkpoint_9.pth', 'checkpoint_1.pth']):
    os.utime(ckpt / name, (1e9 + i, 1e9 + i))
  found = wd.checkpoints(str(tmp_path))
  assert [step for step, _ in found] == [100, 35, 20, 10, 5, None]
  assert [os.path.basename(p) for _, p in found] == ['checkpoint_10.pth', 'checkpoint.pth', 'checkpoint_2.pth',
                                                    'checkpoint_1.pth', 'checkpoint_9.pth', 'checkpoint_3.pth']
  assert found[1][1] == wd.meta_checkpoint_path(str(tmp_path))


def test_checkpoints_of_an_empty_or_missing_workdir(tmp_path):
  assert wd.checkpoints(str(tmp_path)) == []
  assert wd.checkpoints(str(tmp_path / 'missing')) == []
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoints' / 'checkpoint_1.pth').write_bytes(b'')
  assert wd.checkpoints(str(tmp_path)) == [(None, wd.checkpoint_path(str(tmp_path), 1))]


# ------------------------------------------------------------------------------------------ ensure_writable
def test_ensure_writable_creates_the_folder_and_leaves_nothing(tmp_path):
  folder = tmp_path / 'a' / 'b'
  assert wd.ensure_writable(str(folder)) == str(folder)
  assert folder.is_dir() and os.listdir(folder) == []


def test_ensure_writable_refuses_a_regular_file(tmp_path):
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(InputError, match='--workdir .*file is a file, not a folder') as err:
    wd.ensure_writable(str(path))
  assert '\n' not in str(err.value)
  with pytest.raises(InputError, match='the output folder .*file/sub is not writable'):
    wd.ensure_writable(str(path / 'sub'), 'the output folder')  # NotADirectoryError, even for root
  assert path.read_text() == 'x'


def test_ensure_writable_refuses_a_read_only_folder(unwritable_folder):
  with pytest.raises(InputError, match='is not writable') as err:
    wd.ensure_writable(unwritable_folder)
  assert unwritable_folder in str(err.value) and '\n' not in str(err.value)


def test_the_stats_folder_check_names_the_config_field(tmp_path):
  from configs.ddpm import digits
  config = digits.get_config()
  config.sampling.stats_dir = str(tmp_path / 'stats')
  assert wd.ensure_stats_dir_writable(config) == os.path.dirname(wd.fid_stats_path(config))
  assert os.path.isdir(tmp_path / 'stats')
  (tmp_path / 'file').write_text('x')
  config.sampling.stats_dir = str(tmp_path / 'file')
  with pytest.raises(InputError, match='sampling.stats_dir .*file is a file, not a folder'):
    wd.ensure_stats_dir_writable(config)


# ------------------------------------------------------------------------------------------ WorkdirLock
def _lock_file(workdir, name='train'):
  return os.path.join(workdir, f'.lock_{name}')


def test_lock_holds_this_pid_and_is_released_on_exit(tmp_path):
  workdir = str(tmp_path)
  with wd.WorkdirLock(workdir, 'train') as lock:
    assert lock.held
    pid, _ = open(_lock_file(workdir)).read().splitlines()[:2]
    assert int(pid) == os.getpid()
    with wd.WorkdirLock(workdir, 'eval'):  # another kind of work in the same workdir is allowed
      assert os.path.exists(_lock_file(workdir, 'eval'))
    assert not os.path.exists(_lock_file(workdir, 'eval'))
  assert not lock.held and os.listdir(workdir) == []


def test_lock_is_released_after_an_exception(tmp_path):
  with pytest.raises(KeyError):
    with wd.WorkdirLock(str(tmp_path), 'train'):
      raise KeyError('a bug inside the run')
  assert os.listdir(tmp_path) == []


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
  """PID 1 is alive for the whole test, and it is not this process (this process's own lock is re-entrant)."""
  path = _lock_file(str(tmp_path))
  with open(path, 'w') as f:
    f.write('1\npython main.py --mode=train\n')
  with pytest.raises(InputError) as err:
    wd.WorkdirLock(str(tmp_path), 'train').acquire()
  msg = str(err.value)
  assert 'in use by process 1 (python main.py --mode=train)' in msg and path in msg and '\n' not in msg
  assert open(path).read().startswith('1\n')  # the holder's lock is left alone


def test_a_refused_lock_does_not_remove_the_holders_file_on_release(tmp_path):
  path = _lock_file(str(tmp_path))
  with open(path, 'w') as f:
    f.write('1\nholder\n')
  lock = wd.WorkdirLock(str(tmp_path), 'train')
  with pytest.raises(InputError):
    lock.acquire()
  lock.release()
  assert os.path.exists(path)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  path = _lock_file(str(tmp_path))
  pid = dead_pid()
  with open(path, 'w') as f:
    f.write(f'{pid}\npython main.py --mode=train\n')
  with caplog.at_level(logging.WARNING):
    with wd.WorkdirLock(str(tmp_path), 'train'):
      assert int(open(path).read().split()[0]) == os.getpid()
  assert f'process {pid} is gone' in caplog.text
  assert not os.path.exists(path)


def test_a_lock_naming_this_process_is_taken_over_as_a_reused_pid(tmp_path, caplog):
  """In a container a killed run's PID is often the next run's too: the lock names us, but no run holds it."""
  path = _lock_file(str(tmp_path))
  with open(path, 'w') as f:
    f.write(f'{os.getpid()}\npython main.py --mode=train\n')
  with caplog.at_level(logging.WARNING):
    with wd.WorkdirLock(str(tmp_path), 'train'):
      assert int(open(path).read().split()[0]) == os.getpid()
  assert 'PID reused' in caplog.text and 'is gone' not in caplog.text
  assert not os.path.exists(path)


@pytest.mark.parametrize('content', ['', 'garbage\n'])
def test_a_lock_file_without_a_pid_is_refused_not_taken_over(tmp_path, content):
  """An empty lock file is another run between creating it and writing its PID (O_EXCL on a file system without
  hard links): it must not be called stale and removed."""
  path = _lock_file(str(tmp_path))
  with open(path, 'w') as f:
    f.write(content)
  with pytest.raises(InputError, match='names no process') as err:
    wd.WorkdirLock(str(tmp_path), 'train').acquire()
  assert path in str(err.value) and '\n' not in str(err.value)
  assert open(path).read() == content and os.listdir(tmp_path) == ['.lock_train']


def test_a_lock_file_never_appears_without_its_pid(tmp_path, monkeypatch):
  """The PID is written before the lock file gets its name (hard link of a complete temporary file)."""
  path = _lock_file(str(tmp_path))
  real_link, seen = os.link, []

  def link(src, dst):
    seen.append(open(src).read())
    real_link(src, dst)

  monkeypatch.setattr(os, 'link', link)
  with wd.WorkdirLock(str(tmp_path), 'train'):
    assert seen and int(seen[0].split()[0]) == os.getpid() == int(open(path).read().split()[0])
    assert os.listdir(tmp_path) == ['.lock_train']  # the temporary file is gone


def test_taking_over_a_stale_lock_never_removes_a_fresh_one(tmp_path):
  """Between reading a dead PID and removing its lock, another run may have replaced it with its own lock: that
  one (here PID 1, alive) is put back, not deleted."""
  path = _lock_file(str(tmp_path))
  with open(path, 'w') as f:
    f.write('1\nthe other run\n')
  wd.WorkdirLock(str(tmp_path), 'train')._remove_stale(dead_pid())
  assert open(path).read() == '1\nthe other run\n' and os.listdir(tmp_path) == ['.lock_train']
