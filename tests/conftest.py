"""Shared pytest set-up: repo root on sys.path, the `gpu` marker, fixture paths."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_FIXTURES = os.path.join(os.path.dirname(ROOT), 'shared', 'fixtures')


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


@pytest.fixture
def fixtures_dir():
  if not os.path.isdir(SHARED_FIXTURES):
    pytest.skip(f'shared fixtures not found at {SHARED_FIXTURES}')
  return SHARED_FIXTURES
