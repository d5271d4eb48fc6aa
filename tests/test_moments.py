import numpy as np
import pytest

from moments import RunningMoments


def test_streaming_moments_equal_numpy():
  x = np.random.default_rng(0).normal(size=(257, 9)) @ np.random.default_rng(1).normal(size=(9, 9))
  m = RunningMoments(9)
  for chunk in np.array_split(x, 7):
    m.update(chunk)
  assert m.n == 257
  np.testing.assert_allclose(m.mean(), x.mean(0), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(m.cov(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)


def test_errors():
  m = RunningMoments(3)
  with pytest.raises(ValueError, match='no rows'):
    m.mean()
  m.update(np.ones((1, 3)))
  with pytest.raises(ValueError, match='at least 2 samples'):
    m.cov()
  with pytest.raises(ValueError, match='dimension 3'):
    m.update(np.ones((2, 4)))
