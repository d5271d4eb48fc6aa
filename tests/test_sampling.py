"""The sampling plan (every grid x init pair), drawing samples, loading weights and --mode=sample."""
import glob
import os

import numpy as np
import pytest
import torch

import main
import sampling
import late_start
import sample_lib
import sde_lib
from errors import InputError
from models import utils as mutils
from samplers import grids
from test_workdir import unwritable_folder  # noqa: F401 (a fixture)

SCHEDULE = sde_lib.DDPMSchedule()


def plan_of(config, moments=None, **changes):
  """sampling_plan of config.sampling with ``changes`` (RunSpec fields), as the edge builds it."""
  spec = sampling.RunSpec.from_config(config.sampling, **changes)
  return sampling.sampling_plan(spec, SCHEDULE, late_start.initialiser_factory(config, SCHEDULE, moments))


def test_a_run_spec_is_read_once_and_frozen(tiny_config):
  tiny_config.sampling.method, tiny_config.sampling.eta, tiny_config.sampling.pndm_variant = 'ddim', 0.5, 'plms'
  spec = sampling.RunSpec.from_config(tiny_config.sampling, num_steps=4, t_start=300, init='gls')
  assert (spec.method, spec.num_steps, spec.t_start, spec.init, spec.kwargs) == ('ddim', 4, 300, 'gls', {'eta': 0.5})
  assert spec.key == 'ddim_n4_gls_tc300_late_start'
  with pytest.raises(Exception, match='cannot assign'):
    spec.num_steps = 5
  tiny_config.sampling.eta = 0.0  # a later change of the config does not reach a spec already built
  assert spec.kwargs == {'eta': 0.5}
  other = sampling.RunSpec.from_config(tiny_config.sampling, method='pndm')  # options follow the final method
  assert other.kwargs == {'variant': 'plms'}
  explicit = sampling.RunSpec('ddim', 99, 999, timesteps=[600, 300, 0])  # a given grid sets n and t_start
  assert (explicit.num_steps, explicit.t_start) == (3, 600)
  with pytest.raises(InputError, match='sampling.init'):
    sampling.RunSpec('ddim', 3, 999, init='uniform')
  with pytest.raises(InputError, match="t_start='auto' must be chosen"):
    sampling.check_plan(spec.replace(t_start='auto'), SCHEDULE)


@pytest.fixture
def gaussian_moments(tiny_config):
  d = 64
  a = torch.randn(d, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 8
  return {'mean': np.zeros(d), 'cov': (a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)).numpy(), 'count': 100}


@pytest.mark.parametrize('grid', grids.GRID_KINDS)
@pytest.mark.parametrize('init', ['normal', 'gls'])
@pytest.mark.parametrize('num_steps,t_start', [(3, 200), (5, 999), (10, 400), (4, 3)])
def test_every_grid_and_init_starts_at_the_grids_first_time_or_is_refused(tiny_config, gaussian_moments, grid, init,
                                                                           num_steps, t_start):
  tiny_config.sampling.grid = grid
  try:
    expected = grids.make_grid(grid, num_steps, t_start, 1000)
  except ValueError as err:  # an impossible grid (duplicate times) is an input error before any work
    with pytest.raises(InputError, match=str(err)[:30].replace('(', '.').replace(')', '.')):
      plan_of(tiny_config, gaussian_moments, method='ddim', num_steps=num_steps, init=init, t_start=t_start)
    return
  if init == 'gls' and expected[0] != t_start:
    with pytest.raises(InputError, match=f'sampling.grid={grid}.*starts at t={expected[0]}.*t_start={t_start}'):
      plan_of(tiny_config, gaussian_moments, method='ddim', num_steps=num_steps, init=init, t_start=t_start)
    return
  plan = plan_of(tiny_config, gaussian_moments, method='ddim', num_steps=num_steps, init=init, t_start=t_start)
  assert plan.timesteps == expected and plan.initialiser.t_start == plan.timesteps[0] == plan.t_start
  if init == 'gls':  # the state is drawn with the noised moments of the grid's first time
    a = float(SCHEDULE.alpha_bar(plan.t_start))
    want = a * torch.as_tensor(gaussian_moments['cov']) + (1 - a) * torch.eye(64, dtype=torch.float64)
    torch.testing.assert_close(plan.initialiser.covariance(), want, rtol=1e-9, atol=1e-9)


