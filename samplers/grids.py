"""Time grids for the samplers (docs/samplers.md, "Time grids"): the one documented place for them.

Every grid is a descending tuple of distinct integer timesteps in [0, T-1]; grid[0] is the
start time (the state ``x_init`` lives there) and a sampler steps over the pairs
(grid[i], grid[i+1]) followed by (grid[-1], -1), so a grid of n entries costs n eps calls
for DDIM / fast DDPM. Results tables cite the grid by these names:

* ``late_start`` -- SSB's fast-sampler grid: ``linspace(0, t_start, n)`` cast to int,
  descending. n = 5, t_start = 999 gives (999, 749, 499, 249, 0). The first network call is at
  t_start itself (t_c of the Gaussian late start) and the last at t = 0.
* ``uniform`` -- DDIM's (Song et al. 2021) ``arange(0, T, T // n)``, descending; with t_start
  given the range is [0, t_start] instead of [0, T-1] (``arange(0, t_start + 1,
  (t_start + 1) // n)``). When (t_start+1) is not divisible by n the arange has more than n
  entries (1000 // 3 = 333 gives 4); we keep its first n entries so that n is always the step
  count. The first call is therefore at (n-1) * skip, not at t_start: e.g. n = 10 -> 900.
* ``quad`` -- DDIM's quadratic grid ``(linspace(0, sqrt(0.8 T), n) ** 2)`` cast to int,
  descending; with t_start the top is sqrt(0.8 (t_start + 1)). Dense near t = 0.

Three grids equal diffusers' ``timesteps`` for the 1000-step linear-beta DDPM from t_start = T-1
(tests/test_grids.py calls diffusers). With sigma(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t) and alpha_bar of
the linear betas ``linspace(beta_min / T, beta_max / T, T)`` (default 0.1 / 20, i.e. 1e-4 .. 0.02, as
sde_lib.DDPMSchedule; a caller may pass its own betas):

* ``karras`` -- Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models",
  Eq. 5 with rho = 7: sigma_i = (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, i = 0..n-1,
  s_max = sigma(t_start), s_min = sigma(0); each sigma_i is mapped to a time by linear interpolation of
  log sigma(t) between its integer neighbours, then rounded (diffusers'
  ``DPMSolverMultistepScheduler(use_karras_sigmas=True)``, ``_sigma_to_t``). First entry t_start, last 0;
  dense near t = 0. n = 5 from 999 gives (999, 843, 593, 142, 0).
* ``logsnr`` -- uniform in log sigma, i.e. in the log-SNR (lambda = -log sigma), between the same bounds
  (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around 10
  Steps", the "logSNR" time steps; diffusers' ``use_lu_lambdas=True``), mapped to times in the same way.
  n = 5 from 999 gives (999, 722, 302, 30, 0).
* ``trailing`` -- Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2
  (diffusers' ``DDIMScheduler(timestep_spacing="trailing")``): ``round(arange(top + 1, 0, -(top + 1) / n))
  - 1``, top = t_start. First entry t_start; the last is round((top + 1) / n) - 1, not 0. n = 5 from 999 gives
  (999, 799, 599, 399, 199).

The rounding of ``karras`` and ``logsnr`` repeats a time when steps near t = 0 are shorter than one
timestep (diffusers' own use_lu_lambdas list for n = 50 holds 1 twice): such a grid is refused with a
ValueError naming sampling.num_steps, as every grid with a repeat is.
"""
import math

import numpy as np

import sde_lib

KARRAS_RHO = 7.0  # Karras et al. 2022, Eq. 5 and Table 1 ("rho = 7")


def _validate(num_steps, t_start, T):
  """Raises ValueError naming the config field when (num_steps, t_start, T) is impossible."""
  if int(T) < 1:
    raise ValueError(f'model.num_scales (T) must be >= 1, got {T}')
  if t_start is not None and not 0 <= int(t_start) <= T - 1:
    raise ValueError(f'sampling.t_start must be in [0, {T - 1}] (T = {T}), got {t_start}')
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f'sampling.num_steps must be an integer >= 1, got {num_steps}')
  top = T - 1 if t_start is None else int(t_start)
  if num_steps > top + 1:
    raise ValueError(f'sampling.num_steps = {num_steps} exceeds t_start + 1 = {top + 1}: the grid '
                     f'would repeat timesteps; lower sampling.num_steps or raise sampling.t_start')


