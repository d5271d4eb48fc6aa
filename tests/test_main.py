"""The command line (main.py): input errors end with one line naming the cause and exit non-zero, bugs keep their
traceback, every mode validates its config first, and the workdir lock refuses a second writer.

CLI runs use `python main.py` from the repository root; checks that need no process boundary call
`main.run_mode` / `main.main` in-process. No test waits on the clock: the subprocess timeout only guards
against a hang."""
import logging
import os
import subprocess
import sys
import types

import pytest
import torch

import main
import run_lib
import workdir as wd
from configs.validation import ConfigError
from conftest import HANG_GUARD_S, ROOT, copy_workdir
from errors import InputError
from test_workdir import dead_pid, unwritable_folder  # noqa: F401 (a fixture)

TINY = ['--config.model.nf=32', '--config.model.num_res_blocks=1', '--config.training.batch_size=16',
        '--config.training.n_iters=2', '--config.training.snapshot_freq=2',
        '--config.training.snapshot_freq_for_preemption=2', '--config.training.snapshot_sampling=False',
        '--config.training.eval_freq=2']


def _main(workdir, mode='train', *extra, config='configs/ddpm/digits.py'):
  cmd = [sys.executable, 'main.py', f'--config={config}', f'--workdir={workdir}', f'--mode={mode}', *extra]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))


