"""Training (run_lib): checkpoints, grids, logs, exact resume, corrupt or foreign checkpoints, NaN (tiny digits
configs, a few seconds each)."""
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import run_lib
import sample_lib
from models import utils as mutils
from conftest import ROOT


def _weights(path):
  ckpt = torch.load(path, map_location='cpu', weights_only=True)
  return ckpt['step'], ckpt['model'], ckpt['ema']['shadow_params']


def test_train_writes_checkpoints_grids_logs_and_resumes_as_noop(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  run_lib.train(tiny_config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['checkpoint_1.pth', 'checkpoint_2.pth']
  assert os.path.exists(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'))
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_20.png'))
  assert glob.glob(os.path.join(workdir, 'tensorboard', 'events.out.tfevents.*'))
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  step, _, _ = _weights(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'))
  assert step == 20
  ckpt = torch.load(os.path.join(workdir, 'checkpoints', 'checkpoint_2.pth'), weights_only=True)
  assert set(ckpt) == {'optimizer', 'model', 'ema', 'step'}  # score_sde / SSB layout
  assert all(k.startswith('module.') for k in ckpt['model'])


def _train_cmd(workdir, n_iters):
  return [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={workdir}', '--mode=train',
          '--config.model.nf=32', '--config.model.num_res_blocks=1', '--config.training.batch_size=32',
          f'--config.training.n_iters={n_iters}', '--config.training.snapshot_freq=20',
          '--config.training.snapshot_freq_for_preemption=5', '--config.training.snapshot_sampling=False',
          '--config.training.eval_freq=10']


def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
  """No timeouts: the test waits for events (a checkpoint on disk, the process ending), never for the clock."""
  n_iters = 60
  ref_dir, run_dir = tmp_path / 'ref', tmp_path / 'killed'
  subprocess.run(_train_cmd(ref_dir, n_iters), cwd=ROOT, check=True, capture_output=True)
  proc = subprocess.Popen(_train_cmd(run_dir, n_iters), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  meta = run_dir / 'checkpoints-meta' / 'checkpoint.pth'
  while not meta.exists() and proc.poll() is None:
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at, _, _ = _weights(meta)
  assert killed_at < n_iters, 'the run finished before it could be killed'
  subprocess.run(_train_cmd(run_dir, n_iters), cwd=ROOT, check=True, capture_output=True)
  _assert_same_run(ref_dir, run_dir, n_iters)


def _assert_same_run(dir_a, dir_b, n_iters):
  step_a, model_a, ema_a = _weights(os.path.join(dir_a, 'checkpoints-meta', 'checkpoint.pth'))
  step_b, model_b, ema_b = _weights(os.path.join(dir_b, 'checkpoints-meta', 'checkpoint.pth'))
  assert step_a == step_b == n_iters
  for k in model_a:
    torch.testing.assert_close(model_a[k], model_b[k], rtol=0, atol=0, msg=k)
  for a, b in zip(ema_a, ema_b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_in_two_parts_equals_one_run(tiny_config, tmp_path):
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, str(tmp_path / 'whole'))
  tiny_config.training.n_iters = 10
  run_lib.train(tiny_config, str(tmp_path / 'parts'))
  tiny_config.training.n_iters = 20
  run_lib.train(tiny_config, str(tmp_path / 'parts'))  # resumes at step 10
  _assert_same_run(tmp_path / 'whole', tmp_path / 'parts', 20)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tiny_config, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, workdir)
  for name in ('checkpoints-meta/checkpoint.pth', 'checkpoints/checkpoint_2.pth'):
    path = os.path.join(workdir, name)
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 3)
  model, ema, opt = run_lib.build_state(tiny_config, 'cpu')
  with caplog.at_level('WARNING'):
    step = run_lib.restore_for_training(tiny_config, workdir, model, ema, opt, 'cpu')
  assert step == 10
  assert 'skipped an unreadable checkpoint' in caplog.text and 'checkpoint_2.pth' in caplog.text


def test_training_refuses_a_workdir_whose_checkpoints_do_not_load(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, workdir)
  before = {p: os.path.getsize(p) for p in glob.glob(os.path.join(workdir, 'checkpoints*', '*.pth'))}
  tiny_config.model.variant = 'score_sde'  # the files hold the ssb variant
  tiny_config.training.n_iters = 30
  with pytest.raises(mutils.CheckpointError, match="model.variant=ssb.*restart_unreadable"):
    run_lib.train(tiny_config, workdir)
  assert {p: os.path.getsize(p) for p in before} == before  # nothing overwritten
  tiny_config.training.restart_unreadable = True  # explicit: start over
  run_lib.train(tiny_config, workdir)
  assert _weights(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'))[0] == 30


def test_newest_checkpoint_is_chosen_by_step_not_by_time(tiny_config, tmp_path):
  import workdir as wd
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, workdir)
  os.utime(os.path.join(workdir, 'checkpoints', 'checkpoint_1.pth'))  # "touch": newest by mtime
  os.remove(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'))
  assert [step for step, _ in wd.checkpoints(workdir)] == [20, 10]
  model, ema, opt = run_lib.build_state(tiny_config, 'cpu')
  assert run_lib.restore_for_training(tiny_config, workdir, model, ema, opt, 'cpu') == 20


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(tiny_config, tmp_path, monkeypatch):
  import losses
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  import rng
  real = losses.ddpm_loss

  def flaky(model, schedule, x0, generator):  # the training draw of step 12 goes bad
    loss = real(model, schedule, x0, generator)
    return loss * float('nan') if generator.initial_seed() == rng.sample_seed(tiny_config.seed, 12) else loss

  monkeypatch.setattr(losses, 'ddpm_loss', flaky)
  with pytest.raises(FloatingPointError, match=r'loss is nan at step 12.*last good checkpoint \(step 10\) is kept'):
    run_lib.train(tiny_config, workdir)
  step, model, _ = _weights(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'))
  assert step == 10 and all(torch.isfinite(v).all() for v in model.values())


def test_non_finite_weights_are_never_saved(tiny_config, tmp_path):
  """An infinite learning rate: the loss of step 0 is finite, the update after it makes the weights non-finite,
  and the save of that step is refused, so the checkpoint on disk stays finite and the message's advice holds."""
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  tiny_config.training.snapshot_freq_for_preemption = 1
  tiny_config.optim.lr, tiny_config.optim.warmup = float('inf'), 0
  with pytest.raises(FloatingPointError) as err:
    run_lib.train(tiny_config, workdir)
  assert 'weights became non-finite at step 1' in str(err.value) and 'lower --config.optim.lr' in str(err.value)
  assert 'No checkpoint was written yet, so the next run starts from step 0' in str(err.value)  # true: none
  for path in glob.glob(os.path.join(workdir, 'checkpoints*', '*.pth')):
    _, model, ema = _weights(path)
    assert all(torch.isfinite(v).all() for v in model.values()) and all(torch.isfinite(v).all() for v in ema)


def test_a_diverged_run_keeps_a_finite_checkpoint_that_samples(tiny_config, tmp_path):
  """A huge learning rate (1e6) after 10 good steps: the error names the kept checkpoint, every file on disk holds
  finite weights, and sampling from the workdir (as the advice says) uses that checkpoint and gives no NaN."""
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  tiny_config.training.n_iters = 10
  run_lib.train(tiny_config, workdir)
  tiny_config.training.n_iters = 20
  tiny_config.optim.lr, tiny_config.optim.warmup = 1e6, 0
  with pytest.raises(FloatingPointError, match=r'The last good checkpoint \(step 10\) is kept on disk'):
    run_lib.train(tiny_config, workdir)
  for path in glob.glob(os.path.join(workdir, 'checkpoints*', '*.pth')):
    step, model, ema = _weights(path)
    assert step == 10 and all(torch.isfinite(v).all() for v in model.values())
    assert all(torch.isfinite(v).all() for v in ema)
  out = sample_lib.sample(tiny_config, workdir, sample_out=str(tmp_path / 'samples.npz'))
  with np.load(out) as f:
    assert int(f['step']) == 10 and np.isfinite(f['samples']).all()


def test_stale_tmp_files_of_a_killed_write_are_removed(tiny_config, tmp_path):
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)
  stale = workdir / 'checkpoints' / '.checkpoint_3.pth.abc123.tmp'
  stale.write_bytes(b'partial')
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, str(workdir))
  assert not stale.exists()


def test_random_flip_mirrors_about_half_and_shards_agree_with_the_global_batch():
  x = torch.arange(64 * 4 * 4, dtype=torch.float32).reshape(64, 1, 4, 4)  # no image is its own mirror image
  assert torch.equal(run_lib._flip(x, torch.Generator().manual_seed(0), enabled=False), x)
  out = run_lib._flip(x, torch.Generator().manual_seed(0), enabled=True)
  flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)])
  kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x)])
  assert bool((flipped | kept).all()) and 16 < int(flipped.sum()) < 48  # each image mirrored or kept, about half
  world = 4  # rank r holds rows r, r + 4, ...: its flips are the global batch's flips of those rows
  for rank in range(world):
    part = run_lib._flip(x[rank::world], torch.Generator().manual_seed(0), enabled=True, rows=(rank, world))
    assert torch.equal(part, out[rank::world])
