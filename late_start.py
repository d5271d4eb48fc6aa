"""The Gaussian late start of a config: its data moments (read, or computed in one streaming pass over the training
split and cached), the initialiser fitted to them (docs/late_start.md) and the automatic choice of t_c. The
mathematics lives in samplers/initialisers.py and samplers/auto_tc.py; this module feeds them the config's data,
so that sampling.py plans runs without reading the config."""
import logging
import os
import time

import torch

import datasets
import dist_util
import rng
import sampling
import workdir as wd
from errors import InputError
from moments import RunningMoments
import samplers
from samplers import auto_tc, gaussian_opt, grids, initialisers, low_rank_fit


def initialiser_factory(config, schedule, moments=None, cache=None):
  """make_initialiser(t_start, init) for sampling.sampling_plan: build_initialiser with this config's late-start
  fit, the data moments when the caller holds them, and a cache kept across t_c values (see build_initialiser)."""
  return lambda t_start, init: build_initialiser(config, schedule, t_start, init, moments, cache)


def check_moments_file(config, init=None):
  """Raises FileNotFoundError, before any work, when a gls run's sampling.moments_file does not exist."""
  s = config.sampling
  if (init or s.init) == 'gls' and s.gls_fit == 'exact' and s.moments_file and not os.path.exists(s.moments_file):
    raise FileNotFoundError(f'late-start moments file {s.moments_file} (sampling.moments_file) not found; write it '
                            'with --mode=gauss_stats or point sampling.moments_file at an existing file')


def build_initialiser(config, schedule, t_start, init=None, moments=None, cache=None):
  """StandardNormal at t_start, or the Gaussian late start fitted to the data (config.sampling.gls_*).

  cache: a dict the caller keeps across t_c values; the exact fit is then eigendecomposed once and re-timed
  with ``.at(t_start)`` (the Monte-Carlo fit is specific to its t_start and is always refitted).
  """
  init = init or config.sampling.init
  shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
  if init == 'normal':
    return initialisers.StandardNormal(shape, t_start)
  if init not in initialisers.INITS:
    raise InputError(f'sampling.init={init!r} is unknown; choose one of {initialisers.INITS}')
  s = config.sampling
  if cache is not None and s.gls_fit == 'exact':
    if 'gls' not in cache:
      cache['gls'] = build_initialiser(config, schedule, t_start, 'gls', moments)
    return cache['gls'].at(t_start)
  dtype = initialisers.GLS_DTYPES[s.gls_dtype]
  if s.gls_fit == 'monte_carlo':  # the paper's fit: one noised copy of each image at t_start, then the moments
    gen = torch.Generator().manual_seed(rng.sample_seed(config.seed, t_start))
    fit = initialisers.monte_carlo_moments(datasets.model_batches(config, desc='monte-carlo fit'), schedule,
                                           t_start, gen)
    return initialisers.GaussianLateStart.from_noised_moments(t_start, fit['mean'], fit['cov'], shape, dtype=dtype)
  moments = moments if moments is not None else late_start_moments(config)
  return initialisers.late_start_from_fit(schedule, t_start, moments, shape, rank=s.gls_rank, dtype=dtype)


def late_start_moments(config):
  """Data mean and covariance for the Gaussian late start, in model space.

  Reads config.sampling.moments_file if set (missing = error); otherwise the stats_dir default, which is
  computed with one streaming pass over the training split on first use and cached.
  """
  d, path = config.data, wd.moments_path(config)
  if config.sampling.moments_file or os.path.exists(path):
    return initialisers.load_moments(path, d.dataset, d.image_size, d.num_channels,
                                     fingerprint=datasets.data_fingerprint(config, 'train'))
  if dist_util.is_main():  # the pass is wasted if its file cannot be written: check the folder first
    wd.ensure_writable(os.path.dirname(os.path.abspath(path)), 'sampling.stats_dir')
  logging.info('late-start moments not found at %s: computing them (one pass over the training split)', path)
  return write_moments(config)


def write_moments(config):
  """Computes the late-start moments of the training split and writes them to ``workdir.moments_path``.

  Under torchrun every rank calls it: each streams its share of the batches, the sums are reduced (the result
  equals one process's to float64 rounding) and rank 0 writes the file. Returns dict(mean, cov, count).
  """
  d = config.data
  dim = d.num_channels * d.image_size ** 2
  if low_rank_fit.full_covariance_bytes(dim) > low_rank_fit.FULL_COVARIANCE_MAX_BYTES:  # the fit without the cov
    moments = low_rank_fit.streaming_low_rank(
        lambda: datasets.model_batches(config, desc='late-start rank-r fit', progress=dist_util.is_main()), dim,
        config.sampling.gls_rank)
  else:
    acc = RunningMoments(dim)
    for x in datasets.model_batches(config, desc='late-start moments', progress=dist_util.is_main(), shard=True):
      acc.update(x)
    moments = {'mean': acc.reduce().mean(), 'cov': acc.cov(), 'count': acc.n}
  if dist_util.is_main():
    initialisers.save_moments(wd.moments_path(config), moments, d.dataset, d.image_size, d.num_channels,
                              datasets.data_fingerprint(config, 'train'))
  dist_util.barrier()  # the file is there for every rank afterwards
  return moments


