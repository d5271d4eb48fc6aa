import numpy as np
import pytest
import torch

from moments import RunningMoments


def test_streaming_moments_equal_numpy():
  x = np.random.default_rng(0).normal(size=(257, 9)) @ np.random.default_rng(1).normal(size=(9, 9))
  m = RunningMoments(9)
  for chunk in np.array_split(x, 7):
    m.update(chunk)
  assert m.n == 257
  np.testing.assert_allclose(m.mean(), x.mean(0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(m.cov(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_image_batches_are_flattened_and_accumulated_in_float64():
  x = torch.rand(30, 1, 2, 3, generator=torch.Generator().manual_seed(0)) + 100.0  # float32, far-off mean
  m = RunningMoments(6)
  m.update(x[:13])
  m.update(x[13:])
  rows = x.reshape(30, 6).double().numpy()
  np.testing.assert_allclose(m.mean(), rows.mean(0), rtol=1e-12)
  np.testing.assert_allclose(m.cov(), np.cov(rows, rowvar=False), atol=1e-9)


def test_errors():
  m = RunningMoments(3)
  with pytest.raises(ValueError, match='no rows'):
    m.mean()
  m.update(np.ones((1, 3)))
  with pytest.raises(ValueError, match='at least 2 samples'):
    m.cov()
  with pytest.raises(ValueError, match='dimension 3'):
    m.update(np.ones((2, 4)))
