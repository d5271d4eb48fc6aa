"""Common pytest set-up: repo root on sys.path, the `gpu` marker, the golden-fixture folder."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
FIXTURE_FOLDERS = ('fid_inception', 'score_sde_ddpm', 'ssb_ddpm')


def pytest_configure(config):
  config.addinivalue_line('markers', 'gpu: needs CUDA; skipped when it is absent')
  config.addinivalue_line('markers', 'slow: end-to-end runs of a few tens of seconds')


def pytest_collection_modifyitems(config, items):
  if torch.cuda.is_available():
    return
  skip = pytest.mark.skip(reason='CUDA is not available')
  for item in items:
    if 'gpu' in item.keywords:
      item.add_marker(skip)


@pytest.fixture(scope='session')
def fixtures_dir():
  """tests/fixtures: the golden reference data (see each sub-folder's README). Part of the repository, so a
  missing folder is an error, never a skip."""
  missing = [name for name in FIXTURE_FOLDERS if not os.path.isdir(os.path.join(FIXTURES, name))]
  if missing:
    raise FileNotFoundError(f'golden fixtures {missing} missing under {FIXTURES}; they ship with the repository')
  return FIXTURES


def tiny_digits_config(tmp_dir, **overrides):
  """The digits config shrunk to a few seconds of CPU work; stats/moments go under ``tmp_dir``."""
  from configs.ddpm import digits
  config = digits.get_config()
  config.model.nf = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.training.batch_size = 32
  config.training.n_iters = 20
  config.training.log_freq = 5
  config.training.eval_freq = 10
  config.training.snapshot_freq = 10
  config.training.snapshot_freq_for_preemption = 5
  config.training.snapshot_num_samples = 8
  config.training.snapshot_num_steps = 5
  config.sampling.stats_dir = os.path.join(str(tmp_dir), 'stats')
  config.sampling.num_samples = 8
  config.sampling.batch_size = 8
  config.eval.num_samples = 8
  config.eval.batch_size = 8
  for path, value in overrides.items():
    section, name = path.split('.')
    config[section][name] = value
  return config


@pytest.fixture
def tiny_config(tmp_path):
  return tiny_digits_config(tmp_path)
