"""Tests for analysis/symmetry.py: the SSB 1-D numbers (docs/ssb.md) and the data-only t_c estimate."""
import numpy as np
import pytest
import torch

import sde_lib
from analysis import symmetry as S

NOTEBOOK_TS = np.linspace(0, 1 - 1e-3, 1000)


def test_theta_critical_value():
  assert S.theta_critical() == pytest.approx(np.sqrt(np.sqrt(2) - 1), abs=1e-15)
  assert S.theta_critical() == pytest.approx(0.6436, abs=1e-4)


def test_critical_index_on_notebook_grid():
  i, t = S.critical_time(NOTEBOOK_TS)
  assert i == 707
  s = 1 - NOTEBOOK_TS[i]
  assert S.theta_continuous(s) == pytest.approx(0.6429, abs=1e-4)
  assert S.beta_continuous(s) == pytest.approx(5.93, abs=5e-3)


def test_critical_index_rejects_bad_grid():
  with pytest.raises(ValueError, match='increasing'):
    S.critical_index(np.array([0.9, 0.5]))
  with pytest.raises(ValueError, match='does not cross'):
    S.critical_index(np.linspace(0.1, 0.5, 10))


def test_fixed_points():
  pts, stable = S.fixed_points(0.8)
  np.testing.assert_allclose(pts, [-0.947, 0.0, 0.947], atol=5e-4)
  assert stable.tolist() == [True, False, True]
  for theta in (0.3, 0.6, 0.64):
    pts, stable = S.fixed_points(theta)
    assert pts.tolist() == [0.0] and stable.tolist() == [True]
  # Eq. 10 holds at the nonzero roots, and the drift vanishes there.
  for theta in (0.65, 0.8, 0.95):
    x = S.fixed_points(theta)[0][-1]
    assert (theta ** 2 + 1) * x == pytest.approx(-2 * theta * np.tanh(theta * x / (theta ** 2 - 1)), abs=1e-12)
    assert x / 2 + S.score_two_point(x, theta) == pytest.approx(0.0, abs=1e-10)


def test_curvature_sign_change_and_matches_potential():
  tc = S.theta_critical()
  assert S.curvature_at_zero(tc - 1e-3, 2.0) > 0 > S.curvature_at_zero(tc + 1e-3, 2.0)
  assert S.curvature_at_zero(tc, 1.0) == pytest.approx(0.0, abs=1e-12)
  for theta, beta in [(0.4, 3.0), (0.8, 7.0)]:
    h = 1e-4
    u = S.potential_two_point(np.array([-h, 0.0, h]), theta, beta)
    assert (u[0] - 2 * u[1] + u[2]) / h ** 2 == pytest.approx(S.curvature_at_zero(theta, beta), rel=1e-5)


def test_score_matches_log_density_and_potential():
  x, h = np.linspace(-2, 2, 21), 1e-5
  for theta in (0.3, 0.7, 0.95):
    v = 1 - theta ** 2
    log_p = lambda z: np.logaddexp(-(z - theta) ** 2 / (2 * v), -(z + theta) ** 2 / (2 * v))
    np.testing.assert_allclose(S.score_two_point(x, theta), (log_p(x + h) - log_p(x - h)) / (2 * h),
                               rtol=1e-6, atol=1e-6)
    beta = 4.0
    du = (S.potential_two_point(x + h, theta, beta) - S.potential_two_point(x - h, theta, beta)) / (2 * h)
    np.testing.assert_allclose(-du, S.reverse_sde_drift(x, 0.0, lambda z, s: S.score_two_point(z, theta),
                                                        lambda s: beta), rtol=1e-5, atol=1e-5)


def test_bad_theta_raises():
  with pytest.raises(ValueError, match='theta'):
    S.score_two_point(0.0, 1.0)
  with pytest.raises(ValueError, match='theta'):
    S.fixed_points(0.0)


def test_reverse_sde_splits_into_two_halves():
  rng = np.random.default_rng(0)
  x0 = rng.standard_normal(2000)
  traj = S.simulate_reverse(x0, NOTEBOOK_TS, generator=rng)
  xf = traj[-1]
  assert traj.shape == (1000, 2000)
  assert np.mean(np.abs(np.abs(xf) - 1) < 0.1) > 0.99
  assert 0.45 < np.mean(xf > 0) < 0.55
  # Before the critical time the marginal is unimodal around 0 (symmetry not yet broken).
  assert np.mean(np.abs(traj[500]) < 0.5) > 0.3 and np.mean(np.abs(xf) < 0.5) < 0.01


