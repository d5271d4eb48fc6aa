"""Samplers and grids against closed forms (exact eps of Gaussian and two-point data)."""
import math
import os

import numpy as np
import pytest
import torch

import rng
import samplers
from analysis import gaussian
from samplers import grids
from samplers.ddim import ddim_coefficients
from samplers.initialisers import GaussianLateStart
from samplers.pndm import transfer_coefficients
from samplers.trajectory import Trajectory
from sde_lib import DDPMSchedule

SCHED = DDPMSchedule()
D = 16


def _gaussian(dim, seed=0):
  g = np.random.default_rng(seed)
  a = g.standard_normal((dim, dim)) / math.sqrt(dim)
  return torch.tensor(g.standard_normal(dim) * 0.5), torch.tensor(a @ a.T + 0.05 * np.eye(dim))


def gaussian_eps_fn(mu, sigma, schedule=SCHED):
  """Exact eps of N(mu, sigma): sqrt(1-a) Sigma_t^{-1} (x - sqrt(a) mu), Sigma_t = a Sigma + (1-a) I."""
  eye = torch.eye(len(mu), dtype=torch.float64)

  def eps_fn(x, t):
    a = float(schedule.alpha_bar(t))
    prec = torch.linalg.inv(a * sigma + (1 - a) * eye)
    return math.sqrt(1 - a) * (x - math.sqrt(a) * mu) @ prec
  return eps_fn, eye


def ddim_affine_moments(mu, sigma, m, c, timesteps, schedule=SCHED):
  """Propagates mean m / cov c through DDIM eta=0 with exact eps: every step is x -> M x + b."""
  seq = list(timesteps)
  eye = torch.eye(len(mu), dtype=torch.float64)
  for t, t_next in zip(seq, seq[1:] + [-1]):
    a, a_next = float(schedule.alpha_bar(t)), float(schedule.alpha_bar(t_next))
    k = math.sqrt(1 - a) * torch.linalg.inv(a * sigma + (1 - a) * eye)  # eps = k (x - sqrt(a) mu)
    if t_next < 0:  # output = x0_pred = (x - sqrt(1-a) eps) / sqrt(a)
      mat, off = (eye - math.sqrt(1 - a) * k) / math.sqrt(a), math.sqrt(1 - a) * k @ mu
    else:
      c_x, c_eps, _ = ddim_coefficients(a, a_next, 0.0)
      mat, off = c_x * eye + c_eps * k, -c_eps * math.sqrt(a) * k @ mu
    m, c = mat @ m + off, mat @ c @ mat.T
  return m, c


