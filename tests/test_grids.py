"""The schedule-derived grids karras / logsnr / trailing (samplers/grids.py): equal to diffusers' own timesteps,
late starts, refusals, and every sampler's plan and run on them."""
import math

import numpy as np
import pytest
import torch

import sampling
import samplers
from configs.ddpm import digits
from errors import InputError
from samplers import grids
from sde_lib import DDPMSchedule

T = 1000
NEW_GRIDS = ('karras', 'logsnr', 'trailing')
SIGMA_GRIDS = {'karras': {'use_karras_sigmas': True}, 'logsnr': {'use_lu_lambdas': True}}


def _diffusers_timesteps(kind, n, num_train_timesteps=T):
  """diffusers' own ``timesteps`` for the linear-beta DDPM (1e-4 .. 0.02) as a python list."""
  diffusers = pytest.importorskip('diffusers')
  kw = {'num_train_timesteps': num_train_timesteps, 'beta_schedule': 'linear', 'beta_start': 1e-4, 'beta_end': 0.02}
  if kind == 'trailing':
    sched = diffusers.DDIMScheduler(timestep_spacing='trailing', **kw)
  else:
    sched = diffusers.DPMSolverMultistepScheduler(**SIGMA_GRIDS[kind], **kw)
  sched.set_timesteps(n)
  return sched.timesteps.tolist()


@pytest.mark.parametrize('kind', NEW_GRIDS)
@pytest.mark.parametrize('n', [3, 5, 10, 20, 50])
def test_grids_equal_diffusers_timesteps_from_t_max(kind, n):
  """From t_start = T-1 each grid is diffusers' list; the one list of these that repeats a time (use_lu_lambdas,
  n = 50: ..., 2, 1, 1, 0) is refused, since a grid must strictly decrease."""
  ref = _diffusers_timesteps(kind, n)
  if len(set(ref)) < len(ref):
    assert (kind, n) == ('logsnr', 50)
    with pytest.raises(ValueError, match='sampling.num_steps'):
      grids.make_grid(kind, n, T - 1, T)
    return
  assert grids.make_grid(kind, n, T - 1, T) == tuple(ref)
  assert grids.make_grid(kind, n) == tuple(ref)  # t_start None means T-1


@pytest.mark.parametrize('kind', sorted(SIGMA_GRIDS))
def test_sigma_grids_follow_diffusers_rule_for_every_n_given_its_float32_table(kind, monkeypatch):
  """Same rule for n = 2..100: diffusers computes alpha_bar in float32, we in float64 (as sde_lib), which moves
  a rounding tie by one for a few n (karras n = 18: 896 vs our 895); on diffusers' own table we agree always."""
  diffusers = pytest.importorskip('diffusers')
  table = diffusers.DPMSolverMultistepScheduler().alphas_cumprod.double().numpy()
  monkeypatch.setattr(grids, 'alpha_bar_table', lambda T, betas=None: table)
  for n in range(2, 101):
    ref = _diffusers_timesteps(kind, n)
    if len(set(ref)) < len(ref):
      with pytest.raises(ValueError, match='sampling.num_steps'):
        grids.make_grid(kind, n)
    else:
      assert grids.make_grid(kind, n) == tuple(ref), n


def test_trailing_equals_diffusers_for_every_n():
  """For some n (61, 103, ...) diffusers' float arange yields n + 1 entries, the last -1; we keep the first n."""
  for n in range(1, 201):
    ref = _diffusers_timesteps('trailing', n)
    assert grids.make_grid('trailing', n) == tuple(ref[:n]), n
    assert ref[n:] in ([], [-1]), n


def test_default_alpha_bar_is_the_schedules_and_betas_can_be_passed():
  for t_max in (1000, 333, 7):
    np.testing.assert_array_equal(grids.alpha_bar_table(t_max), DDPMSchedule(num_timesteps=t_max).alpha_bar_table)
  beta = DDPMSchedule(0.1, 20.0, T).beta.numpy()
  assert grids.make_grid('karras', 10, 999, T, betas=beta) == grids.make_grid('karras', 10, 999, T)
  other = DDPMSchedule(0.1, 10.0, T).beta.numpy()  # a different schedule maps sigma to other times
  assert grids.make_grid('karras', 10, 999, T, betas=other) != grids.make_grid('karras', 10, 999, T)
  assert grids.make_grid('uniform', 10, 999, T, betas=other) == grids.make_grid('uniform', 10, 999, T)
  with pytest.raises(ValueError, match='betas must be 1000 values'):
    grids.make_grid('logsnr', 10, 999, T, betas=beta[:-1])


def _diffusers_sigma_rule(kind, n, t_start):
  """diffusers' own helpers (_convert_to_karras / _convert_to_lu, _sigma_to_t) run between sigma(t_start) and
  sigma(0) on our float64 table: the reference for a late start."""
  diffusers = pytest.importorskip('diffusers')
  sched = diffusers.DPMSolverMultistepScheduler()
  a = grids.alpha_bar_table(T)
  sigma = np.sqrt((1 - a) / a)
  log_sigmas = np.log(sigma)
  if kind == 'karras':
    sigmas = sched._convert_to_karras(in_sigmas=sigma[:t_start + 1][::-1].copy(), num_inference_steps=n)
  else:
    sigmas = np.exp(sched._convert_to_lu(in_lambdas=log_sigmas[:t_start + 1][::-1].copy(), num_inference_steps=n))
  return tuple(int(t) for t in np.round([sched._sigma_to_t(s, log_sigmas) for s in sigmas]))


