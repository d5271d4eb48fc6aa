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


def test_per_rank_sums_add_up_to_one_pass_and_reduce_is_a_no_op_in_one_process():
  """reduce() all-reduces n, sum x and sum x x^T: the sums of rank-strided shares equal one pass's sums."""
  x = np.random.default_rng(2).normal(size=(37, 5)) + 3.0
  one, parts = RunningMoments(5), [RunningMoments(5), RunningMoments(5)]
  for i in range(0, 37, 8):  # batches of 8, batch i to rank i mod 2 (datasets.model_batches(shard=True))
    one.update(x[i:i + 8])
    parts[(i // 8) % 2].update(x[i:i + 8])
  assert one.reduce() is one and one.n == 37  # one process: unchanged
  total = RunningMoments(5)
  total.n, total.sum, total.outer = sum(p.n for p in parts), sum(p.sum for p in parts), sum(p.outer for p in parts)
  np.testing.assert_allclose(total.mean(), one.mean(), rtol=1e-14)
  np.testing.assert_allclose(total.cov(), one.cov(), rtol=1e-12, atol=1e-14)