def _moments(x):
  x = x.reshape(len(x), -1)
  return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _start(n, dim, seed=0):
  return rng.randn((n, dim), torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------- Gaussian data
@pytest.mark.parametrize('dim', [1, D])
def test_ddim_gaussian_matches_data_and_closed_form(dim):
  mu, sigma = _gaussian(dim)
  eps_fn, eye = gaussian_eps_fn(mu, sigma)
  seq = grids.late_start_grid(999, 100)
  x_init = _start(4000, dim)
  out = samplers.ddim(eps_fn, SCHED, x_init, seq)
  m_s, c_s = _moments(out)
  # Exact: DDIM with exact eps is affine, so the empirical start moments map exactly.
  m0, c0 = _moments(x_init)
  m_cf, c_cf = ddim_affine_moments(mu, sigma, m0, c0, seq)
  torch.testing.assert_close(m_s, m_cf, atol=1e-8, rtol=1e-8)
  torch.testing.assert_close(c_s, c_cf, atol=1e-8, rtol=1e-8)
  # Population: N(0, I) at 999 through 1000 steps lands on the data moments up to the
  # discretisation (cov error 0.006 here; 0.06 at 100 steps) and the start mismatch sqrt(a_999) mu.
  m_pop, c_pop = ddim_affine_moments(mu, sigma, torch.zeros(dim, dtype=torch.float64), eye,
                                     grids.late_start_grid(999, 1000))
  torch.testing.assert_close(m_pop, mu, atol=2e-2, rtol=0)
  torch.testing.assert_close(c_pop, sigma, atol=1e-2, rtol=0)
  # Sampled vs data, within sampling error (n = 4000: se of cov entries ~ 0.03).
  assert torch.max(torch.abs(m_s - mu)) < 0.1
  assert torch.max(torch.abs(c_s - sigma)) < 0.15


@pytest.mark.parametrize('t_start', [200, 500, 800])
def test_gaussian_late_start_equals_full_start(t_start):
  mu, sigma = _gaussian(D, seed=1)
  eps_fn, eye = gaussian_eps_fn(mu, sigma)
  gls = GaussianLateStart.from_moments(SCHED, t_start, mu, sigma, (D,))
  seq_late = grids.late_start_grid(t_start, 100)

  def exact_start(t):
    a = float(SCHED.alpha_bar(t))
    return math.sqrt(a) * mu, a * sigma + (1 - a) * eye
  # Closed form on the consecutive grids: late start at t_c vs the exact start at T-1.
  m_late, c_late = ddim_affine_moments(mu, sigma, *exact_start(t_start),
                                       grids.late_start_grid(t_start, t_start + 1))
  m_full, c_full = ddim_affine_moments(mu, sigma, *exact_start(999), grids.late_start_grid(999, 1000))
  for m, c in [(m_late, c_late), (m_full, c_full)]:
    torch.testing.assert_close(m, mu, atol=1e-3, rtol=0)
    torch.testing.assert_close(c, sigma, atol=1e-2, rtol=0)
  torch.testing.assert_close(gls.covariance(), exact_start(t_start)[1])
  # Sampled: draws of the initialiser through the sampler.
  out = samplers.ddim(eps_fn, SCHED, gls.sample(4000, torch.Generator().manual_seed(3)), seq_late)
  m_s, c_s = _moments(out)
  assert torch.max(torch.abs(m_s - mu)) < 0.1
  assert torch.max(torch.abs(c_s - sigma)) < 0.15


@pytest.mark.parametrize('variant,steps', [('f-pndm', 10), ('s-pndm', 20), ('plms', 20)])
def test_pndm_gaussian_moments(variant, steps):
  mu, sigma = _gaussian(D, seed=2)
  eps_fn, _ = gaussian_eps_fn(mu, sigma)
  x_init = _start(4000, D, seed=5)
  out = samplers.pndm(eps_fn, SCHED, x_init, grids.late_start_grid(999, steps), variant=variant)
  m_s, c_s = _moments(out)
  assert torch.max(torch.abs(m_s - mu)) < 0.1
  assert torch.max(torch.abs(c_s - sigma)) < 0.15


# ----------------------------------------------------------------------------- two-point data
def _two_point_eps_fn(points, schedule=SCHED):
  """Exact eps of the empirical distribution on ``points`` (K, D) (analysis/denoiser.py)."""
  def eps_fn(x, t):
    a = float(schedule.alpha_bar(t))
    logits = -torch.cdist(x, math.sqrt(a) * points) ** 2 / (2 * (1 - a))
    x0_hat = torch.softmax(logits, dim=1) @ points
    return (x - math.sqrt(a) * x0_hat) / math.sqrt(1 - a)
  return eps_fn


def test_full_ddpm_lands_on_data_points():
  points = torch.tensor([[-1.0, 0.5], [1.0, -0.5], [0.2, 1.2]], dtype=torch.float64)
  x_init = _start(300, 2, seed=7)
  seq = grids.late_start_grid(999, 1000)
  assert samplers.is_full_chain(list(seq))
  out = samplers.ddpm(_two_point_eps_fn(points), SCHED, x_init, seq,
                      generator=torch.Generator().manual_seed(1))
  dist = torch.cdist(out, points).min(dim=1).values
  assert torch.max(dist) < 0.05
  counts = torch.bincount(torch.cdist(out, points).argmin(dim=1), minlength=3)
  assert torch.all(counts > 50)  # every mode is visited (uniform mixture)


# ----------------------------------------------------------------------------- mechanics
class _Counter:
  def __init__(self, fn):
    self.fn, self.calls, self.times = fn, 0, []

  def __call__(self, x, t):
    self.calls += 1
    self.times.append(t)
    return self.fn(x, t)


@pytest.mark.parametrize('variant', ['f-pndm', 's-pndm', 'plms'])
@pytest.mark.parametrize('n', [1, 2, 3, 4, 5, 10])
def test_pndm_call_count_matches_nfe(variant, n):
  mu, sigma = _gaussian(4)
  counter = _Counter(gaussian_eps_fn(mu, sigma)[0])
  samplers.pndm(counter, SCHED, _start(3, 4), grids.late_start_grid(999, n), variant=variant)
  assert counter.calls == samplers.nfe('pndm', n, variant=variant)
  if variant == 'f-pndm':
    assert counter.calls == (n + 9 if n >= 3 else 4 * n)
  assert min(counter.times) >= 0.0  # negative midpoints / t=-1 are clamped for the network


def test_pndm_last_step_from_t0_negative_midpoint():
  """Grid (0,): RK from 0 to -1 uses t_mid = -0.5 for alpha_bar, the network sees 0."""
  mu, sigma = _gaussian(4)
  counter = _Counter(gaussian_eps_fn(mu, sigma)[0])
  x = _start(5, 4)
  out = samplers.pndm(counter, SCHED, x, [0])
  assert counter.times == [0.0, 0.0, 0.0, 0.0]
  assert torch.isfinite(out).all()
  assert float(SCHED.alpha_bar(-0.5)) > float(SCHED.alpha_bar(0))


def test_nfe_ddim_ddpm_and_unknown():
  assert samplers.nfe('ddim', 7) == 7 and samplers.nfe('ddpm', 1000) == 1000
  assert samplers.nfe('pndm', 5) == 14 and samplers.nfe('pndm', 3) == 12
  with pytest.raises(ValueError, match='sampling.method'):
    samplers.get_sampler('euler')
  with pytest.raises(ValueError, match='pndm_variant'):
    samplers.nfe('pndm', 5, variant='x')
  assert samplers.get_sampler('pndm') is samplers.pndm


def test_ddim_output_is_last_x0_prediction_and_trajectory_shapes():
  mu, sigma = _gaussian(4)
  eps_fn, _ = gaussian_eps_fn(mu, sigma)
  seq = grids.late_start_grid(999, 6)
  x_init = _start(3, 4)
  for name in samplers.SAMPLERS:  # every sampler reports every grid point and returns x0 alone
    traj = Trajectory()
    out = samplers.get_sampler(name)(eps_fn, SCHED, x_init, seq, callback=traj,
                                     generator=torch.Generator().manual_seed(0))
    assert torch.is_tensor(out) and out.shape == x_init.shape
    assert traj['t'] == list(seq)
    assert len(traj['x']) == len(traj['x0_pred']) == 6
    assert all(v.shape == x_init.shape and v.device.type == 'cpu' for v in traj['x'] + traj['x0_pred'])
    torch.testing.assert_close(traj['x'][0], x_init)
    if name != 'pndm':
      torch.testing.assert_close(out, traj['x0_pred'][-1], rtol=0, atol=0)
    alone = samplers.get_sampler(name)(eps_fn, SCHED, x_init, seq, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, alone)  # the callback only watches


def test_pndm_transfer_equals_ddim_eta0_step():
  mu, sigma = _gaussian(4)
  eps_fn, _ = gaussian_eps_fn(mu, sigma)
  for t, t_next in [(999, 749), (500, 300), (10, 0), (0, -1)]:
    a, a_next = float(SCHED.alpha_bar(t)), float(SCHED.alpha_bar(t_next))
    assert np.allclose(transfer_coefficients(a, a_next), ddim_coefficients(a, a_next, 0.0)[:2])
  x = _start(3, 4)
  traj = Trajectory()
  samplers.ddim(eps_fn, SCHED, x, [500, 300], callback=traj)
  a, a_next = float(SCHED.alpha_bar(500)), float(SCHED.alpha_bar(300))
  c_x, c_eps = transfer_coefficients(a, a_next)
  torch.testing.assert_close(traj['x'][1], c_x * x + c_eps * eps_fn(x, 500.0))


@pytest.mark.parametrize('seq', [grids.late_start_grid(999, 5), list(range(20, -1, -1))])
def test_stochastic_samplers_batch_size_independent(seq):
  mu, sigma = _gaussian(4)
  eps_fn, _ = gaussian_eps_fn(mu, sigma)
  x = _start(4, 4)
  big = samplers.ddpm(eps_fn, SCHED, x, seq, generator=rng.per_sample_generators(0, range(4)))
  small = samplers.ddpm(eps_fn, SCHED, x[2:], seq, generator=rng.per_sample_generators(0, [2, 3]))
  torch.testing.assert_close(big[2:], small)
  other = samplers.ddpm(eps_fn, SCHED, x, seq, generator=rng.per_sample_generators(1, range(4)))
  assert not torch.allclose(big, other)  # the noise really enters


# ----------------------------------------------------------------------------- grids
def test_grids_values():
  assert grids.late_start_grid(999, 5) == (999, 749, 499, 249, 0)
  assert grids.make_grid('late_start', 3, 400) == (400, 200, 0)
  assert grids.uniform_grid(10) == tuple(range(900, -1, -100))
  assert len(grids.uniform_grid(3)) == 3
  q = grids.quad_grid(10)
  assert q[0] == 800 and q[-1] == 0 and len(q) == 10
  assert grids.late_start_grid(999, 1000) == tuple(range(999, -1, -1))


@pytest.mark.parametrize('call,field', [
    (lambda: grids.late_start_grid(999, 0), 'sampling.num_steps'),
    (lambda: grids.late_start_grid(10, 12), 'sampling.num_steps'),
    (lambda: grids.late_start_grid(1000, 5), 'sampling.t_start'),
    (lambda: grids.make_grid('late_start', 5, -1), 'sampling.t_start'),
    (lambda: grids.make_grid('cosine', 5, 999), 'sampling.grid'),
    (lambda: grids.quad_grid(200), 'duplicate'),
])
def test_bad_grids_raise(call, field):
  with pytest.raises(ValueError, match=field):
    call()


@pytest.mark.parametrize('seq', [[5, 5, 0], [0, 5], [1000, 0], [3, -1], []])
def test_samplers_reject_bad_timesteps(seq):
  with pytest.raises(ValueError, match='timesteps'):
    samplers.ddim(lambda x, t: x, SCHED, torch.zeros(1, 2), seq)


# ----------------------------------------------------------------------------- PLMS vs diffusers
def _plms_fixture(fixtures_dir):
  """Diffusers' PNDMScheduler(skip_prk_steps=True) outputs (tests/fixtures/make_plms_fixture.py)."""
  with np.load(f'{fixtures_dir}/plms_diffusers.npz', allow_pickle=False) as f:
    data = {k: f[k] for k in f.files}
  return data, int(data['num_cases'])


def _diag_gaussian_eps_fn(mu, s, schedule=SCHED):
  """Exact eps of N(mu, diag(s^2)): (x - sqrt(a) mu) sqrt(1-a) / (a s^2 + 1 - a), a = alpha_bar(t)."""
  def eps_fn(x, t):
    a = float(schedule.alpha_bar(t))
    return (x - math.sqrt(a) * mu) * math.sqrt(1 - a) / (a * s ** 2 + 1 - a)
  return eps_fn


def test_plms_fixture_uses_our_schedule(fixtures_dir):
  data, num_cases = _plms_fixture(fixtures_dir)
  table = SCHED.alpha_bar(torch.arange(1000)).numpy()
  assert np.max(np.abs(table - data['alphas_cumprod'])) < 1e-12
  kinds = [str(data[f'kind_{i}']) for i in range(num_cases)]
  grids_seen = {tuple(data[f'grid_{i}'].tolist()) for i in range(num_cases)}
  assert kinds.count('relabel') >= 6 and grids.late_start_grid(999, 5) in grids_seen
  assert grids.late_start_grid(400, 10) in grids_seen


def test_plms_matches_diffusers(fixtures_dir):
  """variant='plms' equals diffusers' PLMS loop to 1e-9 in float64, with the same eps call times."""
  data, num_cases = _plms_fixture(fixtures_dir)
  mu, s = torch.tensor(data['mu']), torch.tensor(data['s'])
  x_init = torch.tensor(data['x_init'])
  for i in range(num_cases):
    seq = data[f'grid_{i}'].tolist()
    counter = _Counter(_diag_gaussian_eps_fn(mu, s))
    out = samplers.pndm(counter, SCHED, x_init, seq, variant='plms')
    diff = float(torch.max(torch.abs(out - torch.tensor(data[f'out_{i}']))))
    assert diff < 1e-9, f'case {i} grid {seq}: max abs diff {diff}'
    assert counter.times == data[f'times_{i}'].tolist(), f'case {i} grid {seq}'
    n = len(seq)
    assert counter.calls == samplers.nfe('pndm', n, variant='plms') == (n + 1 if n >= 2 else 1)


def test_plms_first_step_is_improved_euler():
  mu, sigma = _gaussian(4)
  eps_fn, _ = gaussian_eps_fn(mu, sigma)
  x = _start(3, 4)
  a, a_next = float(SCHED.alpha_bar(999)), float(SCHED.alpha_bar(749))
  c_x, c_eps = transfer_coefficients(a, a_next)
  e1 = eps_fn(x, 999.0)
  e2 = eps_fn(c_x * x + c_eps * e1, 749.0)
  traj = Trajectory()
  samplers.pndm(eps_fn, SCHED, x, [999, 749, 0], variant='plms', callback=traj)
  torch.testing.assert_close(traj['x'][1], c_x * x + c_eps * 0.5 * (e1 + e2), rtol=0, atol=1e-12)


@pytest.mark.parametrize('n', [1, 2, 3, 5])
def test_plms_euler_keeps_euler_start(n):
  """'plms-euler' (the earlier 'plms'): first step = one DDIM eta=0 step, then AB2, NFE = n."""
  mu, sigma = _gaussian(4)
  counter = _Counter(gaussian_eps_fn(mu, sigma)[0])
  x = _start(3, 4)
  seq = grids.late_start_grid(999, n)
  traj = Trajectory()
  out = samplers.pndm(counter, SCHED, x, seq, variant='plms-euler', callback=traj)
  assert counter.calls == samplers.nfe('pndm', n, variant='plms-euler') == n
  traj_ddim = Trajectory()
  samplers.ddim(counter.fn, SCHED, x, seq, callback=traj_ddim)
  if n == 1:
    torch.testing.assert_close(out, traj_ddim['x0_pred'][0], rtol=0, atol=1e-12)
    return
  torch.testing.assert_close(traj['x'][1], traj_ddim['x'][1], rtol=0, atol=1e-12)
  t1, t2 = seq[1], (seq[2] if n > 2 else -1)
  a, a_next = float(SCHED.alpha_bar(t1)), float(SCHED.alpha_bar(t2))
  ab2 = 1.5 * counter.fn(traj['x'][1], float(t1)) - 0.5 * counter.fn(x, float(seq[0]))
  c_x, c_eps = transfer_coefficients(a, a_next)
  second = c_x * traj['x'][1] + c_eps * ab2
  torch.testing.assert_close(traj['x'][2] if n > 2 else out, second, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- F-PNDM vs diffusers and the paper
def _paper_alpha_bar(t):
  """alpha_bar at a real t in [-1, 999], built here without sde_lib: [1, cumprod(1 - beta)] at index t + 1
  (alpha_bar(-1) = 1), log alpha_bar linear between the integer neighbours (docs/schedule.md)."""
  log_ab = np.concatenate([[0.0], np.cumsum(np.log1p(-np.linspace(1e-4, 0.02, 1000)))])
  return float(np.exp(np.interp(t + 1.0, np.arange(1001), log_ab)))


def _paper_transfer(x, t, t_next, e):
  """PNDM Eq. 9 in the paper's form; x, e (B, D), returns (B, D):
  x + (a' - a) [x / (sqrt(a) (sqrt(a) + sqrt(a'))) - e / (sqrt(a) (sqrt((1 - a') a) + sqrt((1 - a) a')))]."""
  a, a2 = _paper_alpha_bar(t), _paper_alpha_bar(t_next)
  ra, ra2 = math.sqrt(a), math.sqrt(a2)
  return x + (a2 - a) * (x / (ra * (ra + ra2)) - e / (ra * (math.sqrt((1 - a2) * a) + math.sqrt((1 - a) * a2))))


def _paper_prk(model, x, t, t_next, ets):
  """PNDM Eq. 13 (pseudo Runge-Kutta) with the midpoint t - delta/2; appends e1 to ets; returns e' (B, D)."""
  t_mid = (t + t_next) / 2
  e1 = model(x, t)
  ets.append(e1)
  e2 = model(_paper_transfer(x, t, t_mid, e1), t_mid)
  e3 = model(_paper_transfer(x, t, t_mid, e2), t_mid)
  e4 = model(_paper_transfer(x, t, t_next, e3), t_next)
  return (e1 + 2 * e2 + 2 * e3 + e4) / 6


def _paper_fpndm(eps_fn, x, grid):
  """F-PNDM transcribed from the paper (as the authors' gen_order_4): PRK (Eq. 13) for the first 3 steps, then the
  pseudo linear multistep (Eq. 12), every step x <- Eq. 9; grid descending, the last step to t = -1.
  x (B, D) -> (B, D). The network sees max(t, 0) (this repo's rule for the midpoint -0.5 and t = -1)."""
  def model(y, t):
    return eps_fn(y, max(float(t), 0.0))
  ets = []
  for t, t_next in zip(grid, list(grid[1:]) + [-1]):
    if len(ets) > 2:
      ets.append(model(x, t))
      e = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
    else:
      e = _paper_prk(model, x, t, t_next, ets)
    x = _paper_transfer(x, t, t_next, e)
  return x


def _fpndm_fixture(fixtures_dir):
  """Diffusers' PNDMScheduler(skip_prk_steps=False) outputs (tests/fixtures/make_fpndm_fixture.py)."""
  with np.load(f'{fixtures_dir}/fpndm_diffusers.npz', allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def test_fpndm_matches_diffusers_on_uniform_grid(fixtures_dir):
  """variant='f-pndm' (the default) equals diffusers' PRK + PLMS loop on its 'leading' grid = our uniform grid, n = 5,
  10, 20 (even gaps, so diffusers' integer midpoint is (t + t')/2), in float64 with the same eps call times; so does
  the paper transcription _paper_fpndm, which the late-start test below then relies on."""
  data = _fpndm_fixture(fixtures_dir)
  assert np.max(np.abs(SCHED.alpha_bar(torch.arange(1000)).numpy() - data['alphas_cumprod'])) < 1e-12
  mu, s, x_init = (torch.tensor(data[k]) for k in ('mu', 's', 'x_init'))
  ns = []
  for i in range(int(data['num_cases'])):
    seq, ref = data[f'grid_{i}'].tolist(), torch.tensor(data[f'out_{i}'])
    n = len(seq)
    assert tuple(seq) == grids.uniform_grid(n)
    counter = _Counter(_diag_gaussian_eps_fn(mu, s))
    out = samplers.pndm(counter, SCHED, x_init, seq)  # the default variant
    diff = float(torch.max(torch.abs(out - ref)))
    assert diff < 1e-9, f'n = {n}: max abs diff {diff}'
    assert counter.times == data[f'times_{i}'].tolist(), f'n = {n}'
    assert counter.calls == samplers.nfe('pndm', n) == n + 9
    paper = _paper_fpndm(_diag_gaussian_eps_fn(mu, s), x_init, seq)
    assert float(torch.max(torch.abs(paper - ref))) < 1e-9, f'n = {n}: the transcription differs'
    ns.append(n)
  assert ns == [5, 10, 20]


@pytest.mark.parametrize('t_start,n', [(400, 3), (400, 5), (600, 10), (250, 20)])
def test_fpndm_late_start_matches_paper(t_start, n):
  """On late-start grids (unequal gaps, fractional midpoints, and at n = 3 the PRK step 0 -> -1 with midpoint -0.5),
  where diffusers cannot go, f-pndm equals the transcription of the paper's equations to float64 round-off."""
  mu, sigma = _gaussian(D, seed=4)
  eps_fn, _ = gaussian_eps_fn(mu, sigma)
  seq = grids.late_start_grid(t_start, n)
  x = _start(8, D, seed=6)
  out = samplers.pndm(eps_fn, SCHED, x, seq, variant='f-pndm')
  torch.testing.assert_close(out, _paper_fpndm(eps_fn, x, seq), rtol=0, atol=1e-10)


def test_fpndm_second_order_on_equal_steps():
  """Against the exact ODE of Gaussian data on equal integer steps (n - 1 divides 350; bench_solver_order.py (a)) the
  error of f-pndm falls as n^-2, the second order the PNDM paper states for its pseudo methods. A midpoint off (t + t')/2 drops it to 1."""
  ns = (36, 71, 176)
  errs = [gaussian.ode_error(samplers.pndm, SCHED, n, variant='f-pndm') for n in ns]
  slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
  assert abs(slope - 2) < 0.35, f'errors {errs}, measured order {slope:.2f}'


# ------------------------------------------------------------------------------------------ the registry
def _toy(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None, scale=1.0):
  """A one-call sampler for the registry test: x0 predicted at the grid's first time, times ``scale``."""
  t = timesteps[0]
  return scale * schedule.x0_from_eps(x_init, t, eps_fn(x_init, t))


def test_a_sampler_is_one_registry_entry_through_sample_and_eval(tmp_path, trained_workdir, monkeypatch):
  """Registering a record is all a new sampler needs: validation, the plan (options from config.sampling, its NFE
  rule), --mode=sample's file name, the eval sweep and its tables pick it up."""
  import eval_lib
  import sample_lib
  import sampling
  from configs.validation import validate_config
  from conftest import TRAINED_OVERRIDES, copy_workdir, tiny_digits_config
  monkeypatch.setitem(samplers.SAMPLERS, 'toy', samplers.Sampler(
      _toy, 'Toy', nfe=lambda n, **options: 1, options=lambda s: {'scale': 0.5}))
  config = tiny_digits_config(tmp_path, **TRAINED_OVERRIDES)
  config.sampling.method, config.sampling.num_steps = 'toy', 3
  config.eval.methods, config.eval.num_steps, config.eval.t_starts = ('ddim', 'toy'), (3,), (400,)
  config.eval.kid_subset_size = 8
  validate_config(config)
  workdir = copy_workdir(trained_workdir, tmp_path / 'run')
  plan = sampling.check_plan(config)
  assert plan.nfe == 1 and plan.options == {'scale': 0.5} and plan.sampler is _toy
  path = sample_lib.sample(config, workdir)
  assert os.path.basename(path).startswith('toy_n3_') and 'scale0.5' in path
  assert np.load(path)['samples'].shape == (8, 1, 8, 8)
  eval_lib.fid_stats(config, workdir)
  results = eval_lib.evaluate(config, workdir)
  assert results['toy_n3_gls_tc400_late_start']['nfe'] == 1
  table = open(os.path.join(workdir, 'eval', 'results.md')).read()
  assert '| gls-DDIM | DDIM | gls-Toy | Toy |' in table


def test_a_sampler_that_refuses_a_grid_says_so_in_one_line(tiny_config, monkeypatch):
  import sampling
  from errors import InputError
  monkeypatch.setitem(samplers.SAMPLERS, 'toy', samplers.Sampler(_toy, 'Toy', grids=('late_start',)))
  with pytest.raises(InputError, match='sampling.method=toy does not run on sampling.grid=karras'):
    sampling.check_plan(tiny_config, 'toy', 3, 'normal', 999, 'karras')
  assert sampling.check_plan(tiny_config, 'toy', 3, 'normal', 999, 'late_start').nfe == 3