@pytest.mark.parametrize('kind', NEW_GRIDS)
@pytest.mark.parametrize('t_start', [1, 37, 200, 400, 600, 998])
@pytest.mark.parametrize('n', [2, 3, 5, 10, 20])
def test_late_start_runs_the_same_rule_below_t_start_and_starts_there(kind, t_start, n):
  if n > t_start + 1:
    return
  if kind == 'trailing':  # the top at t_start: diffusers' rule for a chain of t_start + 1 steps
    ref = tuple(_diffusers_timesteps('trailing', n, t_start + 1)[:n])
  else:
    ref = _diffusers_sigma_rule(kind, n, t_start)
  if len(set(ref)) < len(ref):
    with pytest.raises(ValueError, match='sampling.num_steps'):
      grids.make_grid(kind, n, t_start, T)
    return
  grid = grids.make_grid(kind, n, t_start, T)
  assert grid == ref and grid[0] == t_start and len(grid) == n


@pytest.mark.parametrize('kind', NEW_GRIDS)
def test_every_late_start_grid_starts_at_t_start_or_is_refused(kind):
  for t_start in range(0, T, 3):
    for n in (1, 2, 3, 5, 10):
      if n > t_start + 1:
        continue
      try:
        grid = grids.make_grid(kind, n, t_start, T)
      except ValueError as err:
        assert 'sampling.num_steps' in str(err) and '\n' not in str(err)
        continue
      assert grid[0] == t_start and len(grid) == n
      assert all(a > b for a, b in zip(grid, grid[1:])) and grid[-1] >= 0
      if kind != 'trailing' and n > 1:
        assert grid[-1] == 0


@pytest.mark.parametrize('kind,n,t_start', [('karras', 50, 100), ('logsnr', 50, 999), ('karras', 10, 12)])
def test_a_repeating_rule_is_refused_in_one_line_naming_num_steps(kind, n, t_start):
  with pytest.raises(ValueError, match=rf'the {kind} grid .* duplicate timesteps; lower sampling.num_steps') as err:
    grids.make_grid(kind, n, t_start, T)
  assert '\n' not in str(err.value)
  config = digits.get_config()
  config.sampling.grid = kind
  with pytest.raises(InputError, match='sampling.num_steps'):  # the plan refuses it before any work
    sampling.check_plan(sampling.RunSpec.from_config(config.sampling, method='ddim', num_steps=n, init='normal',
                                                     t_start=t_start), DDPMSchedule.from_config(config))


@pytest.mark.parametrize('method', ['ddim', 'ddpm', 'dpmpp_2m', 'unipc', 'pndm'])
@pytest.mark.parametrize('kind', NEW_GRIDS)
@pytest.mark.parametrize('init,t_start', [('normal', 999), ('gls', 400)])
def test_every_sampler_builds_a_plan_on_the_new_grids(method, kind, init, t_start):
  """PNDM runs too: its Runge-Kutta warm-up uses the midpoint (t + t')/2 of any step (fractional times use the
  log-linear alpha_bar, docs/samplers.md), so it is defined on every grid."""
  config = digits.get_config()
  config.sampling.grid = kind
  spec = sampling.RunSpec.from_config(config.sampling, method=method, num_steps=10, init=init, t_start=t_start)
  plan = sampling.check_plan(spec, DDPMSchedule.from_config(config))
  assert plan.timesteps == grids.make_grid(kind, 10, t_start, T) and plan.timesteps[0] == t_start
  assert plan.nfe == samplers.nfe(method, 10, **plan.options)


def _gaussian_eps(mu, s, schedule):
  """Exact eps of N(mu, diag(s^2)) (float64)."""
  def eps_fn(x, t):
    a = float(schedule.alpha_bar(t))
    return (x - math.sqrt(a) * mu) * math.sqrt(1 - a) / (a * s ** 2 + 1 - a)
  return eps_fn


@pytest.mark.parametrize('method', sorted(samplers.SAMPLERS))
@pytest.mark.parametrize('kind', NEW_GRIDS)
def test_every_sampler_runs_on_the_new_grids(method, kind):
  """One run per sampler and grid on the exact eps of N(mu, diag(s^2)) data: finite output, NFE network calls,
  and a sample mean near mu (64 samples, x_init the same draw for all)."""
  schedule = DDPMSchedule()
  mu, s = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.2, 0.1, 0.3])
  x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
  calls = []
  eps = _gaussian_eps(mu, s, schedule)
  timesteps = grids.make_grid(kind, 10, 999, T)
  gen = torch.Generator().manual_seed(1)
  out = samplers.get_sampler(method)(lambda x, t: calls.append(t) or eps(x, t), schedule, x, timesteps, generator=gen)
  assert torch.isfinite(out).all() and len(calls) == samplers.nfe(method, 10)
  assert (out.mean(0) - mu).abs().max() < 0.15
