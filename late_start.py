"""The Gaussian late start of a config: its data moments (read, or computed in one streaming pass over the training
split and cached) and the initialiser fitted to them (docs/late_start.md). samplers/initialisers.py holds the
mathematics; this module feeds it the config's data."""
import logging
import os

import torch

import datasets
import dist_util
import rng
import workdir as wd
from errors import InputError
from moments import RunningMoments
from samplers import initialisers, low_rank_fit


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