def _finish(seq, kind):
  """Descending tuple of python ints; raises on duplicates (a grid must strictly decrease)."""
  seq = [int(s) for s in seq]
  out = tuple(sorted(seq, reverse=True))
  if len(set(out)) != len(out):
    raise ValueError(f'the {kind} grid {out} has duplicate timesteps; lower sampling.num_steps '
                     f'or use sampling.grid=late_start')
  return out


def late_start_grid(t_start, num_steps, T=1000):
  """SSB grid: linspace(0, t_start, num_steps) as ints, descending (first entry = t_start).

  Returns a tuple of num_steps ints in [0, t_start]. num_steps = 1 gives (t_start,).
  """
  _validate(num_steps, t_start, T)
  if num_steps == 1:
    return (int(t_start),)
  return _finish(np.linspace(0, int(t_start), int(num_steps)).astype(np.int64), 'late_start')


def uniform_grid(num_steps, T=1000, t_start=None):
  """DDIM uniform grid: arange(0, top + 1, (top + 1) // n)[:n] descending, top = t_start or T-1."""
  _validate(num_steps, t_start, T)
  top = T - 1 if t_start is None else int(t_start)
  skip = (top + 1) // int(num_steps)
  return _finish(np.arange(0, top + 1, skip)[:int(num_steps)], 'uniform')


def quad_grid(num_steps, T=1000, t_start=None):
  """DDIM quadratic grid: (linspace(0, sqrt(0.8 (top + 1)), n) ** 2) as ints, descending."""
  _validate(num_steps, t_start, T)
  top = T - 1 if t_start is None else int(t_start)
  seq = (np.linspace(0, math.sqrt(0.8 * (top + 1)), int(num_steps)) ** 2).astype(np.int64)
  return _finish(seq, 'quad')


def alpha_bar_table(T=1000, betas=None):
  """alpha_bar_t for t = 0..T-1, float64 (T,): cumprod(1 - betas); betas None means the default linear betas
  linspace(0.1 / T, 20 / T, T), bit for bit sde_lib.DDPMSchedule's table."""
  if betas is None:
    return sde_lib.DDPMSchedule(num_timesteps=int(T)).alpha_bar_table.numpy()
  betas = np.asarray(betas, dtype=np.float64)
  if betas.shape != (int(T),) or not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f'betas must be {int(T)} values in (0, 1) (T = model.num_scales), got shape {betas.shape}')
  return np.cumprod(1.0 - betas)


def sigma_to_t(sigma, log_sigmas):
  """Fractional times of ``sigma`` (m,): log sigma interpolated linearly between the integer neighbours in
  ``log_sigmas`` (T,) = log sigma(0..T-1), increasing; clipped to [0, T-1]. diffusers' ``_sigma_to_t``, the same
  float operations."""
  log_sigma = np.log(np.maximum(sigma, 1e-10))
  low = np.clip(np.searchsorted(log_sigmas, log_sigma, side='right') - 1, 0, len(log_sigmas) - 2)
  lo, hi = log_sigmas[low], log_sigmas[low + 1]
  w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
  return (1 - w) * low + w * (low + 1)


def _sigma_grid(num_steps, T, t_start, betas, kind, spacing):
  """Shared part of karras / logsnr: ``spacing(s_max, s_min, ramp)`` gives n sigmas (ramp = linspace(0, 1, n))
  from s_max = sigma(top) down to s_min = sigma(0); they are mapped to times by sigma_to_t and rounded."""
  _validate(num_steps, t_start, T)
  top = T - 1 if t_start is None else int(t_start)
  if num_steps == 1:
    return (top,)
  a = alpha_bar_table(T, betas)
  sigma = np.sqrt((1 - a) / a)
  sigmas = spacing(float(sigma[top]), float(sigma[0]), np.linspace(0, 1, int(num_steps)))
  return _finish(np.round(sigma_to_t(sigmas, np.log(sigma))), kind)


def _karras_sigmas(s_max, s_min, ramp):
  """Karras et al. 2022, Eq. 5: (s_max^(1/rho) + ramp (s_min^(1/rho) - s_max^(1/rho)))^rho, rho = 7."""
  hi, lo = s_max ** (1 / KARRAS_RHO), s_min ** (1 / KARRAS_RHO)
  return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def _log_uniform_sigmas(s_max, s_min, ramp):
  """Uniform in log sigma = -lambda (Lu et al. 2022, DPM-Solver, "logSNR" steps)."""
  hi, lo = math.log(s_max), math.log(s_min)
  return np.exp(hi + ramp * (lo - hi))


