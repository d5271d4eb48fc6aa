"""End-to-end: fid_stats and the eval sweep on a tiny digits model (Inception on a few dozen images)."""
import json
import os

import numpy as np
import pytest

import eval_lib
import evaluation
import run_lib
import workdir as wd
from conftest import TRAINED_OVERRIDES, copy_workdir, tiny_digits_config


@pytest.fixture(scope='module')
def trained(tmp_path_factory, trained_workdir):
  """The session's 20-step digits model (a copy) plus FID stats of its 32 training images (shared below)."""
  tmp = tmp_path_factory.mktemp('eval')
  mp = pytest.MonkeyPatch()
  mp.setenv('SSB_CACHE_DIR', str(tmp / 'cache'))
  config = tiny_digits_config(tmp, **TRAINED_OVERRIDES)
  config.eval.methods = ('ddim', 'pndm')
  config.eval.num_steps = (3,)
  config.eval.t_starts = (400,)
  config.eval.kid_subset_size = 8
  workdir = copy_workdir(trained_workdir, tmp / 'run')
  stats = eval_lib.fid_stats(config, workdir)
  yield config, workdir, stats
  mp.undo()


def test_fid_stats_records_dataset_and_count(trained):
  config, _, stats = trained
  ref = evaluation.load_reference(config)  # checked against the weights hash and the data fingerprint
  assert ref['count'] == 32 and ref['feats'].shape == (32, 2048)
  assert ref['mu'].shape == (2048,) and ref['sigma'].shape == (2048, 2048)
  assert os.path.exists(wd.moments_path(config)) and stats == wd.fid_stats_path(config)


def test_sweep_writes_tables_plots_grids_and_resumes(trained, monkeypatch):
  config, workdir, _ = trained
  results = eval_lib.evaluate(config, workdir)
  keys = {c.key for c in eval_lib.sweep_cells(config)}
  assert set(results) == keys and len(keys) == 4  # {ddim, pndm} x {vanilla, gls t_c=400}
  for r in results.values():
    assert r['num_samples'] == 8 and np.isfinite(r['fid']) and r['fid'] > 0 and r['checkpoint_step'] == 20
    assert r['kid_std'] >= 0
    assert r['nfe'] == (3 if r['method'] == 'ddim' else 12)  # F-PNDM: n + 9 network calls
  out = os.path.join(workdir, 'eval')
  for name in ('results.md', 'results.csv', 'results_all.csv', 'fid_vs_tc_ddim.png', 'fid_vs_tc_pndm.png',
               'grid_ddim_n3.png', 'grid_pndm_n3.png'):
    assert os.path.exists(os.path.join(out, name)), name
  table = open(os.path.join(out, 'results.md')).read()
  assert '| DIGITS | 3 |' in table and 't_c=400' in table and '[8] samples' in table and 'step [20]' in table
  floor = json.load(open(os.path.join(out, 'floor.json')))  # real held-out images scored as a cell
  assert floor['num_samples'] == 8 and np.isfinite(floor['fid']) and floor['kid_std'] >= 0
  assert f"Floor: real held-out images (the eval split, 8 images) score FID {floor['fid']:.2f}" in table
  assert 'real held-out (floor)' in open(os.path.join(out, 'results.csv')).read()
  # Vanilla and gls start from the same per-sample seeds but differ after the start.
  v = np.load(os.path.join(out, results['ddim_n3_normal_tc999_late_start']['samples']))['samples']
  g = np.load(os.path.join(out, results['ddim_n3_gls_tc400_late_start']['samples']))['samples']
  assert v.shape == g.shape == (8, 1, 8, 8) and not np.allclose(v, g)

  # Resume: finished cells are not recomputed; a new t_c adds only its own cells.
  calls = []
  real_run_cell = eval_lib.run_cell
  monkeypatch.setattr(eval_lib, 'run_cell', lambda c, cell, ctx: calls.append(cell.key) or
                      real_run_cell(c, cell, ctx))
  monkeypatch.setattr(eval_lib, 'floor_record', lambda c, ctx: calls.append('floor'))
  eval_lib.evaluate(config, workdir)
  assert calls == []  # nor the floor
  config.eval.t_starts = (400, 600)
  eval_lib.evaluate(config, workdir)
  assert sorted(calls) == ['ddim_n3_gls_tc600_late_start', 'pndm_n3_gls_tc600_late_start']
  assert len(json.load(open(os.path.join(out, 'results.json')))) == 6


