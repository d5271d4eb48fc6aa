"""Initialisers: StandardNormal, Gaussian late start (exact / rank-r / Monte-Carlo) and moments files."""
import math

import numpy as np
import pytest
import torch

import rng
from samplers import initialisers as init
from sde_lib import DDPMSchedule

SCHED = DDPMSchedule()
SHAPE = (2, 2, 2)  # D = 8
D = 8


def _data_moments(seed=0):
  g = np.random.default_rng(seed)
  a = g.standard_normal((D, D)) / math.sqrt(D)
  return g.standard_normal(D), a @ a.T + 0.1 * np.eye(D)


def _target(mean, cov, t):
  a = float(SCHED.alpha_bar(t))
  return math.sqrt(a) * mean, a * cov + (1 - a) * np.eye(D)


@pytest.mark.parametrize('t_start', [100, 500])
def test_gls_draws_match_target_moments(t_start):
  mean, cov = _data_moments()
  gls = init.GaussianLateStart.from_moments(SCHED, t_start, mean, cov, SHAPE)
  x = gls.sample(20000, torch.Generator().manual_seed(0)).reshape(20000, D).numpy()
  m_t, c_t = _target(mean, cov, t_start)
  np.testing.assert_allclose(gls.covariance().numpy(), c_t, atol=1e-10)
  assert np.max(np.abs(x.mean(0) - m_t)) < 0.05
  assert np.max(np.abs(np.cov(x.T) - c_t)) < 0.06
  assert gls.sample(3, torch.Generator()).shape == (3, *SHAPE)


def test_at_shares_factorisation_and_changes_time():
  mean, cov = _data_moments()
  gls = init.GaussianLateStart.from_moments(SCHED, 500, mean, cov, SHAPE)
  other = gls.at(200)
  assert other.eigvecs is gls.eigvecs and other.t_start == 200
  np.testing.assert_allclose(other.covariance().numpy(), _target(mean, cov, 200)[1], atol=1e-10)


def test_same_noise_as_standard_normal_and_batch_independent():
  mean, cov = _data_moments()
  gls = init.GaussianLateStart.from_moments(SCHED, 999, mean, cov, SHAPE)
  z = init.StandardNormal(SHAPE, 999).sample(4, rng.per_sample_generators(0, range(4)))
  x = gls.sample(4, rng.per_sample_generators(0, range(4)))
  # At t = T-1, alpha_bar = 4e-5: the symmetric-root draw is the vanilla draw up to O(sqrt(a)).
  assert torch.max(torch.abs(x.float() - z)) < 0.05
  x2 = gls.sample(2, rng.per_sample_generators(0, [2, 3]))
  torch.testing.assert_close(x[2:], x2)
  low = init.GaussianLateStart.from_moments(SCHED, 999, mean, cov, SHAPE, rank=2)
  x3 = low.sample(2, rng.per_sample_generators(0, [2, 3]))
  torch.testing.assert_close(x3, low.sample(4, rng.per_sample_generators(0, range(4)))[2:])


def test_rank_r_preserves_per_pixel_variance():
  mean, cov = _data_moments(1)
  for rank in [1, 3]:
    low = init.GaussianLateStart.from_moments(SCHED, 300, mean, cov, SHAPE, rank=rank)
    c_t = _target(mean, cov, 300)[1]
    np.testing.assert_allclose(np.diag(low.covariance().numpy()), np.diag(c_t), atol=1e-10)
    x = low.sample(20000, torch.Generator().manual_seed(1)).reshape(20000, D).numpy()
    np.testing.assert_allclose(x.var(0, ddof=1), np.diag(c_t), rtol=0.05)
  with pytest.raises(ValueError, match='gls_rank'):
    init.GaussianLateStart.from_moments(SCHED, 300, mean, cov, SHAPE, rank=D + 1)