def test_sde_reproducible_with_seed():
  x0 = np.zeros(5)
  a = S.simulate_reverse(x0, NOTEBOOK_TS[:50], seed=3)
  b = S.simulate_reverse(x0, NOTEBOOK_TS[:50], seed=3)
  c = S.simulate_reverse(x0, NOTEBOOK_TS[:50], seed=4)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_ode_sign():
  x0 = np.random.default_rng(1).standard_normal(2000)
  good = S.simulate_reverse(x0, NOTEBOOK_TS, ode=True)[-1]
  assert np.mean(np.abs(np.abs(good) - 1) < 0.05) > 0.99
  assert np.array_equal(np.sign(good), np.sign(x0))  # the ODE map preserves order
  # The two-point marginal has variance theta^2 + (1 - theta^2) = 1 at every time: the correct ODE keeps it.
  traj = S.simulate_reverse(x0, NOTEBOOK_TS, ode=True)
  np.testing.assert_allclose(traj.std(1), 1.0, atol=0.05)
  # The original notebook's sign, -beta (x/2 - s) (docs/ssb.md), collapses everything onto 0 instead,
  # and its probability-flow version does not carry N(0, 1) to +-1.
  wrong = lambda x, s: -S.beta_continuous(s) * (x / 2 - S.two_point_score_fn(x, s))
  assert S.simulate_reverse(x0, NOTEBOOK_TS, ode=True, drift_fn=wrong)[707].std() < 1e-2
  wrong_pf = lambda x, s: -S.beta_continuous(s) * (x / 2 - S.two_point_score_fn(x, s) / 2)
  bad = S.simulate_reverse(x0, NOTEBOOK_TS, ode=True, drift_fn=wrong_pf)
  assert bad[707].std() < 1e-2
  assert np.mean(np.abs(np.abs(bad[-1]) - 1) < 0.05) < 0.7


def test_empirical_score_two_point_and_chunks():
  data = np.array([1.0, -1.0])
  x = np.linspace(-2, 2, 9)
  for theta in (0.2, 0.8):
    np.testing.assert_allclose(S.empirical_score(x, data, theta), S.score_two_point(x, theta), atol=1e-12)
  rng = np.random.default_rng(0)
  data, x = rng.standard_normal((50, 3)), rng.standard_normal((4, 3))
  np.testing.assert_allclose(S.empirical_score(x, data, 0.9, chunk=7), S.empirical_score(x, data, 0.9), atol=1e-12)
  with pytest.raises(ValueError, match='dimension'):
    S.empirical_score(np.zeros((2, 4)), data, 0.5)


def _torch_empirical_drift(x, data, theta, beta):
  mu = theta * data
  w = torch.softmax(-((x[None] - mu) ** 2).sum(-1) / (2 * (1 - theta ** 2)), 0)
  return beta * (x / 2 + (w @ mu - x) / (1 - theta ** 2))


def test_drift_jacobian_against_autograd_and_fd():
  rng = np.random.default_rng(2)
  data = rng.standard_normal((40, 4)) * np.array([2.0, 1.0, 0.5, 0.3]) + 0.7
  for theta, beta in [(0.3, 2.0), (0.7, 5.0), (0.95, 1.0)]:
    jac = S.drift_jacobian_at_mean(data, theta, beta)
    x = theta * data.mean(0)
    ref = torch.autograd.functional.jacobian(
        lambda z: _torch_empirical_drift(z, torch.tensor(data), theta, beta), torch.tensor(x))
    np.testing.assert_allclose(jac, ref.numpy(), rtol=1e-8, atol=1e-8)
    h, eye = 1e-6, np.eye(4)
    drift = lambda z: beta * (z / 2 + S.empirical_score(z[None], data, theta)[0])
    fd = np.stack([(drift(x + h * e) - drift(x - h * e)) / (2 * h) for e in eye], 1)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-5)


def test_stability_curve_two_point_is_minus_curvature():
  thetas = np.linspace(0.1, 0.95, 20)
  np.testing.assert_allclose(S.stability_curve([1.0, -1.0], thetas), -S.curvature_at_zero(thetas, 1.0), atol=1e-12)


def test_predicted_theta_and_tc_two_point():
  data = np.array([[1.0], [-1.0]])
  assert S.predicted_critical_theta(data, np.linspace(0.05, 0.99, 30)) == pytest.approx(S.theta_critical(), abs=1e-9)
  schedule = sde_lib.DDPMSchedule()
  theta_t = np.sqrt(schedule.alpha_bar(torch.arange(schedule.T)).numpy())
  expected = int(np.nonzero(theta_t > S.theta_critical())[0].max())  # last t past theta_c (noise -> data)
  assert S.predicted_tc(data, schedule) == expected
  assert S.predicted_tc(data, schedule, coarse=1) == expected