def _one_line_error(proc, *words):
  """The run failed with exactly one stderr line, 'error: ...', containing every word; no traceback."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-3000:]
  assert all(w in lines[0] for w in words), lines[0]
  return lines[0]


# ------------------------------------------------------------------------------------------ bad paths
def test_missing_config_file_is_one_line(tmp_path):
  proc = _main(tmp_path / 'w', config='configs/ddpm/nope.py')
  _one_line_error(proc, 'configs/ddpm/nope.py', 'not found')
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('text,extra,words', [
    ('x = 1\n', (), ['defines no get_config()']),  # a Python file that is not a config file
    ('x = 1\n', ('--config.seed=3',), ['defines no get_config()']),  # with an override: the same line
    ('training:\n  batch_size: 8\n', (), ['is not Python', 'SyntaxError, line 1']),  # YAML
    ('def get_config():\n  return {"seed": 1}\n', (), ['returned dict, not a ConfigDict']),
])
def test_a_file_that_is_not_a_config_file_is_one_line(tmp_path, text, extra, words):
  """--config=FILE whose FILE runs but defines no get_config (or is not Python at all) ends in one line naming the
  file and what a config file is (absl alone printed a 33-line traceback); nothing is created."""
  path = tmp_path / 'not_a_config.py'
  path.write_text(text)
  _one_line_error(_main(tmp_path / 'w', 'train', *extra, config=str(path)), str(path), *words, 'configs/ddpm/*.py')
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('kind', ['regular_file', 'under_a_file', 'read_only'])
def test_unusable_workdir_is_one_line(tmp_path, unwritable_folder, kind):  # noqa: F811
  (tmp_path / 'file').write_text('not a folder')
  workdir = {'regular_file': tmp_path / 'file', 'under_a_file': tmp_path / 'file' / 'sub',
             'read_only': unwritable_folder}[kind]
  words = ['is a file, not a folder'] if kind == 'regular_file' else ['is not writable']
  _one_line_error(_main(workdir), '--workdir', str(workdir), *words)
  assert (tmp_path / 'file').read_text() == 'not a folder'


def test_sample_checks_its_output_before_loading_weights_or_sampling(tmp_path):
  """The workdir holds no checkpoint: the output error comes first, so it comes before any sampling."""
  (tmp_path / 'file').write_text('x')
  out = tmp_path / 'file' / 'samples' / 'x.npz'
  _one_line_error(_main(tmp_path / 'w', 'sample', f'--sample_out={out}'), 'sample output folder',
                  str(tmp_path / 'file' / 'samples'), 'not writable')


@pytest.mark.parametrize('mode', sorted(main.MODES))
def test_every_mode_checks_its_output_folder_before_any_work(tiny_config, tmp_path, monkeypatch, mode):
  """Every output location is a regular file (the workdir's checkpoint, eval and analysis folders, the stats
  folder, --sample_out's folder): each mode stops with an InputError naming it before it loads data, weights or
  networks, so no expensive work is lost at the end."""
  import datasets
  import evaluation
  from analysis import memorization as mem_lib
  from models import checkpoints
  workdir = tmp_path / 'w'
  workdir.mkdir()
  for name in ('checkpoints', 'checkpoints-meta', 'eval', 'analysis', 'diffusers'):
    (workdir / name).write_text('a file, not a folder')
  blocked = tmp_path / 'file'
  blocked.write_text('a file, not a folder')
  tiny_config.sampling.stats_dir = str(blocked / 'stats')
  for module, name in ((checkpoints, 'load_eps_fn'), (checkpoints, 'load_ema_module'), (datasets, 'get_dataset'),
                       (datasets, 'load_arrays'), (datasets, 'model_batches'), (run_lib, 'build_state'),
                       (evaluation, 'load_inception'), (mem_lib, 'load_feature_net')):
    monkeypatch.setattr(module, name, lambda *a, _name=name, **k: pytest.fail(f'--mode={mode} called {_name} '
                                                                               'before checking its output'))
  kwargs = {'sample_out': str(blocked / 'samples' / 'x.npz')} if mode == 'sample' else {}
  with pytest.raises(InputError, match='is a file, not a folder|is not writable') as err:
    main.run_mode(mode, tiny_config, str(workdir), **kwargs)
  assert str(tmp_path) in str(err.value) and '\n' not in str(err.value)


@pytest.mark.parametrize('fault', ['other_variant', 'unreadable'])
@pytest.mark.parametrize('mode', ['sample', 'eval'])
def test_sample_and_eval_refuse_to_run_without_trained_weights(tiny_config, tmp_path, monkeypatch, mode, fault):
  """With the default sampling.checkpoint=-1, a workdir whose checkpoints fit the other U-Net variant (or are all
  unreadable) stops --mode=sample / --mode=eval with the CheckpointError naming the cause; nothing is sampled
  from random weights and no output is written."""
  import evaluation
  import sampling
  from models import utils as mutils
  workdir = tmp_path / 'w'
  tiny_config.training.n_iters = tiny_config.training.snapshot_freq = 2
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, str(workdir))
  if fault == 'other_variant':
    tiny_config.model.variant, match = 'score_sde', 'This checkpoint fits model.variant=ssb'
  else:
    for path in workdir.glob('checkpoints*/*.pth'):
      path.write_bytes(b'a damaged file')
    match = 'none of the 2 checkpoint file.*not a checkpoint \\(damaged or not a torch file\\)'
  tiny_config.eval.t_starts = ()
  monkeypatch.setattr(evaluation, 'load_reference', lambda config: {})  # reach the weights without FID statistics
  monkeypatch.setattr(sampling, 'generate', lambda *a, **k: pytest.fail('sampled without trained weights'))
  with pytest.raises(mutils.CheckpointError, match=match) as err:
    main.run_mode(mode, tiny_config, str(workdir))
  assert '\n' not in str(err.value)
  assert not list(workdir.glob('samples/*')) and not list(workdir.glob('eval/*'))  # the folders only (checked)


# ------------------------------------------------------------------------------------------ validation first
@pytest.mark.parametrize('mode', sorted(main.MODES))
def test_every_mode_validates_the_config_before_anything(tiny_config, tmp_path, monkeypatch, mode):
  tiny_config.training.batch_size = 0
  monkeypatch.setattr(main.importlib, 'import_module',
                      lambda name: pytest.fail(f'--mode={mode} loaded {name} before validating the config'))
  with pytest.raises(ConfigError, match=r'config.training.batch_size=0 is invalid') as err:
    main.run_mode(mode, tiny_config, str(tmp_path / 'w'))
  assert '\n' not in str(err.value)
  assert not (tmp_path / 'w').exists()  # nothing created, no lock taken


def test_invalid_config_on_the_command_line_is_one_line(tmp_path):
  _one_line_error(_main(tmp_path / 'w', 'eval', '--config.training.batch_size=0'), 'ConfigError',
                  'config.training.batch_size=0')
  assert not (tmp_path / 'w').exists()


# ------------------------------------------------------------------------------------------ bugs vs input errors
@pytest.fixture
def flags(tiny_config, tmp_path, monkeypatch):
  """main.main's flags for --mode=train on tiny_config (restores the root logger's level it changes)."""
  root = logging.getLogger()
  level = root.level
  monkeypatch.setattr(main, 'FLAGS', types.SimpleNamespace(mode='train', config=tiny_config, sample_out=None,
                                                           workdir=str(tmp_path / 'w')))
  yield main.FLAGS
  root.setLevel(level)


def test_a_bug_inside_a_mode_keeps_its_traceback(flags, monkeypatch):
  def buggy(config, workdir):
    assert os.path.exists(os.path.join(workdir, '.lock_train'))
    raise KeyError('a bug, not bad input')

  monkeypatch.setattr(run_lib, 'train', buggy)
  with pytest.raises(KeyError, match='a bug'):  # re-raised, not turned into sys.exit
    main.main([])
  assert os.listdir(flags.workdir) == []  # the lock is released


def test_an_input_error_inside_a_mode_is_one_line_and_releases_the_lock(flags, monkeypatch):
  def bad_input(config, workdir):
    raise InputError('checkpoint x.pth is corrupt: delete it')

  monkeypatch.setattr(run_lib, 'train', bad_input)
  with pytest.raises(SystemExit) as exc:
    main.main([])
  assert exc.value.code == 'error: InputError: checkpoint x.pth is corrupt: delete it'
  assert os.listdir(flags.workdir) == []


# ------------------------------------------------------------------------------------------ two writers
def test_a_second_training_in_a_workdir_is_refused_with_the_holders_pid(tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  with wd.WorkdirLock(str(workdir), 'train'):
    line = _one_line_error(_main(workdir, 'train', *TINY), 'InputError', f'in use by process {os.getpid()}')
    assert int(open(workdir / '.lock_train').read().split()[0]) == os.getpid()  # still ours
  assert str(workdir) in line
  assert os.listdir(workdir) == []  # the refused run wrote nothing (no config.json, no checkpoints)


def test_a_stale_lock_is_taken_over_and_removed_at_exit(tmp_path):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  pid = dead_pid()
  (workdir / '.lock_train').write_text(f'{pid}\npython main.py --mode=train\n')
  proc = _main(workdir, 'train', *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'process {pid} is gone' in proc.stderr
  assert not (workdir / '.lock_train').exists()
  assert torch.load(workdir / 'checkpoints' / 'checkpoint_1.pth', weights_only=True)['step'] == 2


def test_the_lock_is_removed_after_an_input_error_inside_the_mode(tmp_path):
  """An unreadable checkpoint makes --mode=train stop after it took the lock (CheckpointError)."""
  workdir = tmp_path / 'w'
  (workdir / 'checkpoints').mkdir(parents=True)
  (workdir / 'checkpoints' / 'checkpoint_1.pth').write_bytes(b'a damaged file')
  _one_line_error(_main(workdir, 'train', *TINY), 'CheckpointError', 'checkpoint_1.pth', 'restart_unreadable')
  assert not (workdir / '.lock_train').exists()
  assert (workdir / 'checkpoints' / 'checkpoint_1.pth').read_bytes() == b'a damaged file'


def test_a_full_disk_during_training_is_one_line_naming_the_file(tmp_path):
  """A file-size limit (RLIMIT_FSIZE, which needs no root, unlike a small tmpfs) makes the checkpoint write fail
  as a full disk does: the run ends in one line that names the file, leaves no temporary file behind, and no
  traceback anywhere."""
  import resource
  workdir = tmp_path / 'w'
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={workdir}', '--mode=train', *TINY]
  limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))  # Python ignores SIGXFSZ
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S, preexec_fn=limit,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr and lines[-1].startswith('error: '), proc.stderr
  assert 'StorageError' in lines[-1] and str(workdir / 'checkpoints') in lines[-1], lines[-1]
  assert [p.name for p in workdir.rglob('*.tmp*')] == []  # the failed write left nothing half-written


def test_a_gls_sample_into_a_read_only_stats_dir_is_one_line(tmp_path, trained_workdir, unwritable_folder):  # noqa: F811
  """The late-start moments must be computed into sampling.stats_dir: a read-only one is refused before the data
  pass, in one line naming the field, and nothing is sampled."""
  workdir = copy_workdir(trained_workdir, tmp_path / 'w')
  proc = _main(workdir, 'sample', '--config.model.nf=32', '--config.model.ch_mult=(1, 2)',
               '--config.model.num_res_blocks=1', '--config.sampling.init=gls', '--config.sampling.t_start=400',
               '--config.sampling.num_steps=3', '--config.sampling.num_samples=8', '--config.sampling.batch_size=8',
               f'--config.sampling.stats_dir={unwritable_folder}')
  lines = proc.stderr.strip().splitlines()  # the checkpoint's 'loaded' log line may come first
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr and lines[-1].startswith('error: '), proc.stderr
  assert 'sampling.stats_dir' in lines[-1] and str(unwritable_folder) in lines[-1], lines[-1]
  assert not list((tmp_path / 'w').glob('samples/*.npz'))


# ------------------------------------------------------------------------------------------ config errors: one line
@pytest.mark.parametrize('override,field', [
    ('--config.data.image_size=16', 'data.image_size'),
    ('--config.training.batch_size=5000', 'training.batch_size'),
    ('--config.optim.optimizer=SGD', 'optim.optimizer'),
    ('--config.data.num_train=99999', 'data.num_train'),
    ('--config.model.scale_by_sigma=True', 'model.scale_by_sigma'),
    ('--config.data.eval_split=train', 'data.eval_split'),
    ('--config.optim.lr=1e39', 'optim.lr'),
    ('--config.sampling.eta=7', 'sampling.eta'),
    ('--config.sampling.eta=-5', 'sampling.eta'),
    ('--config.sampling.checkpoint=-2', 'sampling.checkpoint'),
])
def test_config_errors_found_late_are_one_line_too(tmp_path, override, field):
  """Checks that only the data or the model can make (image size, split, sizes) raise the config error type
  before any training step, so they print one line like validate_config's own checks."""
  proc = _main(tmp_path / 'w', 'train', *TINY, override)
  lines = proc.stderr.strip().splitlines()  # the run's own log lines may come first; no traceback anywhere
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr and lines[-1].startswith('error: '), proc.stderr
  assert 'ConfigError' in lines[-1] and field in lines[-1], lines[-1]
  assert not list((tmp_path / 'w').glob('checkpoints/*.pth'))  # stopped before any training step


