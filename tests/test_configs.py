"""Config files, validation messages and command-line override checks."""
import importlib
import subprocess
import sys

import pytest

from configs.validation import ConfigError, check_override_fields, validate_config
from conftest import ROOT

CONFIGS = ['mnist', 'cifar10', 'celeba', 'celeba64', 'imagenet64', 'digits', 'mnist5k', 'molrg']


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_validates(name):
  config = importlib.import_module(f'configs.ddpm.{name}').get_config()
  validate_config(config)


def test_paper_numbers():
  from configs.ddpm import cifar10, mnist, celeba64
  c = cifar10.get_config()
  assert (c.model.nf, tuple(c.model.ch_mult), c.model.num_res_blocks, tuple(c.model.attn_resolutions)) == \
      (128, (1, 2, 2, 2), 2, (16,))
  assert (c.optim.lr, c.optim.warmup, c.optim.grad_clip, c.model.ema_rate, c.training.batch_size) == \
      (2e-4, 5000, 1.0, 0.9999, 128)
  assert c.model.variant == 'ssb' and c.data.centered and c.data.random_flip
  m = mnist.get_config()
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
    ('sampling.num_steps', 0, 'config.sampling.num_steps'),
])
def test_bad_values_name_the_field(field, value, match):
  from configs.ddpm import cifar10
  config = cifar10.get_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ConfigError, match=match):
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


def _main(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_rejects_unknown_field_and_bad_value(tmp_path):
  out = _main('--config=configs/ddpm/digits.py', f'--workdir={tmp_path}', '--config.sampling.methd=ddim')
  assert out.returncode != 0 and 'unknown config field config.sampling.methd' in out.stderr
  out = _main('--config=configs/ddpm/digits.py', f'--workdir={tmp_path}', '--mode=train',
              '--config.training.batch_size=0')
  assert out.returncode != 0 and 'config.training.batch_size=0 is invalid' in out.stderr


def test_help_lists_every_mode():
  out = _main('--help')  # absl exits with status 1 after printing help
  for mode in ('train', 'sample', 'fid_stats', 'eval', 'gauss_stats'):
    assert mode in out.stdout
