"""Tests for analysis/molrg.py: MoLRG sampling and the exact denoiser (docs/gen.md)."""
import numpy as np
import pytest
import torch

import sde_lib
from analysis import jacobian as J
from analysis import molrg


def _gmm_posterior_mean(x, a, bases, ridge=1e-12):
  """General Gaussian-mixture posterior mean with covariances C_k = U_k U_k^T + ridge I (brute force)."""
  s, g2 = a ** 0.5, 1 - a
  dim = x.shape[1]
  logps, means = [], []
  for U in bases:
    C = torch.as_tensor(U) @ torch.as_tensor(U).T + ridge * torch.eye(dim, dtype=torch.float64)
    sigma = a * C + g2 * torch.eye(dim, dtype=torch.float64)  # Cov(x_t | k)
    logps.append(torch.distributions.MultivariateNormal(torch.zeros(dim, dtype=torch.float64), sigma).log_prob(x))
    means.append(x @ torch.linalg.solve(sigma, s * C).T)  # E[x0 | x_t, k] = s C Sigma^-1 x_t
  w = torch.softmax(torch.stack(logps, 1), dim=1)
  return sum(w[:, k:k + 1] * m for k, m in enumerate(means))


def test_bases_orthonormal_and_samples_in_subspace():
  bases = molrg.molrg_bases(48, 2, 7, seed=0)
  assert bases.shape == (2, 48, 7)
  flat = np.concatenate(list(bases), axis=1)
  np.testing.assert_allclose(flat.T @ flat, np.eye(14), atol=1e-12)
  x, labels = molrg.molrg_sample(bases, 5, seed=1)
  for k in range(2):
    xk = x[labels == k]
    np.testing.assert_allclose(bases[k] @ (bases[k].T @ xk.T), xk.T, atol=1e-12)
  with pytest.raises(ValueError, match='K\\*d <= D'):
    molrg.molrg_bases(10, 2, 6)


@pytest.mark.parametrize('a', [0.999, 0.5, 0.01])
def test_exact_denoiser_matches_gmm_brute_force(a):
  bases = molrg.molrg_bases(12, 3, 3, seed=2)
  x = torch.randn(6, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
  torch.testing.assert_close(molrg.molrg_x0(x, a, bases), _gmm_posterior_mean(x, a, bases), rtol=1e-6, atol=1e-6)


def test_unequal_ranks_keep_log_det_term():
  q = molrg.molrg_bases(10, 1, 10, seed=3)[0]
  bases = [q[:, :2], q[:, 2:7]]  # d = 2 and d = 5: the log-det terms do not cancel
  x = torch.randn(5, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  torch.testing.assert_close(molrg.molrg_x0(x, 0.3, bases), _gmm_posterior_mean(x, 0.3, bases), rtol=1e-6,
                             atol=1e-6)


def test_denoiser_class_shapes_eps_and_clean_limit():
  schedule = sde_lib.DDPMSchedule()
  bases = molrg.molrg_bases(48, 2, 7, seed=0)
  den = molrg.MoLRGDenoiser(bases, schedule)
  x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
  t = torch.tensor([0., 10., 500., 999.])
  x0 = den.x0(x, t)
  assert x0.shape == x.shape
  torch.testing.assert_close(x0.reshape(4, 48), den.x0(x.reshape(4, 48), t))
  a = schedule.alpha_bar(t)[:, None, None, None]
  torch.testing.assert_close(den(x, t), (x - a.sqrt() * x0) / (1 - a).sqrt())
  assert den(x.float(), 100).dtype == torch.float32
  # t = -1: projection onto the subspace that holds more of x (hard argmax)
  clean = den.x0(x, -1).reshape(4, 48)
  flat = x.reshape(4, 48)
  norms = torch.stack([(flat @ torch.as_tensor(U)).norm(dim=1) for U in bases], 1)
  for i, k in enumerate(norms.argmax(1).tolist()):
    U = torch.as_tensor(bases[k])
    torch.testing.assert_close(clean[i], U @ (U.T @ flat[i]))
  with pytest.raises(ValueError, match='undefined'):
    den(x, -1)
  with pytest.raises(ValueError, match=r'\(4, 47\)'):
    den.x0(torch.zeros(4, 47), 3)


def test_jacobian_rank_d_at_low_noise_and_Kd_at_high_noise():
  """The docs/gen.md setup D = 48, K = 2, d = 7: rank ~ d near the data, ~ K d at high noise."""
  schedule = sde_lib.DDPMSchedule()
  bases = molrg.molrg_bases(48, 2, 7, seed=0)
  den = molrg.MoLRGDenoiser(bases, schedule)
  x0, _ = molrg.molrg_sample(bases, 2, seed=4)
  x0 = torch.as_tensor(x0)
  noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
  low, high = 5, 900
  rows = J.rank_curve(den.x0, [schedule.q_sample(x0, high, noise), schedule.q_sample(x0, low, noise)],
                      [high, low], schedule)
  assert rows[0]['rank'] == 14 and rows[1]['rank'] == 7