def test_float32_option():
  mean, cov = _data_moments()
  gls = init.GaussianLateStart.from_moments(SCHED, 400, mean, cov, SHAPE, dtype=torch.float32)
  x = gls.sample(5, torch.Generator().manual_seed(0))
  assert x.dtype == torch.float32
  x64 = init.GaussianLateStart.from_moments(SCHED, 400, mean, cov, SHAPE).sample(
      5, torch.Generator().manual_seed(0))
  torch.testing.assert_close(x.double(), x64, atol=1e-4, rtol=1e-4)


def _batches(data, bs=100):
  return [torch.as_tensor(data[i:i + bs]).reshape(-1, *SHAPE) for i in range(0, len(data), bs)]


def test_monte_carlo_moments_match_exact():
  mean, cov = _data_moments(2)
  data = np.random.default_rng(3).multivariate_normal(mean, cov, size=20000)
  mc = init.monte_carlo_moments(_batches(data), SCHED, 300, torch.Generator().manual_seed(0))
  m_t, c_t = _target(mean, cov, 300)
  assert mc['count'] == 20000 and mc['t_start'] == 300
  assert np.max(np.abs(mc['mean'] - m_t)) < 0.05
  assert np.max(np.abs(mc['cov'] - c_t)) < 0.06
  gls = init.GaussianLateStart.from_noised_moments(300, mc['mean'], mc['cov'], SHAPE)
  np.testing.assert_allclose(gls.covariance().numpy(), mc['cov'], atol=1e-10)
  with pytest.raises(ValueError, match='gls_fit'):
    gls.at(500)


def test_moments_file_round_trip_and_errors(tmp_path):
  data = np.random.default_rng(0).standard_normal((50, 2 * 4 * 4))
  m = {'mean': data.mean(0), 'cov': np.cov(data.T), 'count': 50}
  path = str(tmp_path / 'mnist_4_moments.npz')
  init.save_moments(path, m, 'MNIST', 4, 2, 'fingerprint-a')
  back = init.load_moments(path, 'mnist', 4, 2, fingerprint='fingerprint-a')
  with pytest.raises(ValueError, match='other data'):  # moments of another subset are refused, as FID statistics
    init.load_moments(path, 'mnist', 4, 2, fingerprint='fingerprint-b')
  np.testing.assert_array_equal(back['cov'], m['cov'])
  assert back['count'] == 50
  with pytest.raises(ValueError, match='dataset'):
    init.load_moments(path, 'cifar10', 4, 2)
  with pytest.raises(ValueError, match='image_size'):
    init.load_moments(path, 'mnist', 8, 2)
  with pytest.raises(FileNotFoundError, match='gauss_stats'):
    init.load_moments(str(tmp_path / 'nope.npz'), 'mnist', 4, 2)
  with pytest.raises(ValueError, match='shape'):
    init.GaussianLateStart.from_moments(SCHED, 10, back['mean'], back['cov'], (3, 4, 4))


# ----------------------------------------------------------------------------------------------------------
# Rank-r fit by subspace iteration (top_eigenpairs) against the full eigh it replaces
# ----------------------------------------------------------------------------------------------------------

import functools  # noqa: E402


@functools.lru_cache(maxsize=2)
def _known_spectrum_cov(dim=500, seed=0):
  """V diag(lambda) V^T with lambda_i = 1/i (distinct, image-like decay) and a random orthonormal V."""
  g = torch.Generator().manual_seed(seed)
  basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
  lam = 1.0 / torch.arange(1, dim + 1, dtype=torch.float64)
  return ((basis * lam) @ basis.T).numpy(), lam.numpy()


