"""experiments.ssb end to end: potentials, late_start_curve, predicted_tc and diversity on a tiny digits model."""
import json
import os

import numpy as np
import pytest

import eval_lib
import io_util
import sampling
from conftest import TRAINED_OVERRIDES, copy_workdir, tiny_digits_config
from experiments import ssb


@pytest.fixture(scope='module')
def trained(tmp_path_factory, trained_workdir):
  tmp = tmp_path_factory.mktemp('ssb')
  mp = pytest.MonkeyPatch()
  mp.setenv('SSB_CACHE_DIR', str(tmp / 'cache'))
  config = tiny_digits_config(tmp, **TRAINED_OVERRIDES)
  workdir = copy_workdir(trained_workdir, tmp / 'run')
  yield config, workdir
  mp.undo()


def test_potentials_plot_and_csv(trained):
  config, workdir = trained
  config.analysis.potential_steps = 10
  config.analysis.potential_times = (900, 500, 100)
  rows = ssb.potentials(config, workdir)
  assert os.path.exists(os.path.join(workdir, 'analysis', 'potentials.png'))
  for t in (900, 500, 100):
    u = np.array([r[2] for r in rows if r[0] == t])
    assert len(u) == 61 and np.all(np.isfinite(u)) and u.min() == 0.0


def test_late_start_curve_resumes(trained, monkeypatch):
  config, workdir = trained
  config.data.num_train = 16
  eval_lib.fid_stats(config, workdir)
  config.analysis.late_start_ts = (60, 20)
  config.analysis.late_start_samples = 6
  config.eval.kid_subset_size = 6
  rows = ssb.late_start_curve(config, workdir)
  assert [(r['init'], r['t'], r['nfe']) for r in rows] == [('normal', 60, 61), ('normal', 20, 21), ('gls', 60, 61),
                                                           ('gls', 20, 21)]
  assert all(np.isfinite(r['fid']) for r in rows)
  assert os.path.exists(os.path.join(workdir, 'analysis', 'late_start_curve.png'))
  monkeypatch.setattr(sampling, 'generate', lambda *a, **k: pytest.fail('a finished point was recomputed'))
  assert ssb.late_start_curve(config, workdir) == rows


def test_predicted_tc_reports_sweep_best(trained):
  config, workdir = trained
  config.data.num_train = 0
  os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
  fake = {'ddim_n3_gls_tc400': dict(method='ddim', num_steps=3, init='gls', t_start=400, fid=5.0),
          'ddim_n3_gls_tc600': dict(method='ddim', num_steps=3, init='gls', t_start=600, fid=7.0)}
  io_util.save_json(fake, os.path.join(workdir, 'eval', 'results.json'))
  out = ssb.predicted_tc(config, workdir)
  assert 200 < out['predicted_tc'] < 700 and out['fid_optimal_tc'] == {'ddim_n3': 400}
  assert json.load(open(os.path.join(workdir, 'analysis', 'predicted_tc.json'))) == out
  os.remove(os.path.join(workdir, 'eval', 'results.json'))


def test_diversity_reports_intervals_and_a_test_per_sampler_and_n(trained, tmp_path):
  config, workdir = trained
  config.sampling.stats_dir = str(tmp_path / 'stats')  # the module's moments are of a 16-image subset: refused
  config.analysis.classifier_epochs = 3
  config.sampling.t_start = 400
  config.analysis.diversity_methods, config.analysis.diversity_steps = ('ddim', 'pndm'), (3,)
  config.analysis.diversity_num_samples = 40
  cells = ssb.diversity(config, workdir)
  assert sorted(cells) == ['ddim_n3_tc400', 'pndm_n3_tc400']
  for cell in cells.values():
    assert set(cell['arms']) == {'vanilla', 'gls (t_c=400)'} and 0 <= cell['test']['p_value'] <= 1
    for arm in cell['arms'].values():
      assert arm['n'] == 40 and abs(sum(arm['fractions']) - 1) < 1e-9
      assert all(lo <= f <= hi for lo, f, hi in zip(arm['ci_low'], arm['fractions'], arm['ci_high']))
      assert arm['kl_to_reference'] >= 0 and arm['entropy_ci'][0] <= arm['entropy_ci'][1]
  out = os.path.join(workdir, 'analysis')
  for name in ('diversity.json', 'diversity.md', 'diversity.csv', 'diversity_ddim_n3.png', 'diversity_pndm_n3.png'):
    assert os.path.exists(os.path.join(out, name)), name
  assert json.load(open(os.path.join(out, 'diversity.json')))['cells'].keys() == cells.keys()
