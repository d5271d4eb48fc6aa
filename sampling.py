"""One home for planning and drawing samples: the sampling plan, the auto t_c choice and the sample loop. The
weights come from models/checkpoints.py, the late start's moments and fit from late_start.py, and the sampling
modes (--mode=sample, gauss_stats, export_diffusers) live in sample_lib.py.

A *plan* (``sampling_plan``) is everything a sampler run needs, built in one place so that the grid and the
initial state can never disagree: the descending timesteps, the initialiser drawn at ``timesteps[0]``, the
sampler function with its options, and the NFE. Every caller (the sample mode, training snapshots, the eval
sweep, the SSB and GEN experiments, the benchmarks) builds its runs here.

Grids and start times (docs/samplers.md, "Time grids"): ``late_start`` starts at t_start by construction.
DDIM's ``uniform`` and ``quad`` grids take t_start as the top of their range and usually start below it
(n = 3, t_start = 200 gives (134, 67, 0)). A vanilla start N(0, I) carries no time, so it is drawn at the grid's
first time, as DDIM does. A Gaussian late start is a state *at* t_c: when the grid does not start at t_start
the plan is refused before any work, with a message that names the grid and both times.
"""
import logging
import os
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

import datasets
import dist_util
import io_util
import late_start
import rng
import samplers
from errors import InputError
from samplers import auto_tc, get_sampler, grids, nfe as count_nfe


class SamplingPlan(NamedTuple):
  """What one sampler run needs. ``timesteps[0] == initialiser.t_start`` always holds."""
  method: str
  timesteps: tuple      # descending ints, the first is where x_init lives
  initialiser: object   # samplers.initialisers.StandardNormal or GaussianLateStart at timesteps[0]
  sampler: object       # samplers.SAMPLERS[method]
  options: dict         # sampler keyword options (eta, pndm variant)
  nfe: int              # network calls per sample

  @property
  def t_start(self):
    return self.timesteps[0]


def sampler_options(method, sampling):
  """Keyword options of a sampler from ``config.sampling`` (its record's rule: samplers.SAMPLERS)."""
  return samplers.options(method, sampling)


def sampling_plan(config, schedule, method=None, num_steps=None, init=None, t_start=None, grid=None,
                  timesteps=None, moments=None, cache=None, options=None):
  """The plan of one run; every argument left None comes from ``config.sampling``.

  timesteps: an explicit descending grid (overrides grid/num_steps/t_start; e.g. the potentials' grid).
  options: the sampler's keyword options (eta, pndm variant) when the caller fixes them, instead of
  sampler_options(method, config.sampling); the plan's NFE is counted with them.
  moments: the late-start data moments when the caller already holds them; cache: a dict kept across calls so
  that one eigendecomposition serves every t_c (exact gls fit only).
  Raises InputError before any work for an impossible grid or a gls start that is not the grid's first time.
  """
  init = init or config.sampling.init
  checked = check_plan(config, method, num_steps, init, t_start, grid, timesteps, options)
  initialiser = late_start.build_initialiser(config, schedule, checked.t_start, init, moments, cache)
  return SamplingPlan(checked.method, checked.timesteps, initialiser, checked.sampler, checked.options, checked.nfe)


def check_plan(config, method=None, num_steps=None, init=None, t_start=None, grid=None, timesteps=None,
               options=None):
  """Everything of ``sampling_plan`` except fitting the initialiser (which can be costly): the grid, the
  start-time rule, the sampler and its NFE. Returns a SamplingPlan whose initialiser is None."""
  s = config.sampling
  method, init = method or s.method, init or s.init
  t_start = s.t_start if t_start is None else int(t_start)
  grid = grid or s.grid
  timesteps_given = timesteps
  try:
    if timesteps is None:
      timesteps = grids.make_grid(grid, s.num_steps if num_steps is None else num_steps, t_start,
                                  config.model.num_scales, betas=_config_betas(config, grid))
      if init == 'gls' and timesteps[0] != t_start:
        raise InputError(
            f'sampling.grid={grid} with n={len(timesteps)} starts at t={timesteps[0]}, not at sampling.t_start='
            f'{t_start}: a Gaussian late start is a state at t_start, so the first step must be there. Use '
            f'--config.sampling.grid=late_start (it starts at t_start), or set --config.sampling.t_start='
            f'{timesteps[0]}')
    timesteps = tuple(grids.check_timesteps(timesteps, config.model.num_scales))
    sampler = get_sampler(method)
    if timesteps_given is None:
      samplers.check_grid(method, grid)
    options = sampler_options(method, s) if options is None else dict(options)
    count = count_nfe(method, len(timesteps), **options)
  except InputError:
    raise
  except ValueError as err:  # grid and sampler checks name the config field
    raise InputError(str(err)) from err
  if init == 'gls' and s.gls_fit == 'exact' and s.moments_file and not os.path.exists(s.moments_file):
    raise FileNotFoundError(f'late-start moments file {s.moments_file} (sampling.moments_file) not found; write it '
                            'with --mode=gauss_stats or point sampling.moments_file at an existing file')
  return SamplingPlan(method, timesteps, None, sampler, options, count)


def _config_betas(config, grid):
  """The config's beta schedule for the grids placed by noise level (karras, logsnr), None for the others."""
  if grid not in grids.SCHEDULE_GRIDS:
    return None
  from sde_lib import DDPMSchedule
  return DDPMSchedule.from_config(config).beta.double().numpy()


