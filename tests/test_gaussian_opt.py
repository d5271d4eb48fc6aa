"""samplers/gaussian_opt.py: the closed-form error of a sampler on Gaussian data against a Monte Carlo run, and the
grid search against a brute-force search on a lattice."""
import itertools

import pytest
import torch

from samplers import gaussian_opt, get_sampler, grids
from sde_lib import DDPMSchedule

SCHED = DDPMSchedule()
LAM = torch.tensor([1e-3, 0.01, 0.05, 0.1, 0.3, 0.6, 1.0, 2.0], dtype=torch.float64)
M = torch.linspace(-0.5, 0.5, 8, dtype=torch.float64)


def _exact_eps(x, t):
  a = float(SCHED.alpha_bar(float(t)))
  return (1 - a) ** 0.5 * (x - a ** 0.5 * M) / (a * LAM + 1 - a)


@pytest.mark.parametrize('method,vanilla', [('ddim', True), ('dpmpp_2m', True), ('unipc', False), ('pndm', False)])
def test_the_closed_form_error_equals_a_monte_carlo_run(method, vanilla):
  """Run the sampler on 100,000 draws of the start (N(0, I) or the exact noised data at t_start) with the exact eps;
  the output's per-direction moments give the same squared W2 as the closed form, within sampling error."""
  timesteps = grids.late_start_grid(999 if vanilla else 400, 5)
  options = {'variant': 'f-pndm'} if method == 'pndm' else {}
  closed = gaussian_opt.fitted_error(get_sampler(method), options, SCHED, M, LAM, timesteps, vanilla)
  gen = torch.Generator().manual_seed(0)
  z = torch.randn(100_000, 8, generator=gen, dtype=torch.float64)
  a = float(SCHED.alpha_bar(timesteps[0]))
  x = z if vanilla else a ** 0.5 * M + (a * LAM + 1 - a).sqrt() * z
  out = get_sampler(method)(_exact_eps, SCHED, x, timesteps, **options)
  a0 = float(SCHED.alpha_bar(0))
  exact_sd = (a0 * LAM ** 2 / (a0 * LAM + 1 - a0)).sqrt()
  mc = float(((out.mean(0) - M) ** 2).sum() + ((out.std(0) - exact_sd) ** 2).sum())
  assert closed > 1e-4 and abs(mc - closed) <= 0.02 * closed + 1e-4, (mc, closed)


def test_more_steps_lower_the_error():
  errs = [gaussian_opt.fitted_error(get_sampler('ddim'), {}, SCHED, M, LAM, grids.late_start_grid(999, n), True)
          for n in (3, 10, 100)]
  assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize('t_start,vanilla', [(999, True), (400, False)])
def test_the_search_beats_the_library_grids_and_a_lattice(t_start, vanilla):
  """n = 3: the coordinate descent ends no worse than every library grid and than the best grid on a lattice of
  multiples of 25 (exhaustive), and the grid starts at t_start and strictly descends."""
  sampler = get_sampler('ddim')
  grid, err = gaussian_opt.optimise(sampler, {}, SCHED, M, LAM, 3, t_start, vanilla)
  assert grid[0] == t_start and all(a > b for a, b in zip(grid, grid[1:])) and len(grid) == 3
  score = lambda g: gaussian_opt.fitted_error(sampler, {}, SCHED, M, LAM, g, vanilla)
  for kind in ('late_start', 'karras', 'logsnr', 'trailing', 'uniform'):
    g = grids.make_grid(kind, 3, t_start)
    if g[0] == t_start:
      assert err <= score(g) + 1e-12, kind
  lattice = [(t_start, a, b) for a, b in itertools.combinations(range(t_start - 1, -1, -25), 2)]
  assert err <= min(score(g) for g in lattice) * (1 + 1e-9)


def test_resolve_grid_gives_the_search_s_grid_once_per_cell(tiny_config, monkeypatch):
  """late_start.resolve_grid turns sampling.grid=gaussian_opt into the timesteps of gaussian_opt.optimise on the
  data's eigenbasis (the sampler's deterministic proxy: DDIM for fast DDPM), computes each grid once per cache, and
  leaves other grids alone; make_grid refuses the data grid in one line."""
  import late_start
  import numpy as np
  import sampling
  a = torch.randn(64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 8
  moments = {'mean': np.zeros(64), 'cov': (a @ a.T + 0.05 * torch.eye(64, dtype=torch.float64)).numpy()}
  calls = []
  real = gaussian_opt.optimise
  monkeypatch.setattr(gaussian_opt, 'optimise', lambda *a, **k: calls.append(a[0]) or real(*a, **k))
  spec = sampling.RunSpec.from_config(tiny_config.sampling, method='ddpm', num_steps=4, init='gls', t_start=300,
                                      grid='gaussian_opt')
  cache = {}
  resolved = late_start.resolve_grid(tiny_config, SCHED, spec, moments, cache)
  m, lam = gaussian_opt.eigenbasis(moments['mean'], moments['cov'], SCHED)
  want, _ = real(get_sampler('ddim'), {}, SCHED, m, lam, 4, 300, False, 1000, SCHED.beta.double().numpy())
  assert resolved.timesteps == want and resolved.key == spec.key and resolved.t_start == 300
  assert late_start.resolve_grid(tiny_config, SCHED, spec, moments, cache) == resolved and len(calls) == 1
  other = spec.replace(grid='karras')
  assert late_start.resolve_grid(tiny_config, SCHED, other, moments, cache) is other
  with pytest.raises(ValueError, match='gaussian_opt is computed from the data moments'):
    grids.make_grid('gaussian_opt', 4, 300)