def test_the_reported_bug_is_refused_with_a_message_naming_the_grid(tiny_config):
  tiny_config.sampling.method, tiny_config.sampling.num_steps = 'ddim', 3
  tiny_config.sampling.init, tiny_config.sampling.t_start, tiny_config.sampling.grid = 'gls', 200, 'uniform'
  with pytest.raises(InputError, match=r'sampling.grid=uniform with n=3 starts at t=134, not at sampling.t_start=200'):
    plan_of(tiny_config)


@pytest.mark.parametrize('method,variant,n,nfe', [('ddim', None, 5, 5), ('ddpm', None, 4, 4), ('pndm', 'f-pndm', 5, 14),
                                                  ('pndm', 'plms', 5, 6), ('pndm', 's-pndm', 5, 6)])
def test_plan_nfe_equals_the_network_calls_of_a_run(tiny_config, method, variant, n, nfe):
  if variant:
    tiny_config.sampling.pndm_variant = variant
  plan = plan_of(tiny_config, method=method, num_steps=n, init='normal', t_start=999)
  calls = []

  def eps_fn(x, t):
    calls.append(t)
    return 0.1 * x

  sampling.generate(eps_fn, SCHEDULE, plan, 3, 3, 0, 'cpu', lambda x: (x + 1) / 2, progress=False)
  assert plan.nfe == nfe == len(calls)


def test_options_given_to_the_plan_replace_the_configs_and_set_its_nfe(tiny_config):
  tiny_config.sampling.pndm_variant = 'plms'  # n + 1 calls; the caller asks for F-PNDM (n + 9) instead
  plan = plan_of(tiny_config, method='pndm', num_steps=5, init='normal', t_start=999,
                 options={'variant': 'f-pndm'})
  calls = []
  sampling.generate(lambda x, t: calls.append(t) or 0.1 * x, SCHEDULE, plan, 2, 2, 0, 'cpu', lambda x: x,
                    progress=False)
  assert plan.options == {'variant': 'f-pndm'} and plan.nfe == len(calls) == 14


def test_samples_do_not_depend_on_the_batch_size(tiny_config):
  plan = plan_of(tiny_config, method='ddpm', num_steps=5, init='normal', t_start=999)
  eps_fn = lambda x, t: 0.05 * x
  a = sampling.generate(eps_fn, SCHEDULE, plan, 7, 7, 3, 'cpu', lambda x: (x + 1) / 2, progress=False)
  b = sampling.generate(eps_fn, SCHEDULE, plan, 7, 2, 3, 'cpu', lambda x: (x + 1) / 2, progress=False)
  np.testing.assert_array_equal(a, b)


def test_bad_grids_are_input_errors_before_any_work(tiny_config):
  with pytest.raises(InputError, match='num_steps = 20 exceeds t_start \\+ 1 = 11'):
    plan_of(tiny_config, method='ddim', num_steps=20, init='normal', t_start=10)
  with pytest.raises(InputError, match='unknown sampling.method'):
    plan_of(tiny_config, method='euler', num_steps=5, init='normal', t_start=999)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, trained_workdir):
  from conftest import TRAINED_OVERRIDES, copy_workdir, tiny_digits_config
  tmp = tmp_path_factory.mktemp('trained')
  return tiny_digits_config(tmp, **TRAINED_OVERRIDES), copy_workdir(trained_workdir, tmp / 'run')