@pytest.mark.parametrize('mode,override,field', [
    ('eval', '--config.eval.num_samples=1', 'eval.num_samples'),
    ('eval', '--config.eval.methods=()', 'eval.methods'),
])
def test_eval_config_errors_before_sampling(tmp_path, mode, override, field):
  _one_line_error(_main(tmp_path / 'w', mode, override), field)


# ------------------------------------------------------------------------------------------ preemption
def _ema_weights(workdir, index):
  ckpt = torch.load(wd.checkpoint_path(str(workdir), index), map_location='cpu', weights_only=False)
  return ckpt['ema']['shadow_params'], ckpt['step']


@pytest.mark.parametrize('signum', [15, 2])  # SIGTERM (schedulers' preemption), SIGINT (Ctrl-C)
def test_signal_writes_the_current_step_and_resume_equals_an_uninterrupted_run(tmp_path, signum):
  import signal
  import time
  args = [*TINY, '--config.training.n_iters=100000', '--config.training.snapshot_freq=100000',
          '--config.training.snapshot_freq_for_preemption=100000', '--config.training.log_freq=1']
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={tmp_path / "a"}', '--mode=train',
         *args]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
  events = tmp_path / 'a' / 'tensorboard'
  deadline = time.monotonic() + HANG_GUARD_S
  while not (events.exists() and any(f.stat().st_size > 200 for f in events.iterdir())):  # a few steps logged
    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:] if proc.poll() else ''
    time.sleep(0.2)
  proc.send_signal(signum)
  _, stderr = proc.communicate(timeout=HANG_GUARD_S)
  assert proc.returncode == 128 + signum, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert 'Traceback' not in stderr and last.startswith('stopped: ') and 'run the same command again' in last, last
  meta = torch.load(wd.meta_checkpoint_path(str(tmp_path / 'a')), map_location='cpu', weights_only=False)
  step = int(last.split(' at step ')[1].split(':')[0])
  assert meta['step'] == step >= 1
  final = [f'--config.training.n_iters={step + 2}', f'--config.training.snapshot_freq={step + 2}']
  resumed = _main(tmp_path / 'a', 'train', *args, *final)
  straight = _main(tmp_path / 'b', 'train', *args, *final)
  assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr[-2000:] + straight.stderr[-2000:]
  (wa, sa), (wb, sb) = _ema_weights(tmp_path / 'a', 1), _ema_weights(tmp_path / 'b', 1)
  assert sa == sb == step + 2 and all(torch.equal(x, y) for x, y in zip(wa, wb))


