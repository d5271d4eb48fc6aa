"""End-to-end smoke tests of training and sampling on tiny digits configs (a few seconds each)."""
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
  n_iters = 60
  ref_dir, run_dir = tmp_path / 'ref', tmp_path / 'killed'
  subprocess.run(_train_cmd(ref_dir, n_iters), cwd=ROOT, check=True, capture_output=True, timeout=300)
  proc = subprocess.Popen(_train_cmd(run_dir, n_iters), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  meta = run_dir / 'checkpoints-meta' / 'checkpoint.pth'
  deadline = time.time() + 240
  while not meta.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at, _, _ = _weights(meta)
  assert killed_at < n_iters, 'the run finished before it could be killed'
  subprocess.run(_train_cmd(run_dir, n_iters), cwd=ROOT, check=True, capture_output=True, timeout=300)
  step_a, model_a, ema_a = _weights(ref_dir / 'checkpoints-meta' / 'checkpoint.pth')
  step_b, model_b, ema_b = _weights(meta)
  assert step_a == step_b == n_iters
  for k in model_a:
    torch.testing.assert_close(model_a[k], model_b[k], rtol=0, atol=0, msg=k)
  for a, b in zip(ema_a, ema_b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tiny_config, tmp_path, caplog):
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, workdir)
  for name in ('checkpoints-meta/checkpoint.pth', 'checkpoints/checkpoint_2.pth'):
    path = os.path.join(workdir, name)
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 3)
    os.utime(path)
  model, ema, opt = run_lib.build_state(tiny_config, 'cpu')
  with caplog.at_level('WARNING'):
    step = run_lib.restore_latest(workdir, model, ema, opt)
  assert step == 10
  assert 'skipping unreadable checkpoint' in caplog.text


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
  with pytest.raises(FloatingPointError, match='loss is nan at step 12.*last good checkpoint'):
    run_lib.train(tiny_config, workdir)
  step, model, _ = _weights(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'))
  assert step == 10 and all(torch.isfinite(v).all() for v in model.values())


def test_sample_mode_writes_npz_and_grid(tiny_config, tmp_path):
  workdir = str(tmp_path / 'run')
  tiny_config.training.snapshot_sampling = False
  run_lib.train(tiny_config, workdir)
  tiny_config.sampling.method, tiny_config.sampling.num_steps = 'ddim', 3
  tiny_config.sampling.init, tiny_config.sampling.t_start = 'gls', 500
  path = run_lib.sample(tiny_config, workdir)
  assert path.endswith('ddim_n3_late_start_gls_tc500_N8_seed42.npz')
  x = np.load(path)['samples']
  assert x.shape == (8, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
  assert os.path.exists(path[:-4] + '.png')
  assert glob.glob(os.path.join(tiny_config.sampling.stats_dir, 'digits_8_moments.npz'))  # cached on first use
  out = run_lib.sample(tiny_config, workdir, sample_out=str(tmp_path / 'mine.npz'))
  np.testing.assert_array_equal(np.load(out)['samples'], x)  # seeded per sample: reproducible


def test_sample_bad_inputs_fail_before_sampling(tiny_config, tmp_path):
  from configs.validation import ConfigError
  tiny_config.sampling.num_steps = 0
  with pytest.raises(ConfigError, match='config.sampling.num_steps'):
    run_lib.sample(tiny_config, str(tmp_path))
  tiny_config.sampling.num_steps = 5
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    run_lib.sample(tiny_config, str(tmp_path / 'empty'))
  tiny_config.sampling.init = 'gls'
  tiny_config.sampling.moments_file = str(tmp_path / 'nope.npz')
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    run_lib.sample(tiny_config, str(tmp_path / 'empty'))
