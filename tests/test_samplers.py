"""Samplers and grids against closed forms (exact eps of Gaussian and two-point data), and the sampler registry.
PNDM's own tests (PLMS and F-PNDM against diffusers and the paper) are in test_pndm.py."""
import math
import os

import numpy as np
import pytest
import torch

import rng
import samplers
from samplers import grids
from samplers.ddim import ddim_coefficients
from samplers.initialisers import GaussianLateStart
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
  plan = sampling.check_plan(sampling.RunSpec.from_config(config.sampling), DDPMSchedule.from_config(config))
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
    sampling.check_plan(sampling.RunSpec('toy', 3, 999, 'normal', 'karras'), DDPMSchedule())
  assert sampling.check_plan(sampling.RunSpec('toy', 3, 999, 'normal', 'late_start'), DDPMSchedule()).nfe == 3