def _csv(path):
  import csv
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _fresh_copy(workdir, dest):
  """A copy of the trained workdir without the eval outputs of earlier tests."""
  import shutil
  work = copy_workdir(workdir, dest)
  shutil.rmtree(os.path.join(work, 'eval'), ignore_errors=True)
  return work


def _counting(monkeypatch):
  calls, real_run_cell = [], eval_lib.run_cell
  monkeypatch.setattr(eval_lib, 'run_cell', lambda c, cell, ctx: calls.append(cell.key) or
                      real_run_cell(c, cell, ctx))
  return calls


def test_results_all_keeps_every_cell_of_the_checkpoint_and_states_the_precision(trained, tmp_path):
  """A grid that replaces a t_c keeps the old cells in results_all.csv (in_plan False); every table says fp32."""
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.eval.methods, config.eval.t_starts = ('ddim',), (400,)
  work = _fresh_copy(workdir, tmp_path / 'run')
  eval_lib.evaluate(config, work)
  config.eval.t_starts = (600,)
  eval_lib.evaluate(config, work)
  out = os.path.join(work, 'eval')
  rows = {(r['init'], r['t_start']): r for r in _csv(os.path.join(out, 'results_all.csv'))}
  assert set(rows) == {('normal', '999'), ('gls', '400'), ('gls', '600')}
  assert [rows[k]['in_plan'] for k in (('normal', '999'), ('gls', '400'), ('gls', '600'))] == ['True', 'False', 'True']
  assert {r['precision'] for r in rows.values()} == {'fp32'}
  assert 'U-Net precision: fp32' in open(os.path.join(out, 'results.md')).read()
  assert 'U-Net precision: fp32' in open(os.path.join(out, 'results_gain.md')).read()
  assert {r['precision'] for r in _csv(os.path.join(out, 'results.csv')) if r['t_c']} == {'fp32'}


def test_eval_grids_sweeps_every_cell_on_each_grid(trained, tmp_path):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.eval.methods, config.eval.t_starts, config.eval.grids = ('ddim',), (400,), ('late_start', 'karras')
  results = eval_lib.evaluate(config, _fresh_copy(workdir, tmp_path / 'run'))
  assert sorted(results) == ['ddim_n3_gls_tc400_karras', 'ddim_n3_gls_tc400_late_start',
                             'ddim_n3_normal_tc999_karras', 'ddim_n3_normal_tc999_late_start']
  assert results['ddim_n3_gls_tc400_karras']['timesteps'][0] == 400  # a late start begins at t_c on every grid
  assert results['ddim_n3_gls_tc400_karras']['timesteps'] != results['ddim_n3_gls_tc400_late_start']['timesteps']


def test_the_gaussian_opt_grid_is_computed_from_the_moments_and_swept(trained, tmp_path):
  import late_start
  import sampling
  import sde_lib
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.eval.methods, config.eval.t_starts, config.eval.grids = ('ddim',), (400,), ('gaussian_opt',)
  results = eval_lib.evaluate(config, _fresh_copy(workdir, tmp_path / 'run'))
  schedule = sde_lib.DDPMSchedule.from_config(config)
  for init, t_start in (('normal', 999), ('gls', 400)):  # the records hold the grid the closed-form search gives
    spec = sampling.RunSpec.from_config(config.sampling, method='ddim', num_steps=3, init=init, t_start=t_start,
                                        grid='gaussian_opt')
    record = results[spec.key]
    assert record['timesteps'] == list(late_start.resolve_grid(config, schedule, spec).timesteps)
    assert record['timesteps'][0] == t_start and record['signature']['moments_sha256']
  assert results['ddim_n3_normal_tc999_gaussian_opt']['timesteps'] != [999, 499, 0]