def test_predicted_theta_gaussian_data():
  rng = np.random.default_rng(0)
  lam = 5.0
  data = rng.standard_normal((4000, 3)) * np.sqrt([lam, 1.0, 0.5]) + np.array([3.0, -1.0, 0.0])
  lam_hat = np.linalg.eigvalsh(np.cov(data.T, ddof=0))[-1]
  got = S.predicted_critical_theta(data, np.linspace(0.05, 0.99, 40))
  assert S.gaussian_critical_theta(lam) == pytest.approx(0.5)
  assert got == pytest.approx(S.gaussian_critical_theta(lam_hat), rel=0.03)
  schedule = sde_lib.DDPMSchedule()
  t_c = S.predicted_tc(data, schedule)
  assert np.sqrt(schedule.alpha_bar(t_c).item()) == pytest.approx(got, abs=3e-3)
  # Variances <= 2 keep the flow at the mean contracting while the Gaussian picture holds (theta <= 0.9) ...
  small = rng.standard_normal((500, 2))
  assert np.isnan(S.predicted_critical_theta(small, np.linspace(0.05, 0.9, 20)))
  # ... and around a single data point the flow contracts all the way to the data.
  assert S.predicted_tc(np.ones((1, 3)), schedule) == -1


def test_noised_mean_is_a_fixed_point_only_for_data_symmetric_about_zero():
  # docs/ssb.md, "Beyond 1-D": the drift at theta * mean is beta theta (mean/2 + (mean_w - mean)/v), which
  # vanishes for data symmetric about the origin and not otherwise; predicted_tc is a statement about the
  # flow's Jacobian at that point, not about a fixed point, in general.
  theta, beta = 0.5, 2.0
  v = 1 - theta ** 2
  data = np.random.default_rng(3).standard_normal((200, 2)) * [1.5, 0.5] + [2.0, -1.0]
  m = data.mean(0)
  drift = beta * (theta * m / 2 + S.empirical_score((theta * m)[None], data, theta)[0])
  w = np.exp(-theta ** 2 * ((data - m) ** 2).sum(1) / (2 * v))
  m_w = (w / w.sum()) @ data
  np.testing.assert_allclose(drift, beta * theta * (m / 2 + (m_w - m) / v), rtol=1e-10)
  assert np.linalg.norm(drift) > 0.5
  symmetric = np.concatenate([data - m, m - data])  # p(y) = p(-y), mean 0
  assert np.abs(symmetric.mean(0)).max() < 1e-12
  centre = np.zeros((1, 2))
  np.testing.assert_allclose(beta * S.empirical_score(centre, symmetric, theta)[0], 0.0, atol=1e-12)


def test_top_eig_lanczos_matches_dense():
  rng = np.random.default_rng(5)
  data = rng.standard_normal((300, 20)) * np.linspace(0.2, 2.0, 20)
  w = rng.dirichlet(np.ones(300))
  assert S.top_cov_eigenvalue(data, w, max_dense=5) == pytest.approx(S.top_cov_eigenvalue(data, w), rel=1e-8)


def test_path_potential_two_point():
  theta, beta = 0.8, 3.0
  drift = lambda x: S.reverse_sde_drift(x, 0.0, lambda z, s: S.score_two_point(z, theta), lambda s: beta)
  angles = np.linspace(0, np.pi, 401)
  x1, x2 = np.array([1.0]), np.array([-0.5])
  u = S.path_potential(drift, x1, x2, angles)
  xs = np.cos(angles) * 1.0 + np.sin(angles) * -0.5
  ref = S.potential_two_point(xs, theta, beta) - S.potential_two_point(1.0, theta, beta)
  assert u[0] == 0.0
  np.testing.assert_allclose(u, ref, atol=2e-3)


def test_model_drift_with_exact_eps():
  schedule = sde_lib.DDPMSchedule()
  t = 400
  a = schedule.alpha_bar(t).item()
  theta = np.sqrt(a)

  def eps_fn(x, tt):  # the exact eps of the two-point data, (B, 1) torch
    assert tt.shape == (x.shape[0],) and float(tt[0]) == t
    return -np.sqrt(1 - a) * torch.from_numpy(S.score_two_point(x.numpy(), theta))

  drift = S.model_drift(eps_fn, schedule, t)
  x = torch.linspace(-2, 2, 11, dtype=torch.float64)[:, None]
  beta = schedule.T * schedule.beta_at(t).item()
  np.testing.assert_allclose(drift(x).numpy(), beta * (x.numpy() / 2 + S.score_two_point(x.numpy(), theta)),
                             rtol=1e-10)
  angles = np.linspace(0, np.pi / 2, 201)
  u = S.path_potential(drift, torch.tensor([[1.5]], dtype=torch.float64), torch.tensor([[-1.5]], dtype=torch.float64),
                       angles, batch_size=16)
  xs = 1.5 * (np.cos(angles) - np.sin(angles))
  ref = S.potential_two_point(xs, theta, beta) - S.potential_two_point(1.5, theta, beta)
  np.testing.assert_allclose(u, ref, atol=5e-3 * beta)
