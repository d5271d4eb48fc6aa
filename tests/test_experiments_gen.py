"""End-to-end: the memorization experiment and the Jacobian-rank curves on tiny runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import run_lib
from experiments import gen
from conftest import HANG_GUARD_S, ROOT, tiny_digits_config


MEM_COLUMNS = ('gen_score', 'mem_score', 'knn_mem', 'rp_model_vs_optimal', 'optimal_mem_score', 'rp_a_vs_b',
               'gen_score_b', 'mem_score_b', 'knn_mem_b', 'rp_model_b_vs_optimal')


def _tiny_mem_config(tmp_path, sizes=(8, 16)):
  config = tiny_digits_config(tmp_path, **{'training.snapshot_sampling': False})
  a = config.analysis
  a.mem_sizes, a.mem_n_iters, a.mem_num_samples, a.mem_num_steps = sizes, 8, 8, 5
  a.mem_n_iters_per_size = ()  # the digits config's per-size steps are for its own four sizes
  return config


def _record_generate(monkeypatch):
  """Wraps sampling.generate; returns the list of seeds it was called with."""
  import inspect
  import sampling
  seeds, generate = [], sampling.generate
  def recording(*args, **kwargs):
    seeds.append(inspect.signature(generate).bind(*args, **kwargs).arguments['seed'])
    return generate(*args, **kwargs)
  monkeypatch.setattr(sampling, 'generate', recording)
  return seeds


def test_memorization_experiment_tiny(tmp_path, monkeypatch):
  config = _tiny_mem_config(tmp_path)
  workdir = str(tmp_path / 'run')
  seeds = _record_generate(monkeypatch)
  rows = gen.memorization(config, workdir)
  assert [r['num_train'] for r in rows] == [8, 16]
  for r in rows:
    for key in MEM_COLUMNS:
      assert 0.0 <= r[key] <= 1.0, key
    assert r['rp_a_vs_b_low'] <= r['rp_a_vs_b'] <= r['rp_a_vs_b_high']
    # The exact optimal denoiser of n images reproduces its training images with 50 fine steps or 5 coarse ones.
    assert r['optimal_mem_score'] > 0.5
  # Models A, B and the optimal denoiser, for each n, all start from the same per-sample noise (config.seed).
  assert seeds == [config.seed] * 6
  analysis = os.path.join(workdir, 'analysis')
  for name in ('memorization.md', 'memorization.csv', 'memorization.png', 'memorization_n8.png',
               'memorization_n8.json'):
    assert os.path.exists(os.path.join(analysis, name))
  header = open(os.path.join(analysis, 'memorization.csv')).readline().strip().split(',')
  assert set(MEM_COLUMNS) | {'rp_a_vs_b_low', 'rp_a_vs_b_high'} <= set(header)
  md = open(os.path.join(analysis, 'memorization.md')).read()
  assert "Feature net 'pixels'" in md and 'threshold 0.985' in md and 'calibrate_threshold.py' in md
  assert json.load(open(os.path.join(analysis, 'memorization.json')))[0]['num_train'] == 8
  # Model B differs from A in width and training seed.
  cfg_b = json.load(open(os.path.join(workdir, 'memorization', 'n16_b', 'config.json')))
  cfg_a = json.load(open(os.path.join(workdir, 'memorization', 'n16', 'config.json')))
  assert (cfg_a['model']['nf'], cfg_a['seed']) == (32, config.seed)
  assert (cfg_b['model']['nf'], cfg_b['seed']) == (64, config.seed + 1)
  assert cfg_b['data']['num_train'] == 16

  # Resume: nothing is retrained, resampled or rescored.
  ckpts = [os.path.join(workdir, 'memorization', f'n{n}{tag}', 'checkpoints-meta', 'checkpoint.pth')
           for n in (8, 16) for tag in ('', '_b')]
  mtimes = [os.path.getmtime(p) for p in ckpts]
  seeds.clear()
  assert gen.memorization(config, workdir) == rows
  assert seeds == [] and [os.path.getmtime(p) for p in ckpts] == mtimes
  # A changed signature (another threshold) rescores that n.
  config.analysis.threshold = 0.5
  gen.memorization(config, workdir)
  assert seeds == [config.seed] * 6 and [os.path.getmtime(p) for p in ckpts] == mtimes


def test_memorization_identical_models_reproduce_each_other(tmp_path):
  config = _tiny_mem_config(tmp_path, sizes=(8,))
  config.analysis.rp_model_b_nf, config.analysis.rp_model_b_seed = config.model.nf, config.seed
  row, = gen.memorization(config, str(tmp_path / 'run'))
  # Same width, same training seed: B is A retrained, sampled from the same noise, so every pair matches.
  assert row['rp_a_vs_b'] == 1.0
  assert row['rp_model_vs_optimal'] == row['rp_model_b_vs_optimal']
  assert (row['gen_score'], row['knn_mem']) == (row['gen_score_b'], row['knn_mem_b'])


def test_memorization_trains_each_size_for_its_own_steps(tmp_path):
  config = _tiny_mem_config(tmp_path)
  config.analysis.mem_n_iters_per_size = (6, 3)
  workdir = str(tmp_path / 'run')
  rows = gen.memorization(config, workdir)
  assert [(r['num_train'], r['n_iters']) for r in rows] == [(8, 6), (16, 3)]
  for n, steps in ((8, 6), (16, 3)):
    for tag in ('', '_b'):
      cfg = json.load(open(os.path.join(workdir, 'memorization', f'n{n}{tag}', 'config.json')))
      assert cfg['training']['n_iters'] == steps
  # More steps for one size later: that size resumes and is rescored, the other is reused as it is.
  config.analysis.mem_n_iters_per_size = (9, 3)
  again = gen.memorization(config, workdir)
  assert again[1] == rows[1] and again[0]['n_iters'] == 9


def test_rp_table_tiny(tmp_path, monkeypatch):
  import pytest
  from errors import InputError
  config = _tiny_mem_config(tmp_path)
  config.data.num_train = 64  # the "full-data" models of the table, kept tiny
  config.analysis.rp_table_pairs = ('seed', 'sampler')
  workdir = str(tmp_path / 'run')
  seeds = _record_generate(monkeypatch)
  rows = gen.rp_table(config, workdir)
  assert [r['comparison'] for r in rows] == ['seed', 'sampler']
  for r in rows:
    assert 0.0 <= r['rp'] <= 1.0 and 0.0 <= r['gen_score_a'] <= 1.0 and 0.0 <= r['gen_score_b'] <= 1.0
    assert r['rp_low'] <= r['rp'] <= r['rp_high']
  seed_row, sampler_row = rows
  assert seed_row['model_a'] == 'ssb_nf32_seed42' and seed_row['model_b'] == 'ssb_nf32_seed43'
  assert sampler_row['model_a'] == sampler_row['model_b'] == 'ssb_nf32_seed42'
  assert (sampler_row['sampler_a'], sampler_row['sampler_b']) == ('ddim 5', 'f-pndm 5')
  assert seeds == [config.seed] * 3  # base with DDIM and F-PNDM, seed43 with DDIM: the same noise
  assert sorted(os.listdir(os.path.join(workdir, 'rp_table'))) == ['ssb_nf32_seed42', 'ssb_nf32_seed43']
  for ext in ('md', 'csv', 'json'):
    assert os.path.exists(os.path.join(workdir, 'analysis', f'rp_table.{ext}'))
  md = open(os.path.join(workdir, 'analysis', 'rp_table.md')).read()
  assert "Feature net 'pixels'" in md and 'threshold 0.985' in md
  assert json.load(open(os.path.join(workdir, 'analysis', 'rp_table.json')))['rows'] == rows
  seeds.clear()
  assert gen.rp_table(config, workdir) == rows and seeds == []  # resumed: trained and sampled once
  config.analysis.rp_table_pairs = ('seed', 'depth')
  with pytest.raises(InputError, match='depth'):
    gen.rp_table(config, workdir)


def test_rp_interval_is_scipys_wilson_interval():
  from scipy import stats
  from experiments import reproducibility as rp_lib
  for rp, pairs in ((0.265, 200), (0.33, 200), (1.0, 8), (0.0, 50)):
    ci = stats.binomtest(round(rp * pairs), pairs).proportion_ci(confidence_level=rp_lib.RP_LEVEL, method='wilson')
    np.testing.assert_allclose(rp_lib.rp_interval(rp, pairs), (ci.low, ci.high), atol=1e-12)


def test_calibrate_threshold_command(tmp_path):
  import subprocess
  import sys
  out = tmp_path / 'calib.json'
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, os.path.join(root, 'benchmarks', 'calibrate_threshold.py'), '--seeds', '0',
                  '--json', str(out)], check=True, capture_output=True)
  seed0, = json.load(open(out))['seeds']
  # Noisy copies (min similarity 0.987) and held-out digits (p99 0.981) separate near the pixels default 0.985.
  assert 0.982 < seed0['threshold'] < 0.992 and seed0['balanced_accuracy'] > 0.99


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


@pytest.mark.parametrize('samples,words', [
    (np.array([None, 1], dtype=object), ['array of Python objects']),  # would need unpickling
    (np.zeros((2, 64)), ['float64 of shape (2, 64)']),
    (np.full((2, 1, 8, 8), 255, np.uint8), ['range from 255.0 to 255.0']),
])
def test_mem_score_of_a_bad_samples_file_is_one_line(tmp_path, samples, words):
  """--mode=mem_score on an npz whose "samples" is not numeric (N, C, H, W) in [0, 1] ends in one line naming the
  file and what "samples" must be; nothing is scored or written."""
  path = tmp_path / 'bad.npz'
  np.savez(path, samples=samples)
  workdir = tmp_path / 'w'
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={workdir}', '--mode=mem_score',
         f'--config.analysis.samples_file={path}']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: InputError: ') and str(path) in lines[0], lines[0]
  assert all(w in lines[0] for w in words + ['numeric array (N, C, H, W) in [0, 1]']), lines[0]
  assert not list(workdir.glob('analysis/*'))
