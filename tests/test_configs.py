"""Config files, validation messages and command-line override checks."""
import glob
import importlib
import os
import re
import subprocess
import sys

import pytest
import torch

import datasets
from configs.validation import ConfigError, check_override_fields, load_config_file, validate_config
from conftest import HANG_GUARD_S, ROOT
from models import utils as mutils

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', 'ddpm', '*.py'))
                 if not p.endswith('__init__.py'))


def test_config_list_is_complete():
  assert {'mnist', 'cifar10', 'celeba', 'celeba64', 'imagenet64', 'digits', 'mnist5k', 'molrg'} <= set(CONFIGS)


def _published_folder(config, folder):
  """A stand-in for the diffusers folder a *_diffusers config names: the published config.json and scheduler
  config (tests/fixtures/diffusers) and an empty weights file (validation reads only the configs)."""
  import json
  with open(os.path.join(ROOT, 'tests', 'fixtures', 'diffusers', 'configs.json')) as f:
    published = json.load(f)
  (folder / 'unet').mkdir(parents=True)
  (folder / 'scheduler').mkdir()
  unet = published['ddpm-cifar10-32' if config.data.image_size == 32 else 'ddpm-256']
  (folder / 'unet' / 'config.json').write_text(json.dumps(unet))
  (folder / 'unet' / 'diffusion_pytorch_model.safetensors').write_bytes(b'')
  (folder / 'scheduler' / 'scheduler_config.json').write_text(json.dumps(published['scheduler']))
  return str(folder)


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_validates_builds_and_matches_its_data(name, tmp_path):
  config = importlib.import_module(f'configs.ddpm.{name}').get_config()
  shipped = os.path.join(ROOT, config.model.pretrained) if config.model.pretrained.startswith('assets/') else ''
  if shipped:  # a model of this repository (assets/models): the config must describe it
    if not os.path.isdir(shipped):
      pytest.skip(f'{config.model.pretrained} is not in the repository yet (see its config file)')
    config.model.pretrained = shipped
  elif config.model.pretrained:  # the config must describe the published model it is written for
    config.model.pretrained = _published_folder(config, tmp_path / 'pretrained')
  validate_config(config)
  d = config.data
  with torch.device('meta'):  # shapes only: no memory, no compute
    model = mutils.create_model(config)
    out = model(torch.zeros(2, d.num_channels, d.image_size, d.image_size), torch.zeros(2))
  assert out.shape == (2, d.num_channels, d.image_size, d.image_size)
  # attention is placed only where the U-Net has that resolution; MNIST's 16 is never hit at 28/14/7,
  # as in the SSB paper's config (see configs/ddpm/mnist.py)
  resolutions = {d.image_size // 2 ** i for i in range(len(config.model.ch_mult))}
  attn = set(config.model.attn_resolutions)
  assert attn & resolutions == (set() if name == 'mnist' else attn)
  # the loader accepts the config's image_size / num_channels / eval_split (it checks them before reading
  # any file): an embedded data set yields images of that shape, a real one gets as far as looking for its
  # files (an empty root here)
  d.root = str(tmp_path / 'no_data')
  try:
    image, _ = datasets.get_dataset(config, 'eval')[0]
  except datasets.DatasetNotFoundError:
    assert name not in ('digits', 'mnist5k', 'molrg')
  else:
    assert image.shape == (d.num_channels, d.image_size, d.image_size)


@pytest.mark.parametrize('variant, count', [('ssb', 35_746_307), ('score_sde', 35_218_947)])
def test_cifar10_parameter_count(variant, count):
  """The published counts: SSB's U-Net (attention after every up-path ResBlock) and score_sde's DDPM."""
  from configs.ddpm import cifar10
  config = cifar10.get_config()
  config.model.variant = variant
  with torch.device('meta'):
    assert mutils.count_parameters(mutils.create_model(config)) == count


def test_paper_numbers():
  from configs.ddpm import cifar10, mnist, celeba64
  c = cifar10.get_config()
  assert (c.model.nf, tuple(c.model.ch_mult), c.model.num_res_blocks, tuple(c.model.attn_resolutions)) == \
      (128, (1, 2, 2, 2), 2, (16,))
  assert (c.optim.lr, c.optim.warmup, c.optim.grad_clip, c.model.ema_rate, c.training.batch_size) == \
      (2e-4, 5000, 1.0, 0.9999, 128)
  assert c.model.variant == 'ssb' and c.data.centered and c.data.random_flip
  m = mnist.get_config()
  assert m.data.random_flip  # as the paper's MNIST config (see the comment in configs/ddpm/mnist.py)
  assert (m.data.image_size, m.data.num_channels, tuple(m.model.ch_mult), m.training.n_iters) == (28, 1, (1, 2, 2),
                                                                                                  500_001)
  assert celeba64.get_config().data.image_size == 64 and celeba64.get_config().data.eval_split == 'validation'


@pytest.mark.parametrize('field,value,match', [
    ('data.dataset', 'SVHN', 'config.data.dataset'),
    ('model.name', 'ncsnpp', 'config.model.name'),
    ('model.variant', 'ho', 'config.model.variant'),
    ('training.batch_size', 0, 'config.training.batch_size'),
    ('data.image_size', 30, 'divisible'),
    ('sampling.method', 'euler', 'config.sampling.method'),
    ('sampling.init', 'uniform', 'config.sampling.init'),
    ('sampling.t_start', 1000, 'config.sampling.t_start'),
    ('sampling.t_start', 'soon', "config.sampling.t_start.*or 'auto'"),
    ('sampling.t_start', 'auto', 'needs sampling.init=gls'),
    ('sampling.auto_tc_stride', 0, 'config.sampling.auto_tc_stride'),
    ('sampling.auto_tc_samples', 0, 'config.sampling.auto_tc_samples'),
    ('eval.t_starts', (400, 'later'), "config.eval.t_starts.*or 'auto'"),
    ('sampling.num_steps', 0, 'config.sampling.num_steps'),
    ('model.num_groups', 0, 'config.model.num_groups'),
    ('model.num_groups', 96, 'multiple of model.num_groups = 96'),
    ('analysis.mem_n_iters_per_size', (100, 200), 'one entry per analysis.mem_sizes'),
    ('analysis.mem_n_iters_per_size', (100, 0, 100, 100), 'training steps must be >= 1'),
])
def test_bad_values_name_the_field(field, value, match):
  from configs.ddpm import cifar10
  config = cifar10.get_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=match):
    validate_config(config)


