"""samplers/low_rank_fit.py: the rank-r plus diagonal late-start fit from the data matrix, never the covariance."""
import numpy as np
import pytest
import torch

import sde_lib
from samplers import initialisers, low_rank_fit

SCHEDULE = sde_lib.DDPMSchedule()


def _data(n, shape, rank, seed=0):
  """n images of ``shape`` (float64): a rank-``rank`` signal with a clear spectrum, plus pixel noise and a mean."""
  g = torch.Generator().manual_seed(seed)
  dim = int(np.prod(shape))
  basis = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64))[0]
  scales = torch.linspace(20, 4, rank, dtype=torch.float64)
  x = (torch.randn(n, rank, generator=g, dtype=torch.float64) * scales) @ basis.T
  return (x + 0.3 * torch.randn(n, dim, generator=g, dtype=torch.float64) + 0.5).reshape(n, *shape)


def test_agrees_with_the_full_rank_r_fit():
  shape, r = (3, 16, 16), 8
  x = _data(600, shape, r)
  fit = low_rank_fit.streaming_low_rank(lambda: (x[i:i + 64] for i in range(0, len(x), 64)), x[0].numel(), r)
  rows = x.reshape(len(x), -1).numpy()
  cov = np.cov(rows.T)
  np.testing.assert_allclose(fit['mean'], rows.mean(0), atol=1e-12)
  np.testing.assert_allclose(fit['var'], np.diag(cov), rtol=1e-10)
  ours = initialisers.late_start_from_fit(SCHEDULE, 400, fit, shape)
  full = initialisers.GaussianLateStart.from_moments(SCHEDULE, 400, rows.mean(0), cov, shape, rank=r, solver='eigh')
  torch.testing.assert_close(ours.eigvals, full.eigvals, rtol=1e-7, atol=0)
  torch.testing.assert_close(ours.eigvecs, full.eigvecs, rtol=0, atol=1e-4)  # same signs as the full fit
  torch.testing.assert_close(ours.covariance(), full.covariance(), rtol=0, atol=1e-6 * float(full.eigvals.max()))
  gens = [torch.Generator().manual_seed(i) for i in range(4)]
  same = [torch.Generator().manual_seed(i) for i in range(4)]
  torch.testing.assert_close(ours.sample(4, gens), full.sample(4, same), rtol=0, atol=1e-3)


def test_runs_at_256x256_without_the_covariance():
  """D = 196,608: the covariance would be 288 GiB in float64; the fit holds O(D k) numbers."""
  shape, r = (3, 256, 256), 4
  x = _data(24, shape, r).float()
  fit = low_rank_fit.streaming_low_rank(lambda: (x[i:i + 8] for i in range(0, len(x), 8)), x[0].numel(), r,
                                        power_iters=1)
  assert fit['eigvecs'].shape == (x[0].numel(), r) and fit['count'] == 24
  assert np.all(np.diff(fit['eigvals']) <= 0) and fit['eigvals'][-1] > 0
  start = initialisers.late_start_from_fit(SCHEDULE, 600, fit, shape)
  assert start.sample(2, [torch.Generator().manual_seed(i) for i in range(2)]).shape == (2, *shape)


def test_a_low_rank_moments_file_round_trips(tmp_path):
  shape = (1, 8, 8)
  x = _data(50, shape, 3)
  fit = low_rank_fit.streaming_low_rank(lambda: iter([x]), 64, 3)
  path = str(tmp_path / 'm_r3.npz')
  initialisers.save_moments(path, fit, 'MNIST', 8, 1, 'fp')
  back = initialisers.load_moments(path, 'mnist', 8, 1, fingerprint='fp')
  assert 'cov' not in back and all(np.array_equal(back[k], fit[k]) for k in ('mean', 'var', 'eigvals', 'eigvecs'))


def test_full_covariance_too_large_is_refused_naming_gls_rank():
  from configs import validation
  from configs.ddpm import church256_diffusers
  config = church256_diffusers.get_config()
  config.model.pretrained, config.sampling.gls_rank = '', 0
  with pytest.raises(validation.ConfigError, match=r'sampling\.gls_rank=0 .*288 GiB'):
    validation.validate_config(config)
  config.sampling.gls_rank = 16
  validation.validate_config(config)


@pytest.mark.slow
def test_agrees_with_the_subspace_rank_r_fit_at_64x64():
  """D = 12,288, where today's rank-r fit (from the full covariance, subspace iteration) still runs."""
  from moments import RunningMoments
  shape, r = (3, 64, 64), 16
  x = _data(300, shape, r, seed=1)
  fit = low_rank_fit.streaming_low_rank(lambda: (x[i:i + 100] for i in range(0, len(x), 100)), x[0].numel(), r)
  acc = RunningMoments(x[0].numel())
  acc.update(x)
  full = initialisers.GaussianLateStart.from_moments(SCHEDULE, 500, acc.mean(), acc.cov(), shape, rank=r,
                                                     solver='subspace')
  ours = initialisers.late_start_from_fit(SCHEDULE, 500, fit, shape)
  # The range finder converges as (lambda_{k+1} / lambda_r)^(2q+1); with 300 images the noise floor is close below
  # lambda_16, so the last kept pair is the least exact. Measured: eigenvalues 1.9e-4 relative, the 16th vector
  # 7.5e-3 off (the first ten below 1e-6), the diagonal remainder 1.5e-4 (its mean is 0.085).
  torch.testing.assert_close(ours.eigvals, full.eigvals, rtol=1e-3, atol=0)
  assert float((ours.eigvecs - full.eigvecs).norm(dim=0).max()) < 2e-2
  torch.testing.assert_close(ours.resid_var, full.resid_var, rtol=0, atol=1e-3)