# A stand-in for a long mode, run through main.py's command line: eval_lib's stages are replaced by stubs (no model,
# statistics or Inception needed), so the real signal path (handler, lock release, exit_all, exit status) runs.
_STUB_RUN = """
import json, os, runpy, sys, time
sys.path.insert(0, os.getcwd())
import eval_lib, run_lib
import workdir as wd

def evaluate(config, workdir):
  path = os.path.join(wd.eval_dir(workdir), 'results.json')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  json.dump({'cell_a': {}, 'cell_b': {}}, open(path, 'w'))  # two finished cells on disk
  print('sweeping', flush=True)
  time.sleep(3600)

eval_lib.evaluate, eval_lib.fid_stats, run_lib.train = evaluate, lambda *a: None, lambda *a: None
sys.argv = ['main.py'] + sys.argv[1:]
runpy.run_path('main.py', run_name='__main__')
"""


@pytest.mark.parametrize('mode', ['eval', 'all'])
def test_sigterm_during_the_eval_sweep_is_one_line_naming_the_kept_cells(tmp_path, mode):
  """SIGTERM in the eval sweep (--mode=eval, or --mode=all in its eval stage) ends with exit status 143 and one
  'stopped:' line that counts the finished cells kept in results.json; the workdir locks are released."""
  import signal
  script = tmp_path / 'stub_run.py'
  script.write_text(_STUB_RUN)
  workdir = tmp_path / 'w'
  cmd = [sys.executable, str(script), '--config=configs/ddpm/digits.py', f'--workdir={workdir}', f'--mode={mode}']
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
  assert proc.stdout.readline() == 'sweeping\n', proc.stderr.read()[-3000:]
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=HANG_GUARD_S)
  results = workdir / 'eval' / 'results.json'
  assert proc.returncode == 143 and stderr.strip().splitlines() == [
      f'stopped: SIGTERM during the eval sweep; 2 finished cells are kept in {results}; run the same command to '
      'resume'], stderr[-3000:]
  assert sorted(os.listdir(workdir)) == ['eval']  # no lock left behind


def test_a_signal_in_any_other_mode_is_a_preempted_line(tiny_config, tmp_path, monkeypatch):
  """Every mode, not only training and the sweep: SIGINT in --mode=sample raises Preempted (exit status 130) with
  one line; the previous handler comes back."""
  import signal
  import sample_lib
  from errors import Preempted

  def interrupted(config, workdir, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    pytest.fail('the signal did not stop the mode')

  monkeypatch.setattr(sample_lib, 'sample', interrupted)
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(Preempted) as err:
    main.run_mode('sample', tiny_config, str(tmp_path / 'w'), sample_out=None)
  assert str(err.value).startswith('SIGINT during --mode=sample;') and 'run the same command again' in str(err.value)
  assert err.value.exit_code == 130 and '\n' not in str(err.value) and signal.getsignal(signal.SIGINT) is before
