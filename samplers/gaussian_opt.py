"""The `gaussian_opt` grid: the n timesteps that minimise a sampler's error on the data's fitted Gaussian, exactly.

Align Your Steps (Sabour et al. 2024) derives a schedule from an isotropic Gaussian; this one uses the data's own
spectrum. On Gaussian data N(m, Sigma) with its exact eps every deterministic sampler here is affine and acts on each
eigendirection of Sigma separately (samplers/auto_tc.py, ``output_moments``), so the distribution of its output is a
Gaussian known in closed form for any grid, with no network call.

The error measure is the squared 2-Wasserstein (Frechet) distance between that output Gaussian and the exact one,
in pixel units: sum over directions of (mean gap)^2 + (sd gap)^2. FID is the same distance between Inception
features; like FID it weighs a direction by its variance. The KL the auto t_c rule uses weighs each direction by
the inverse of its variance instead, and was found dominated by hundreds of near-degenerate directions that FID
does not see (docs/late_start.md), so it is not used here.

The search: grid[0] is fixed (T-1 from pure noise, t_c with the late start), the other n - 1 integer timesteps move
by coordinate descent (steps of 64 down to 1, each point kept strictly between its neighbours), starting from the
best of the `late_start`, `karras` and `logsnr` grids. Each evaluation is one sampler run on two D-vectors.
"""
import torch

from samplers import auto_tc, grids


def fitted_error(sampler, options, schedule, m, lam, timesteps, vanilla):
  """Squared W2 distance (pixel units) between the sampler's output and the exact output on N(m, diag(lam)).

  m, lam: (D,) float64 mean and covariance eigenvalues in the eigenbasis (lam clamped at auto_tc.noise_floor by the
  caller); timesteps: descending ints; vanilla: start from N(0, I) at timesteps[0], else from the exact noised data."""
  out_mean, out_var, exact_var = auto_tc.output_moments(sampler, options, schedule, m, lam, tuple(timesteps), vanilla)
  return float(((out_mean - m) ** 2).sum() + ((out_var.sqrt() - exact_var.sqrt()) ** 2).sum())


def _start_grids(num_steps, t_start, T, betas):
  found = []
  for kind in ('late_start', 'karras', 'logsnr'):
    try:
      found.append(grids.make_grid(kind, num_steps, t_start, T, betas=betas))
    except ValueError:  # a rule that repeats a timestep at this (n, t_start)
      continue
  return found


def optimise(sampler, options, schedule, m, lam, num_steps, t_start, vanilla, T=1000, betas=None, max_sweeps=20):
  """(grid, error): the descending int grid of ``num_steps`` points with grid[0] = t_start that minimises
  ``fitted_error`` by coordinate descent (module doc). The error is never above the best starting grid's."""
  score = lambda g: fitted_error(sampler, options, schedule, m, lam, g, vanilla)
  starts = _start_grids(num_steps, t_start, T, betas) or [grids.late_start_grid(t_start, num_steps, T)]
  grid = list(min(starts, key=score))
  best = score(grid)
  for _ in range(max_sweeps):
    improved = False
    for i in range(1, len(grid)):
      upper, lower = grid[i - 1] - 1, (grid[i + 1] + 1 if i + 1 < len(grid) else 0)
      for step in (64, 32, 16, 8, 4, 2, 1):
        for move in (-step, step):
          t = grid[i] + move
          if lower <= t <= upper:
            trial = grid[:i] + [t] + grid[i + 1:]
            err = score(trial)
            if err < best:
              grid, best, improved = trial, err, True
    if not improved:
      break
  return tuple(grid), best


def eigenbasis(mean, cov, schedule):
  """(m, lam): the data mean in the eigenbasis of its covariance and the eigenvalues clamped at the schedule's
  noise floor, float64, from mean (D,) and cov (D, D) in model space."""
  lam, vecs = torch.linalg.eigh(torch.as_tensor(cov, dtype=torch.float64))
  m = vecs.T @ torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
  return m, lam.clamp(min=auto_tc.noise_floor(schedule))