def choose_t_start(config, schedule, eps_fn, method, num_steps, grid=None, moments=None, cache=None, device='cpu'):
  """t_c for (method, num_steps) from the two errors a late start trades (samplers/auto_tc.py), without a sweep.

  The late start's KL comes from the network's eps against the fitted Gaussian's on sampling.auto_tc_samples
  training images (the split's first ones, one noise draw each from config.seed) at every candidate t_c (multiples
  of sampling.auto_tc_stride, and T-1 = vanilla); the sampler's KL is exact on the fitted Gaussian. cache: a dict
  kept across calls (the eps measurement and the gls fit are made once). Returns dict(t_start, late_start_kl,
  solver_kl, total (each {t_c: nats}), proxy, network_calls, seconds): network_calls and seconds are the cost of
  this call (0 calls where the measurement came from the cache).
  """
  import time
  t0, s, T = time.time(), config.sampling, config.model.num_scales
  cache = {} if cache is None else cache
  if s.gls_fit != 'exact' or s.gls_rank != 0:
    raise InputError(f"sampling.t_start='auto' needs the full-covariance late start (sampling.gls_fit=exact, "
                     f'sampling.gls_rank=0), not gls_fit={s.gls_fit} gls_rank={s.gls_rank}')
  proxy = samplers.proxy(method)
  options = {} if proxy != method else sampler_options(method, s)
  fit = late_start.build_initialiser(config, schedule, T - 1, 'gls', moments, cache)
  calls = 0
  if 'auto_tc_kl' not in cache:  # the network's part, shared by every (sampler, n)
    x0 = next(iter(datasets.model_batches(config, batch_size=int(s.auto_tc_samples), progress=False)))
    gen = torch.Generator().manual_seed(rng.sample_seed(config.seed, 0))
    times = auto_tc.candidates(T, 1, s.auto_tc_stride)
    gaps = auto_tc.eps_gap(lambda x, t: eps_fn(x.to(device), t).cpu(), fit, schedule, x0, times, gen)
    cache['auto_tc_kl'], calls = auto_tc.late_start_kl(schedule, gaps), len(x0) * len(times)
  late = cache['auto_tc_kl']
  sampler = get_sampler(proxy)
  solver = {}
  for t in auto_tc.candidates(T, num_steps, s.auto_tc_stride):
    timesteps = check_plan(config, proxy, num_steps, 'normal' if t == T - 1 else 'gls', t, grid, options=options)
    solver[t] = auto_tc.solver_kl(sampler, options, schedule, fit, timesteps.timesteps, vanilla=t == T - 1)
  total = {t: late[t] + solver[t] for t in solver}
  t_c = auto_tc.choose(total)
  logging.info('auto t_c for %s n=%d: %d (nats: %s)', method, num_steps, t_c,
               ', '.join(f'{t}: {late[t]:.3g}+{solver[t]:.3g}' for t in solver))
  return dict(t_start=int(t_c), late_start_kl={str(t): late[t] for t in solver},
              solver_kl={str(t): v for t, v in solver.items()}, total={str(t): v for t, v in total.items()},
              proxy=proxy, network_calls=int(calls), seconds=round(time.time() - t0, 2))


def generate(eps_fn, schedule, plan, num_samples, batch_size, seed, device, inverse_scaler, progress=True,
             desc='sample', callback=None):
  """Draws ``num_samples`` images with ``plan``; sample i uses generator sample_seed(seed, i) for its start and
  its step noise.

  Returns float32 numpy (N, C, H, W) in [0, 1] (clipped), independent of ``batch_size`` and, under torchrun,
  of the number of processes (each draws its share of the indices; every rank gets the gathered result).
  callback: the samplers' per-step callback(t, x, x0_pred) (samplers.trajectory), handed to every batch in turn;
  a samplers.trajectory.Trajectory of a one-batch run (num_samples <= batch_size, one process) holds its path.
  """
  out = []
  indices = dist_util.shard(range(num_samples))
  for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress or not dist_util.is_main(),
                    dynamic_ncols=True):
    gens = rng.per_sample_generators(seed, indices[start:start + batch_size])
    x_init = plan.initialiser.sample(len(gens), gens).to(device, torch.float32)
    x0 = plan.sampler(eps_fn, schedule, x_init, plan.timesteps, generator=gens,
                      callback=callback, **plan.options)
    out.append(inverse_scaler(x0).clamp(0.0, 1.0).float().cpu().numpy())
  shape = (0, *plan.initialiser.shape)
  images = dist_util.gather_ordered(np.concatenate(out) if out else np.zeros(shape, np.float32), indices,
                                    num_samples)
  return images


def save_grid(images, path, nrow=None):
  """Saves (N, C, H, W) float images in [0, 1] as one PNG grid (nearest-upscaled when tiny)."""
  import torchvision
  x = torch.as_tensor(images[:256])
  if x.shape[-1] < 32:
    x = torch.nn.functional.interpolate(x, scale_factor=max(1, 32 // x.shape[-1]), mode='nearest')
  nrow = nrow or int(np.ceil(np.sqrt(len(x))))
  return io_util.atomic_write(path, lambda f: torchvision.utils.save_image(x, f, format='png', nrow=nrow,
                                                                          padding=2, pad_value=1.0))


