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
"""
import math

import numpy as np

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


# sampling.grid -> grid function (num_steps, T, t_start): the one list of grid kinds (validation reads it).
GRIDS = {
    'late_start': lambda num_steps, T, t_start: late_start_grid(T - 1 if t_start is None else t_start, num_steps, T),
    'uniform': uniform_grid,
    'quad': quad_grid,
}
GRID_KINDS = tuple(GRIDS)


def make_grid(kind, num_steps, t_start=None, T=1000):
  """Dispatch on sampling.grid; ``t_start`` None means T-1. Returns a descending int tuple."""
  if kind not in GRIDS:
    raise ValueError(f'unknown sampling.grid {kind!r}; choose one of {GRID_KINDS}')
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