def test_auto_t_start_needs_the_late_start_grid():
  from configs.ddpm import cifar10
  config = cifar10.get_config()
  config.sampling.init, config.sampling.t_start, config.sampling.grid = 'gls', 'auto', 'uniform'
  with pytest.raises(ConfigError, match='needs sampling.grid=late_start'):
    validate_config(config)
  config.sampling.grid = 'late_start'
  validate_config(config)
  config.eval.t_starts, config.eval.grids = ('auto', 400), ('quad',)
  with pytest.raises(ConfigError, match="'auto' needs eval.grids=\\('late_start',\\)"):
    validate_config(config)
  config.eval.grids, config.sampling.gls_rank = ('late_start',), 16
  with pytest.raises(ConfigError, match="'auto' needs the full-covariance late start"):
    validate_config(config)


def test_too_many_steps_for_t_start():
  from configs.ddpm import cifar10
  config = cifar10.get_config()
  config.sampling.t_start, config.sampling.num_steps = 4, 6
  with pytest.raises(ConfigError, match='t_start \\+ 1'):
    validate_config(config)


def test_unknown_override_field_lists_known_fields():
  from configs.ddpm import digits
  with pytest.raises(ConfigError, match="config.training has no field 'batchsize'.*batch_size"):
    check_override_fields(digits.get_config(), ['--config.training.batchsize=3'])
  with pytest.raises(ConfigError, match="config has no field 'trainig'"):
    check_override_fields(digits.get_config(), ['--config.trainig.batch_size=3'])
  check_override_fields(digits.get_config(), ['--config.training.batch_size=3', '--workdir=x'])


def test_load_config_file_refuses_files_that_are_not_config_files(tmp_path):
  """What --config loads: any file name; ConfigError, one line naming the file, for a file that is not one."""
  assert load_config_file('configs/ddpm/digits.py').data.dataset == 'DIGITS'
  for name, text, match in (('a.py', 'x = 1\n', 'defines no get_config'),
                            ('b.yaml', 'data: {a: 1\n', 'is not Python'),
                            ('c.bin', '\x00\x01binary', 'is not Python'),
                            ('d.py', 'def get_config():\n  return 3\n', 'returned int, not a ConfigDict')):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
      load_config_file(str(path))
    assert str(path) in str(err.value) and '\n' not in str(err.value)


def _main(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=HANG_GUARD_S)


def test_cli_rejects_unknown_field_and_bad_value(tmp_path):
  out = _main('--config=configs/ddpm/digits.py', f'--workdir={tmp_path}', '--config.sampling.methd=ddim')
  assert out.returncode != 0 and 'unknown config field config.sampling.methd' in out.stderr
  out = _main('--config=configs/ddpm/digits.py', f'--workdir={tmp_path}', '--mode=train',
              '--config.training.batch_size=0')
  assert out.returncode != 0 and 'config.training.batch_size=0 is invalid' in out.stderr