def test_sample_mode_writes_npz_and_grid(trained, tmp_path):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.sampling.method, config.sampling.num_steps = 'ddim', 3
  config.sampling.init, config.sampling.t_start = 'gls', 500
  config.sampling.stats_dir = str(tmp_path / 'stats')
  path = sample_lib.sample(config, workdir, sample_out=str(tmp_path / 'a' / 'x.npz'))
  x = np.load(path)['samples']
  assert x.shape == (8, 1, 8, 8) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
  assert int(np.load(path)['step']) == 20 and tuple(np.load(path)['timesteps']) == (500, 250, 0)
  assert os.path.exists(path[:-4] + '.png')
  assert glob.glob(os.path.join(config.sampling.stats_dir, 'digits_8_moments.npz'))  # cached on first use
  out = sample_lib.sample(config, workdir, sample_out=str(tmp_path / 'mine.npz'))
  np.testing.assert_array_equal(np.load(out)['samples'], x)  # seeded per sample: reproducible
  assert sample_lib.sample(config, workdir).endswith('ddim_n3_late_start_gls_tc500_exact_step20_N8_seed42.npz')


def test_sample_names_differ_for_every_setting_that_changes_the_samples(tiny_config):
  """The default file name holds the checkpoint's step, eta, the PNDM variant and the late-start fit, so two runs
  that differ in any of them never overwrite each other's file."""
  import workdir as wd

  def name(c, step=20):  # as --mode=sample names its file: with the plan's sampler options
    return wd.sample_path(c, 'w', step, sampling.RunSpec.from_config(c.sampling).kwargs)
  base = name(tiny_config)
  changes = [('sampling.method', 'pndm'), ('sampling.eta', 0.5), ('sampling.init', 'gls'), ('eval.precision', 'bf16')]
  names = {base, name(tiny_config, 10)}
  for field, value in changes:
    c = tiny_config.copy_and_resolve_references()
    section, key = field.split('.')
    c[section][key] = value
    names.add(name(c))
  gls = tiny_config.copy_and_resolve_references()
  gls.sampling.init = 'gls'
  for field, value in (('gls_fit', 'monte_carlo'), ('gls_rank', 8), ('gls_dtype', 'float32')):
    c = gls.copy_and_resolve_references()
    c.sampling[field] = value
    names.add(name(c))
  pndm = tiny_config.copy_and_resolve_references()
  pndm.sampling.method = 'pndm'
  pndm.sampling.pndm_variant = 'plms'
  names.add(name(pndm))
  assert len(names) == 10


def test_sample_refuses_random_weights(trained, tmp_path):
  """A checkpoint of the other U-Net variant: the error (with the variant hint) stops the run; no samples."""
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.model.variant = 'score_sde'
  out = tmp_path / 'x.npz'
  with pytest.raises(mutils.CheckpointError, match='model.variant=ssb'):
    sample_lib.sample(config, workdir, sample_out=str(out))
  assert not out.exists()


def test_sample_bad_inputs_fail_before_sampling(tiny_config, tmp_path):
  from configs.validation import ConfigError
  tiny_config.sampling.num_steps = 0
  with pytest.raises(ConfigError, match='config.sampling.num_steps'):
    main.run_mode('sample', tiny_config, str(tmp_path))
  tiny_config.sampling.num_steps = 5
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    sample_lib.sample(tiny_config, str(tmp_path / 'empty'))
  tiny_config.sampling.init = 'gls'
  tiny_config.sampling.moments_file = str(tmp_path / 'nope.npz')
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    sample_lib.sample(tiny_config, str(tmp_path / 'empty'))


def test_sample_checks_its_output_folder_before_work(trained, tmp_path, monkeypatch):
  config, workdir = trained
  target = tmp_path / 'file'
  target.write_text('not a folder')
  monkeypatch.setattr(sampling, 'generate', lambda *a, **k: pytest.fail('sampled before checking the output'))
  with pytest.raises(InputError, match='is a file'):
    sample_lib.sample(config, workdir, sample_out=str(target / 'x.npz'))


