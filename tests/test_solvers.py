"""DPM-Solver++(2M) and UniPC against diffusers (fixture) and against the closed-form ODE solution of Gaussian data."""
import math

import numpy as np
import pytest
import torch

import samplers
from analysis import gaussian
from samplers import grids
from samplers.unipc import corrector_weights
from sde_lib import DDPMSchedule

SCHED = DDPMSchedule()
SOLVERS = ('dpmpp_2m', 'unipc')


def _fixture(fixtures_dir):
  """diffusers' outputs (tests/fixtures/make_solver_fixture.py)."""
  with np.load(f'{fixtures_dir}/solvers_diffusers.npz', allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _diag_eps_fn(mu, s):
  """Exact eps of N(mu, diag(s^2)) in float64, returned in x's dtype."""
  def eps_fn(x, t):
    a = float(SCHED.alpha_bar(t))
    return ((x.double() - math.sqrt(a) * mu) * math.sqrt(1 - a) / (a * s ** 2 + 1 - a)).to(x.dtype)
  return eps_fn


class _Counter:
  def __init__(self, fn):
    self.fn, self.calls = fn, 0

  def __call__(self, x, t):
    self.calls += 1
    return self.fn(x, t)


@pytest.mark.parametrize('solver', SOLVERS)
def test_solvers_equal_diffusers(fixtures_dir, solver):
  """Equal to diffusers' schedulers on their own grids (n = 3, 5, 10, 20) and on late-start grids, to float32
  round-off (diffusers computes sigma, lambda and the update in float32); one network call per grid point."""
  data = _fixture(fixtures_dir)
  mu, s, x_init = (torch.tensor(data[k]) for k in ('mu', 's', 'x_init'))
  kinds = set()
  for i in range(int(data['num_cases'])):
    if str(data[f'solver_{i}']) != solver:
      continue
    grid, ref = data[f'grid_{i}'].tolist(), torch.tensor(data[f'out_{i}']).double()
    counter = _Counter(_diag_eps_fn(mu, s))
    out = samplers.get_sampler(solver)(counter, SCHED, x_init.clone(), grid)
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < 2e-5, f'{solver} case {i} grid {grid}: relative difference {rel}'
    assert counter.calls == len(grid) == samplers.nfe(solver, len(grid))
    kinds.add(str(data[f'kind_{i}']))
  assert kinds == {'own', 'late'}


def test_fixture_grids_are_diffusers_linspace_and_late_start(fixtures_dir):
  data = _fixture(fixtures_dir)
  seen = {(str(data[f'kind_{i}']), tuple(data[f'grid_{i}'].tolist())) for i in range(int(data['num_cases']))}
  assert ('own', (999, 899, 799, 699, 599, 500, 400, 300, 200, 100)) in seen  # linspace(0, 999, 11)[::-1][:-1]
  assert ('late', grids.late_start_grid(400, 5)) in seen


def test_first_order_steps_are_ddim():
  """n = 2: both steps are first order (warm-up and final), i.e. DDIM eta = 0, bit for bit up to round-off."""
  mu, s = torch.tensor([0.3, -0.2]), torch.tensor([0.5, 1.5])
  x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
  ddim = samplers.ddim(_diag_eps_fn(mu, s), SCHED, x, [700, 0])
  for solver in SOLVERS:
    torch.testing.assert_close(samplers.get_sampler(solver)(_diag_eps_fn(mu, s), SCHED, x, [700, 0]), ddim,
                               rtol=0, atol=1e-12)


def test_unipc_corrector_weights_solve_the_order_conditions():
  """rho of UniC-2 satisfy R rho = b (UniPC Eq. 10) with B(h) = expm1(-h)."""
  h, r = 0.37, -0.8
  rho = np.array(corrector_weights(2, h, r))
  hh = -h
  phi1 = math.expm1(hh) / hh - 1
  b = np.array([phi1, 2 * (phi1 / hh - 0.5)]) / math.expm1(hh)
  np.testing.assert_allclose(np.array([[1, 1], [r, 1]]) @ rho, b, rtol=1e-12)
  assert corrector_weights(1, h) == (0.5,)


# ----------------------------------------------------------------------------- convergence order
@pytest.mark.parametrize('method,order', [('ddim', 1), ('dpmpp_2m', 2), ('unipc', 3)])
def test_convergence_order_on_gaussian_data(method, order):
  """Against the exact ODE solution of Gaussian data the error falls as n^-order: DDIM first order,
  DPM-Solver++(2M) second (its paper), UniPC (UniP-2 + UniC) third (UniC raises the order by one)."""
  ns = (40, 80, 160)
  errs = [gaussian.ode_error(samplers.get_sampler(method), SCHED, n) for n in ns]
  slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
  assert abs(slope - order) < 0.35, f'{method}: errors {errs}, measured order {slope:.2f}'


def test_gaussian_flow_is_exact():
  """The closed-form flow is the ODE's: a 351-point UniPC from 400 to 50 lands within 1e-5 of it, and flow composes."""
  mu, sigma = gaussian.random_gaussian(4)
  flow = gaussian.flow(mu, sigma, SCHED)
  x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
  torch.testing.assert_close(flow(flow(x, 400, 200), 200, 50), flow(x, 400, 50), rtol=0, atol=1e-12)
  assert gaussian.ode_error(samplers.unipc, SCHED, 351, dim=4) < 1e-5
