"""PNDM (samplers/pndm.py; Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds"): its
call counts, its transfer step, PLMS against diffusers' PNDMScheduler(skip_prk_steps=True), and F-PNDM against
diffusers' pseudo Runge-Kutta warm-up and the paper's own formulation."""
import math

import numpy as np
import pytest
import torch

import samplers
from analysis import gaussian
from samplers import grids
from samplers.ddim import ddim_coefficients
from samplers.pndm import transfer_coefficients
from samplers.trajectory import Trajectory
from test_samplers import D, SCHED, _gaussian, _moments, _start, gaussian_eps_fn


# ----------------------------------------------------------------------------- closed forms and call counts
@pytest.mark.parametrize('variant,steps', [('f-pndm', 10), ('s-pndm', 20), ('plms', 20)])
def test_pndm_gaussian_moments(variant, steps):
  mu, sigma = _gaussian(D, seed=2)
  eps_fn, _ = gaussian_eps_fn(mu, sigma)
  x_init = _start(4000, D, seed=5)
  out = samplers.pndm(eps_fn, SCHED, x_init, grids.late_start_grid(999, steps), variant=variant)
  m_s, c_s = _moments(out)
  assert torch.max(torch.abs(m_s - mu)) < 0.1
  assert torch.max(torch.abs(c_s - sigma)) < 0.15


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