def _mode_table():
  """Mode names from main.py's table: main.MODES (mode -> (help, function)) or, before it, main.MODE_HELP."""
  code = "import main; print(' '.join(getattr(main, 'MODES', None) or main.MODE_HELP))"
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=HANG_GUARD_S)
  assert out.returncode == 0, out.stderr
  return out.stdout.split()


def test_help_lists_every_mode():
  modes = _mode_table()
  assert {'train', 'sample', 'gauss_stats', 'fid_stats', 'eval', 'all'} <= set(modes)
  out = _main('--help')
  text = out.stdout + out.stderr
  unwrapped = re.sub(r'\n\s+', '', text)  # absl wraps the long <a|b|...> list across lines
  enum = re.search(r'--mode: <([^>]*)>', unwrapped)
  assert enum, text
  assert enum.group(1).split('|') == modes  # --mode accepts exactly the table's modes
  for mode in modes:  # and every mode has its own help line
    assert re.search(rf'^\s+{mode}: \S', text, re.M), f'--help has no line for mode {mode}'


def _registries():
  """(config field, every choice its owning module registers): validation has no list of its own."""
  import fid_backend
  from models import ddpm, layers
  from samplers import SAMPLERS, grids, initialisers
  from samplers.pndm import VARIANTS as PNDM_VARIANTS
  return [('sampling.method', tuple(SAMPLERS)), ('sampling.grid', tuple(grids.GRIDS)),
          ('sampling.pndm_variant', PNDM_VARIANTS), ('sampling.init', initialisers.INITS),
          ('sampling.gls_fit', initialisers.GLS_FITS), ('sampling.gls_dtype', tuple(initialisers.GLS_DTYPES)),
          ('eval.fid_backend', fid_backend.BACKENDS), ('model.variant', ddpm.VARIANTS),
          ('model.nonlinearity', tuple(layers.ACTIVATIONS))]


@pytest.mark.parametrize('field,choices', _registries(), ids=lambda v: v if isinstance(v, str) else '')
def test_validation_accepts_every_registered_choice_and_nothing_else(field, choices):
  from configs import validation
  from configs.ddpm import digits
  section, name = field.split('.')
  for value in choices:
    config = digits.get_config()
    config[section][name] = value
    validation.validate_config(config)
  config = digits.get_config()
  config[section][name] = 'no-such-choice'
  with pytest.raises(validation.ConfigError, match=rf'config\.{field}=.*no-such-choice'):
    validation.validate_config(config)


@pytest.mark.parametrize('overrides,words', [
    (['--config.eval.t_starts=(200,200)'], ['eval.t_starts', 'more than once']),
    (['--config.eval.t_starts=(200,)', '--config.eval.t_starts=(200,400)'], ['eval.t_starts', 'more than once',
                                                                            'joined']),
    (["--config.eval.methods=('ddim','ddim')"], ['eval.methods', "'ddim'", 'more than once']),
    (['--config.eval.num_steps=(3,5,3)'], ['eval.num_steps', 'more than once']),
    (['--config.eval.t_starts=(0,)', '--config.eval.num_steps=(2,)'], ['t_c=0', 'n=2', 'n <= t_c + 1']),
])
def test_sweep_requests_that_repeat_or_drop_cells_are_one_line(tmp_path, overrides, words):
  """A cell asked for twice would run twice; a t_c below n - 1 would silently give no cell: both are refused."""
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={tmp_path / "w"}', '--mode=eval',
         *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr[-2000:]
  assert all(w in lines[0] for w in words), lines[0]
  assert not (tmp_path / 'w' / 'eval').exists()


def test_eval_cells_restricts_the_product_and_names_a_bad_entry():
  import eval_lib
  from configs.ddpm import digits
  config = digits.get_config()
  config.eval.methods, config.eval.num_steps, config.eval.t_starts = ('ddim', 'pndm'), (3, 5), (400,)
  config.eval.cells = ('ddim:5', 'pndm:3')
  validate_config(config)
  assert [c.key for c in eval_lib.sweep_cells(config)] == [
      'ddim_n5_normal_tc999_late_start', 'ddim_n5_gls_tc400_late_start', 'pndm_n3_normal_tc999_late_start',
      'pndm_n3_gls_tc400_late_start']
  for bad in (('ddim:10',), ('unipc:3',), ('ddim3',)):
    config.eval.cells = bad
    with pytest.raises(ConfigError, match='eval.cells'):
      validate_config(config)