@pytest.mark.parametrize('rank', [8, 32])
def test_subspace_fit_matches_full_eigh(rank):
  cov, lam = _known_spectrum_cov()
  dim = cov.shape[0]
  mean = np.linspace(-1, 1, dim)
  fits = {s: init.GaussianLateStart.from_moments(SCHED, 400, mean, cov, (dim,), rank=rank, solver=s)
          for s in ('eigh', 'subspace')}
  fast, ref = fits['subspace'], fits['eigh']
  np.testing.assert_allclose(fast.eigvals.numpy(), ref.eigvals.numpy(), rtol=1e-6)
  np.testing.assert_allclose(np.sort(fast.eigvals.numpy())[::-1], lam[:rank], rtol=1e-6)  # the known spectrum
  np.testing.assert_allclose(fast.eigvecs.numpy(), ref.eigvecs.numpy(), atol=1e-6)  # same order and signs
  a = float(SCHED.alpha_bar(400))
  for fit in (fast, ref):  # diag(Sigma_t) = a diag(Sigma) + 1 - a, as before the partial solver existed
    np.testing.assert_allclose(np.diag(fit.covariance().numpy()), a * np.diag(cov) + 1 - a, rtol=1e-12)
  gens = rng.per_sample_generators(3, range(4))
  x_fast = fast.sample(4, gens)
  x_ref = ref.sample(4, rng.per_sample_generators(3, range(4)))
  torch.testing.assert_close(x_fast, x_ref, rtol=0, atol=1e-6)  # same seed, same draws


def test_subspace_fit_asymmetric_and_rank_deficient_input(caplog):
  g = np.random.default_rng(0)
  rows = g.standard_normal((5, 300)) * np.array([5., 4., 3., 2., 1.])[:, None]
  cov = rows.T @ rows / 4  # rank 5 < r = 8 < block: Cholesky QR breaks down, Householder QR takes over
  cov_asym = cov + 1e-13 * np.triu(g.standard_normal((300, 300)))  # streaming round-off is not symmetric
  with caplog.at_level('WARNING'):
    vals, vecs = init.top_eigenpairs(torch.from_numpy(cov_asym), 8)
  assert not caplog.records  # converged: no fallback to the full eigh
  ref = np.linalg.eigvalsh(0.5 * (cov_asym + cov_asym.T))[::-1][:8]
  assert torch.isfinite(vals).all() and torch.isfinite(vecs).all()
  np.testing.assert_allclose(vals[:5].numpy(), ref[:5], rtol=1e-6)
  assert np.abs(vals[5:].numpy()).max() <= 1e-9 * ref[0]
  np.testing.assert_allclose(vecs.T @ vecs, np.eye(8), atol=1e-10)


def test_subspace_fit_falls_back_to_eigh_when_not_converged(caplog):
  cov, lam = _known_spectrum_cov(200)
  with caplog.at_level('WARNING'):
    vals, vecs = init.top_eigenpairs(torch.from_numpy(cov), 4, max_iter=1)
  assert any('did not converge' in r.getMessage() for r in caplog.records)
  np.testing.assert_allclose(vals.numpy(), lam[:4], rtol=1e-10)


def test_solver_choice(monkeypatch):
  assert init.partial_fit_pays(3072, 8) and init.partial_fit_pays(12288, 64)
  assert not init.partial_fit_pays(784, 8) and not init.partial_fit_pays(3072, 700)
  g = np.random.default_rng(0)
  low = g.standard_normal((1024, 16)) * np.arange(16, 0, -1)
  cov = low @ low.T + np.diag(np.linspace(0.1, 0.2, 1024))  # well separated top 8: converges in a few steps
  calls = []
  original = init.top_eigenpairs
  monkeypatch.setattr(init, 'top_eigenpairs', lambda c, r: calls.append(r) or original(c, r))
  fit = init.GaussianLateStart.from_moments(SCHED, 100, np.zeros(1024), cov, (1024,), rank=8)  # 'auto'
  assert calls == [8] and fit.eigvecs.shape == (1024, 8)
  init.GaussianLateStart.from_moments(SCHED, 100, np.zeros(D), cov[:D, :D], SHAPE, rank=0)  # full: eigh
  init.GaussianLateStart.from_moments(SCHED, 100, np.zeros(D), cov[:D, :D], SHAPE, rank=2)  # small D: eigh
  assert calls == [8]
  with pytest.raises(ValueError, match='solver'):
    init.GaussianLateStart.from_moments(SCHED, 100, np.zeros(1024), cov, (1024,), rank=8, solver='lanczos')