def _proxy(spec):
  """(name, options) of the deterministic sampler that stands in for spec.method on the fitted Gaussian
  (samplers.SAMPLERS' proxy): the spec's own options when it is the method itself, its defaults otherwise."""
  proxy = samplers.proxy(spec.method)
  return proxy, spec.kwargs if proxy == spec.method else {}


def choose_t_start(config, schedule, eps_fn, spec, moments=None, cache=None, device='cpu'):
  """t_c for ``spec`` (a sampling.RunSpec: its method, n, grid and options) from the two errors a late start
  trades (samplers/auto_tc.py), without a sweep.

  The late start's KL comes from the network's eps against the fitted Gaussian's on sampling.auto_tc_samples
  training images (the split's first ones, one noise draw each from config.seed) at every candidate t_c (multiples
  of sampling.auto_tc_stride, and T-1 = vanilla); the sampler's KL is exact on the fitted Gaussian. cache: a dict
  kept across calls (the eps measurement and the gls fit are made once). Returns dict(t_start, late_start_kl,
  solver_kl, total (each {t_c: nats}), proxy, network_calls, seconds): network_calls and seconds are the cost of
  this call (0 calls where the measurement came from the cache).
  """
  t0, s, T = time.time(), config.sampling, config.model.num_scales
  cache = {} if cache is None else cache
  if s.gls_fit != 'exact' or s.gls_rank != 0:
    raise InputError(f"sampling.t_start='auto' needs the full-covariance late start (sampling.gls_fit=exact, "
                     f'sampling.gls_rank=0), not gls_fit={s.gls_fit} gls_rank={s.gls_rank}')
  proxy, options = _proxy(spec)
  fit = build_initialiser(config, schedule, T - 1, 'gls', moments, cache)
  calls = 0
  if 'auto_tc_kl' not in cache:  # the network's part, shared by every (sampler, n)
    x0 = next(iter(datasets.model_batches(config, batch_size=int(s.auto_tc_samples), progress=False)))
    gen = torch.Generator().manual_seed(rng.sample_seed(config.seed, 0))
    times = auto_tc.candidates(T, 1, s.auto_tc_stride)
    gaps = auto_tc.eps_gap(lambda x, t: eps_fn(x.to(device), t).cpu(), fit, schedule, x0, times, gen)
    cache['auto_tc_kl'], calls = auto_tc.late_start_kl(schedule, gaps), len(x0) * len(times)
  late = cache['auto_tc_kl']
  sampler = samplers.get_sampler(proxy)
  solver = {}
  for t in auto_tc.candidates(T, spec.num_steps, s.auto_tc_stride):
    run = spec.replace(method=proxy, options=options, init='normal' if t == T - 1 else 'gls', t_start=t)
    timesteps = sampling.check_plan(run, schedule).timesteps
    solver[t] = auto_tc.solver_kl(sampler, options, schedule, fit, timesteps, vanilla=t == T - 1)
  total = {t: late[t] + solver[t] for t in solver}
  t_c = auto_tc.choose(total)
  logging.info('auto t_c for %s n=%d: %d (nats: %s)', spec.method, spec.num_steps, t_c,
               ', '.join(f'{t}: {late[t]:.3g}+{solver[t]:.3g}' for t in solver))
  return dict(t_start=int(t_c), late_start_kl={str(t): late[t] for t in solver},
              solver_kl={str(t): v for t, v in solver.items()}, total={str(t): v for t, v in total.items()},
              proxy=proxy, network_calls=int(calls), seconds=round(time.time() - t0, 2))


def resolve_grid(config, schedule, spec, moments=None, cache=None):
  """``spec`` with explicit timesteps when its grid is computed from the data (grids.DATA_GRIDS), else ``spec``.

  gaussian_opt: the n timesteps from spec.t_start that minimise the squared W2 error of the sampler (its
  deterministic proxy, samplers.SAMPLERS) on the data's fitted Gaussian (samplers/gaussian_opt.py), from pure noise
  (init normal) or from the exact noised Gaussian at t_c (gls). moments: the late-start data moments when the caller
  holds them (else read or computed, as late_start_moments); cache: a dict kept across cells (the eigenbasis is
  computed once, each grid once).
  """
  if spec.grid not in grids.DATA_GRIDS or spec.timesteps is not None:
    return spec
  cache = {} if cache is None else cache
  if 'gaussian_opt_basis' not in cache:
    moments = moments if moments is not None else late_start_moments(config)
    cache['gaussian_opt_basis'] = gaussian_opt.eigenbasis(moments['mean'], moments['cov'], schedule)
  m, lam = cache['gaussian_opt_basis']
  proxy, options = _proxy(spec)
  key = ('gaussian_opt', proxy, tuple(sorted(options.items())), spec.num_steps, spec.t_start, spec.init)
  if key not in cache:
    grid, error = gaussian_opt.optimise(samplers.get_sampler(proxy), options, schedule, m, lam, spec.num_steps,
                                        spec.t_start, spec.init == 'normal', schedule.T,
                                        schedule.beta.double().numpy())
    logging.info('gaussian_opt grid for %s n=%d from t=%d (%s): %s, squared W2 %.4g', proxy, spec.num_steps,
                 spec.t_start, spec.init, grid, error)
    cache[key] = grid
  return spec.replace(timesteps=cache[key])