def karras_grid(num_steps, T=1000, t_start=None, betas=None):
  """Karras rho = 7 sigmas from sigma(top) to sigma(0) as rounded times, top = t_start or T-1 (module doc).

  Returns a descending tuple of num_steps ints, first top, last 0 (num_steps >= 2). betas: (T,) or None.
  """
  return _sigma_grid(num_steps, T, t_start, betas, 'karras', _karras_sigmas)


def logsnr_grid(num_steps, T=1000, t_start=None, betas=None):
  """Log-SNR-uniform sigmas from sigma(top) to sigma(0) as rounded times (module doc); as karras_grid."""
  return _sigma_grid(num_steps, T, t_start, betas, 'logsnr', _log_uniform_sigmas)


def trailing_grid(num_steps, T=1000, t_start=None):
  """Trailing spacing (Lin et al. 2024, Table 2): round(arange(top + 1, 0, -(top + 1) / n)) - 1, top = t_start
  or T-1. Returns a descending tuple of num_steps ints in [0, top], first top."""
  _validate(num_steps, t_start, T)
  top = T - 1 if t_start is None else int(t_start)
  seq = np.round(np.arange(top + 1, 0, -(top + 1) / int(num_steps)))[:int(num_steps)] - 1
  return _finish(seq, 'trailing')


# sampling.grid -> grid function (num_steps, T, t_start): the one list of grid kinds (validation reads it).
GRIDS = {
    'late_start': lambda num_steps, T, t_start: late_start_grid(T - 1 if t_start is None else t_start, num_steps, T),
    'uniform': uniform_grid,
    'quad': quad_grid,
    'karras': karras_grid,
    'logsnr': logsnr_grid,
    'trailing': trailing_grid,
}
GRID_KINDS = tuple(GRIDS)
SCHEDULE_GRIDS = ('karras', 'logsnr')  # the grids that depend on the betas (they take a ``betas`` keyword)
# Grids computed from the data's moments (samplers/gaussian_opt.py), resolved to explicit timesteps at the edge
# (late_start.resolve_grid) before a run is planned; make_grid cannot build them.
DATA_GRIDS = ('gaussian_opt',)
ALL_GRID_KINDS = GRID_KINDS + DATA_GRIDS  # what sampling.grid and eval.grids accept


def make_grid(kind, num_steps, t_start=None, T=1000, betas=None):
  """Dispatch on sampling.grid; ``t_start`` None means T-1. Returns a descending int tuple.

  betas: (T,) beta schedule for the SCHEDULE_GRIDS (None: the default linear betas); the other grids ignore it.
  """
  if kind in DATA_GRIDS:
    raise ValueError(f'sampling.grid={kind} is computed from the data moments: late_start.resolve_grid gives its '
                     'timesteps')
  if kind not in GRIDS:
    raise ValueError(f'unknown sampling.grid {kind!r}; choose one of {ALL_GRID_KINDS}')
  if kind in SCHEDULE_GRIDS:
    return GRIDS[kind](num_steps, T, t_start, betas=betas)
  return GRIDS[kind](num_steps, T, t_start)


def check_timesteps(timesteps, T):
  """Validates a sampler's grid; returns it as a list of python ints.

  timesteps: list / array / 1-D tensor, strictly descending, timesteps[0] <= T-1, last >= 0.
  """
  try:
    seq = [int(t) for t in (timesteps.tolist() if hasattr(timesteps, 'tolist') else timesteps)]
  except TypeError as e:
    raise ValueError(f'timesteps must be a 1-D sequence of ints, got {timesteps!r}') from e
  if not seq:
    raise ValueError('timesteps is empty; build it with samplers.grids.make_grid')
  if seq[0] > T - 1 or seq[-1] < 0:
    raise ValueError(f'timesteps must lie in [0, {T - 1}], got first {seq[0]} and last {seq[-1]}')
  if any(a <= b for a, b in zip(seq, seq[1:])):
    raise ValueError(f'timesteps must be strictly descending, got {seq}')
  return seq