def test_moments_of_another_data_subset_are_refused(tiny_config):
  """Moments written with data.num_train=16 do not silently serve a run on the full training split."""
  from samplers.initialisers import MomentsError
  tiny_config.data.num_train = 16
  late_start.write_moments(tiny_config)
  assert late_start.late_start_moments(tiny_config)['count'] == 16
  tiny_config.data.num_train = 0
  with pytest.raises(MomentsError, match='other data'):
    late_start.late_start_moments(tiny_config)


def test_moments_pass_checks_the_stats_dir_first(tiny_config, unwritable_folder):
  """A gls run whose moments must be computed into a read-only folder fails before the pass, naming the field."""
  tiny_config.sampling.stats_dir = str(unwritable_folder)
  with pytest.raises(InputError, match='sampling.stats_dir'):
    late_start.late_start_moments(tiny_config)


# ------------------------------------------------------------------------------------------ output files
def _cli(tmp_path, *extra, mode='sample'):
  """main.py on the shipped digits model (no training needed); returns the finished process."""
  import subprocess
  import sys
  from conftest import HANG_GUARD_S, ROOT
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={tmp_path / "w"}', f'--mode={mode}',
         f'--config.model.pretrained={os.path.join(ROOT, "assets", "models", "digits")}',
         '--config.sampling.num_samples=4', '--config.sampling.method=ddim', '--config.sampling.num_steps=3', *extra]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))


def _one_error_line(proc, *words):
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert proc.returncode != 0 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize('name', ['notes.py', 'samples', 'grid.png'])
def test_sample_out_must_end_in_npz_and_nothing_is_touched(tmp_path, name):
  target = tmp_path / name
  target.write_text('print("mine")\n')
  _one_error_line(_cli(tmp_path, f'--sample_out={target}'), '--sample_out', 'must end in .npz')
  assert target.read_text() == 'print("mine")\n' and {p.name for p in tmp_path.iterdir()} <= {name, 'w'}


def test_sample_out_refuses_to_replace_a_foreign_file_and_replaces_a_sample_file(tmp_path):
  foreign = tmp_path / 'data.npz'
  np.savez(foreign, weights=np.arange(3))
  before = foreign.read_bytes()
  _one_error_line(_cli(tmp_path, f'--sample_out={foreign}'), 'not a sample file', 'refusing')
  assert foreign.read_bytes() == before
  ours = tmp_path / 'ours.npz'
  assert _cli(tmp_path, f'--sample_out={ours}').returncode == 0
  proc = _cli(tmp_path, f'--sample_out={ours}', '--config.sampling.num_steps=5')
  assert proc.returncode == 0 and 'will be replaced' in proc.stderr
  assert tuple(np.load(ours)['timesteps']) == (999, 749, 499, 249, 0)


def test_export_of_another_step_is_refused_unless_asked(trained):
  """WORKDIR/diffusers holding the export of step k is not replaced by another step's without
  sampling.export_replace; the same step is rewritten."""
  import json
  from models import diffusers_io
  config, workdir = trained
  config = config.copy_and_resolve_references()
  folder = sample_lib.export_diffusers(config, workdir)
  assert diffusers_io.exported_step(folder) == 20
  sample_lib.export_diffusers(config, workdir)  # the same step again: fine
  info_path = os.path.join(folder, diffusers_io.EXPORT_INFO)
  info = json.load(open(info_path))
  json.dump(dict(info, checkpoint_step=10), open(info_path, 'w'))  # as if step 10 had been exported
  weights = open(diffusers_io.weights_file(folder), 'rb').read()
  with pytest.raises(InputError, match='holds the export of step 10, not of step 20.*export_replace=True'):
    sample_lib.export_diffusers(config, workdir)
  assert open(diffusers_io.weights_file(folder), 'rb').read() == weights
  config.sampling.export_replace = True
  sample_lib.export_diffusers(config, workdir)
  assert diffusers_io.exported_step(folder) == 20
