"""End-to-end: the memorization experiment and the Jacobian-rank curves on tiny runs."""
import json
import os

import numpy as np

import run_lib
from experiments import gen
from conftest import tiny_digits_config


def test_memorization_experiment_tiny(tmp_path):
  config = tiny_digits_config(tmp_path, **{'training.snapshot_sampling': False})
  a = config.analysis
  a.mem_sizes, a.mem_n_iters, a.mem_num_samples, a.mem_num_steps = (4, 32), 8, 8, 5
  workdir = str(tmp_path / 'run')
  rows = gen.memorization(config, workdir)
  assert [r['num_train'] for r in rows] == [4, 32]
  for r in rows:
    for key in ('gen_score', 'mem_score', 'knn_mem', 'rp_model_vs_optimal', 'optimal_mem_score'):
      assert 0.0 <= r[key] <= 1.0
    # The exact optimal denoiser of n images reproduces its training images with 50 fine steps or 5 coarse ones.
    assert r['optimal_mem_score'] > 0.5
  for name in ('memorization.md', 'memorization.csv', 'memorization.png', 'memorization_n4.png'):
    assert os.path.exists(os.path.join(workdir, 'analysis', name))
  assert json.load(open(os.path.join(workdir, 'analysis', 'memorization.json')))[0]['num_train'] == 4
  assert os.path.exists(os.path.join(workdir, 'memorization', 'n32', 'checkpoints-meta', 'checkpoint.pth'))


def test_jacobian_rank_model_and_exact(tmp_path):
  config = tiny_digits_config(tmp_path, **{'training.snapshot_sampling': False, 'data.num_train': 32})
  config.analysis.jacobian_num_samples, config.analysis.jacobian_num_steps = 1, 3
  workdir = str(tmp_path / 'run')
  run_lib.train(config, workdir)
  curves = gen.jacobian_rank(config, workdir)
  assert set(curves) == {'trained U-Net', 'optimal empirical denoiser'}
  exact = curves['optimal empirical denoiser']
  assert len(exact) == 3
  assert all(0 <= r['rank'] <= 64 and np.isclose(r['rank_over_D'], r['rank'] / 64) for r in exact)
  # With 32 training images the exact denoiser's output lies in their affine span: rank <= 31.
  assert max(r['rank'] for r in exact) <= 31
  assert exact[-1]['rank'] <= 1  # t = 0: it snaps onto the nearest training image, Jacobian ~ 0
  assert os.path.exists(os.path.join(workdir, 'analysis', 'jacobian_rank.png'))


def test_mem_score_of_a_samples_file(tmp_path):
  import datasets
  import pytest
  config = tiny_digits_config(tmp_path)
  train, _ = datasets.load_arrays(config, 'train')
  copies = train[:6].numpy()
  noise = np.random.default_rng(0).uniform(0, 1, size=(4,) + copies.shape[1:]).astype(np.float32)
  path = tmp_path / 'samples.npz'
  np.savez(path, samples=np.concatenate([copies, noise]))
  config.analysis.samples_file = str(path)
  out = gen.mem_score(config, str(tmp_path / 'run'))
  assert out['num_samples'] == 10 and out['num_train'] == len(train)
  assert out['mem_score'] == 0.6 and out['knn_mem'] == 0.6  # the 6 exact copies, not the 4 noise images
  assert os.path.exists(tmp_path / 'run' / 'analysis' / 'mem_score_samples.json')
  np.savez(path, samples=np.zeros((3, 1, 16, 16), np.float32))
  with pytest.raises(ValueError, match='do not match'):
    gen.mem_score(config, str(tmp_path / 'run'))
  config.analysis.samples_file = str(tmp_path / 'missing.npz')
  with pytest.raises(FileNotFoundError, match='samples_file'):
    gen.mem_score(config, str(tmp_path / 'run'))
