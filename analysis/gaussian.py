"""Gaussian data N(mu, Sigma), whose score is exact: the closed forms the samplers are checked against.

For x_t = sqrt(a) x0 + sqrt(1 - a) eps with a = alpha_bar(t), the marginal is N(sqrt(a) mu, a Sigma + (1 - a) I),
so the exact eps is sqrt(1 - a) (a Sigma + (1 - a) I)^-1 (x - sqrt(a) mu). Along each eigenvector of Sigma (eigenvalue
l) the probability-flow ODE keeps (x - sqrt(a) mu) / sqrt(a l + 1 - a) constant, which gives its exact solution
between any two times (docs/samplers.md, "Convergence order").
"""
import math

import torch

from samplers.trajectory import Trajectory


def random_gaussian(dim, seed=0):
  """A reproducible test problem: mu (dim,) and a well-conditioned Sigma (dim, dim), float64."""
  g = torch.Generator().manual_seed(seed)
  a = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
  mu = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
  return mu, 0.3 * a @ a.T + 0.01 * torch.eye(dim, dtype=torch.float64)


def eps_fn(mu, sigma, schedule):
  """The exact eps(x, t) of N(mu, sigma) under ``schedule``; x (B, dim) float64, t in [0, T-1] (may be fractional)."""
  eye = torch.eye(len(mu), dtype=torch.float64)

  def fn(x, t):
    a = float(schedule.alpha_bar(t))
    return math.sqrt(1 - a) * (x - math.sqrt(a) * mu) @ torch.linalg.inv(a * sigma + (1 - a) * eye)
  return fn


def flow(mu, sigma, schedule):
  """The exact probability-flow map flow(x, s, t): the state at time t of the ODE trajectory through x at time s
  (t = -1 is the data end, alpha_bar = 1)."""
  lam, vec = torch.linalg.eigh(sigma)

  def fn(x, s, t):
    a_s, a_t = float(schedule.alpha_bar(s)), float(schedule.alpha_bar(t))
    k = ((a_t * lam + 1 - a_t) / (a_s * lam + 1 - a_s)).sqrt()
    return math.sqrt(a_t) * mu + ((x - math.sqrt(a_s) * mu) @ vec * k) @ vec.T
  return fn


def ode_error(sampler, schedule, num_steps, t_start=400, t_end=50, dim=16, num=64, seed=0, **options):
  """Mean Euclidean error of a sampler's state at t_end against the exact flow from t_start, on the time-uniform
  grid of ``num_steps`` integer points from t_start to t_end, for ``num`` standard-normal starts (float64).

  The state at t_end is the sampler's trajectory entry there (before its final step to t = -1, which every
  sampler takes differently), so the number measures the ODE integration alone."""
  import numpy as np
  mu, sigma = random_gaussian(dim, seed)
  x = torch.randn(num, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
  grid = tuple(int(v) for v in np.linspace(t_end, t_start, num_steps).round()[::-1])
  traj = Trajectory()
  sampler(eps_fn(mu, sigma, schedule), schedule, x, grid, callback=traj, **options)
  exact = flow(mu, sigma, schedule)(x, t_start, t_end)
  return float((traj['x'][-1] - exact).pow(2).sum(1).sqrt().mean())