@pytest.mark.parametrize('damage', ['results_json', 'floor_json', 'truncated_npz', 'short_npz'])
def test_a_damaged_cache_is_set_aside_and_recomputed(trained, tmp_path, monkeypatch, caplog, damage):
  """A torn results.json / floor.json or a finished cell's damaged samples file is never trusted: it is renamed
  aside with a warning and its cells are recomputed; no traceback."""
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.eval.methods, config.eval.t_starts = ('ddim',), (400,)
  work = _fresh_copy(workdir, tmp_path / 'run')
  first = eval_lib.evaluate(config, work)
  out = os.path.join(work, 'eval')
  npz = os.path.join(out, first['ddim_n3_gls_tc400_late_start']['samples'])
  if damage in ('results_json', 'floor_json'):
    name = 'results.json' if damage == 'results_json' else 'floor.json'
    open(os.path.join(out, name), 'w').write('{"ddim_n3_normal_tc999_late_start": {"fi')
  elif damage == 'truncated_npz':
    data = open(npz, 'rb').read()
    open(npz, 'wb').write(data[:len(data) // 2])
  else:
    np.savez(npz, samples=np.zeros((3, 1, 8, 8), np.float32), timesteps=np.arange(3))
  calls = _counting(monkeypatch)
  monkeypatch.setattr(eval_lib, 'floor_record', lambda c, ctx, real=eval_lib.floor_record: calls.append('floor') or
                      real(c, ctx))
  with caplog.at_level('WARNING'):
    again = eval_lib.evaluate(config, work)
  expected = {'results_json': ['ddim_n3_normal_tc999_late_start', 'ddim_n3_gls_tc400_late_start'],
              'floor_json': ['floor'], 'truncated_npz': ['ddim_n3_gls_tc400_late_start'],
              'short_npz': ['ddim_n3_gls_tc400_late_start']}[damage]
  assert calls == expected
  assert 'set aside' in caplog.text and any('.damaged-' in f for f in os.listdir(os.path.dirname(npz) if 'npz' in
                                                                                damage else out))
  for key, record in first.items():  # recomputed from the same seeds: the same numbers
    assert again[key]['fid'] == pytest.approx(record['fid'], rel=1e-6)


def test_changed_cells_are_recomputed_not_reused(trained, monkeypatch):
  """A cell's identity includes the sample count, the seed, the checkpoint and the reference statistics."""
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.eval.methods, config.eval.t_starts = ('ddim',), ()
  eval_lib.evaluate(config, workdir)
  calls = []
  real_run_cell = eval_lib.run_cell
  monkeypatch.setattr(eval_lib, 'run_cell', lambda c, cell, ctx: calls.append(cell.key) or
                      real_run_cell(c, cell, ctx))
  config.eval.num_samples = 6
  assert eval_lib.evaluate(config, workdir)['ddim_n3_normal_tc999_late_start']['num_samples'] == 6
  config.seed = 7
  eval_lib.evaluate(config, workdir)
  assert calls == ['ddim_n3_normal_tc999_late_start'] * 2
  stats = wd.fid_stats_path(config)  # the reference statistics are rewritten (same data and weights)
  with np.load(stats) as f:
    fields = dict(f)
  fields['mu'] = fields['mu'] + 1e-3
  np.savez(stats, **fields)
  eval_lib.evaluate(config, workdir)
  assert calls == ['ddim_n3_normal_tc999_late_start'] * 3
  config.training.n_iters = 25  # train further: a new checkpoint step makes the cell stale
  run_lib.train(config, workdir)
  record = eval_lib.evaluate(config, workdir)['ddim_n3_normal_tc999_late_start']
  assert len(calls) == 4 and record['checkpoint_step'] == 25
  assert 'checkpoint step [25]' in open(os.path.join(workdir, 'eval', 'results.md')).read()


def test_missing_or_mismatched_stats_is_a_clear_error(trained, tmp_path):
  config, workdir, stats = trained
  config = tiny_digits_config(tmp_path, **{'data.num_train': 32})
  with pytest.raises(FileNotFoundError, match='fid_stats'):
    eval_lib.evaluate(config, workdir)
  os.makedirs(config.sampling.stats_dir, exist_ok=True)
  with np.load(stats) as f:
    fields = dict(f)
  fields['image_size'] = np.int64(32)
  np.savez(wd.fid_stats_path(config), **fields)
  with pytest.raises(evaluation.StatsMismatchError, match='image_size'):
    eval_lib.evaluate(config, workdir)
  config.data.num_train = 16  # the same file, but the config now describes other training data
  fields['image_size'] = np.int64(8)
  np.savez(wd.fid_stats_path(config), **fields)
  with pytest.raises(evaluation.StatsMismatchError, match='fingerprint'):
    eval_lib.evaluate(config, workdir)
