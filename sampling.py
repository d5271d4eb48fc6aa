"""One home for sampling: the sampling plan, drawing samples, the EMA model as an eps function, the late-start
moments, and --mode=sample / --mode=gauss_stats.

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
import copy
import json
import logging
import os
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

import datasets
import dist_util
import io_util
import rng
import workdir as wd
from errors import InputError
from models import diffusers_io
from models import utils as mutils
from moments import RunningMoments
from models.ema import ExponentialMovingAverage
from samplers import auto_tc, get_sampler, grids, initialisers, low_rank_fit, nfe as count_nfe


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
  """Keyword options of a sampler from ``config.sampling`` (eta < 0 keeps the method's default)."""
  if method == 'pndm':
    return {'variant': sampling.pndm_variant}
  if method == 'ddim' and sampling.eta >= 0:
    return {'eta': float(sampling.eta)}
  return {}


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
  initialiser = build_initialiser(config, schedule, checked.t_start, init, moments, cache)
  return SamplingPlan(checked.method, checked.timesteps, initialiser, checked.sampler, checked.options, checked.nfe)


def check_plan(config, method=None, num_steps=None, init=None, t_start=None, grid=None, timesteps=None,
               options=None):
  """Everything of ``sampling_plan`` except fitting the initialiser (which can be costly): the grid, the
  start-time rule, the sampler and its NFE. Returns a SamplingPlan whose initialiser is None."""
  s = config.sampling
  method, init = method or s.method, init or s.init
  t_start = s.t_start if t_start is None else int(t_start)
  grid = grid or s.grid
  try:
    if timesteps is None:
      timesteps = grids.make_grid(grid, s.num_steps if num_steps is None else num_steps, t_start,
                                  config.model.num_scales)
      if init == 'gls' and timesteps[0] != t_start:
        raise InputError(
            f'sampling.grid={grid} with n={len(timesteps)} starts at t={timesteps[0]}, not at sampling.t_start='
            f'{t_start}: a Gaussian late start is a state at t_start, so the first step must be there. Use '
            f'--config.sampling.grid=late_start (it starts at t_start), or set --config.sampling.t_start='
            f'{timesteps[0]}')
    timesteps = tuple(grids.check_timesteps(timesteps, config.model.num_scales))
    sampler = get_sampler(method)
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
  proxy = auto_tc.DETERMINISTIC_PROXY.get(method, method)
  options = {} if proxy != method else sampler_options(method, s)
  fit = build_initialiser(config, schedule, T - 1, 'gls', moments, cache)
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


# ------------------------------------------------------------------------------------------ weights
def restore_checkpoint(workdir, model, ema, optimizer=None, device='cpu', index=-1):
  """Loads a checkpoint of ``workdir`` into model/ema (and optimizer); returns its step, or 0 when there is none.

  index >= 0: exactly checkpoints/checkpoint_{index}.pth. index < 0: the highest step that loads; a newer file
  that does not load is skipped with a warning naming it. When checkpoints exist and none loads, raises the
  CheckpointError of the newest one (which says, e.g., that it fits the other U-Net variant): a run never goes on
  with random weights because its checkpoints could not be read.
  """
  if index >= 0:
    path = wd.checkpoint_path(workdir, index)
    if not os.path.exists(path):
      found = sorted(os.path.basename(p) for _, p in wd.checkpoints(workdir))
      raise FileNotFoundError(f'checkpoint {path} does not exist (config.sampling.checkpoint={index}); '
                              f'available: {found or "none"}')
    return mutils.load_checkpoint(path, model, ema, optimizer, map_location=device)
  errors, found = [], wd.checkpoints(workdir)
  for _, path in found:
    try:
      step = mutils.load_checkpoint(path, model, ema, optimizer, map_location=device)
    except mutils.CheckpointError as err:
      errors.append(err)
      continue
    for err in errors:
      logging.warning('skipped a newer checkpoint that does not load: %s', err)
    for unreadable in (p for s, p in found if s is None):
      logging.warning('skipped an unreadable checkpoint: %s', unreadable)
    logging.info('loaded %s (step %d)', path, step)
    return step
  if errors:
    raise mutils.CheckpointError(f'none of the {len(errors)} checkpoint file(s) in {os.path.abspath(workdir)} can '
                                 f'be loaded; the newest: {errors[0]}')
  return 0


def load_ema_module(config, workdir, device):
  """The U-Net with the EMA weights of the chosen checkpoint (config.sampling.checkpoint; -1 = newest), or of the
  diffusers folder config.model.pretrained, in eval mode and usable under autograd / torch.func. Returns (model,
  step); step is 0 for a diffusers folder. No loadable checkpoint is an error."""
  if config.model.get('pretrained'):  # a diffusers folder: its weights are the (EMA) weights; step 0
    model = diffusers_io.load_into(mutils.create_model(config), config.model.pretrained, config)
    return model.to(device).eval(), 0
  model = mutils.create_model(config).to(device)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  if config.sampling.checkpoint < 0 and not wd.checkpoints(workdir):
    raise FileNotFoundError(f'no checkpoint in {os.path.abspath(workdir)}/checkpoints or checkpoints-meta: '
                            'train first (--mode=train) or point --workdir at a trained run')
  step = restore_checkpoint(workdir, model, ema, device=device, index=config.sampling.checkpoint)
  ema.copy_to(model.parameters())
  return model.eval(), step


def load_eps_fn(config, workdir, device):
  """eps function (x, t) -> eps of the EMA weights of the chosen checkpoint; returns (eps_fn, step).

  The fast paths of config.eval (precision, compile) and config.model.channels_last apply; outputs are float32.
  """
  model, step = load_ema_module(config, workdir, device)
  return mutils.ema_eps_fn(model, precision=config.eval.precision, channels_last=config.model.channels_last,
                           compile=config.eval.compile), step


# ------------------------------------------------------------------------------------------ modes
def sample(config, workdir, sample_out=None):
  """--mode=sample: draws config.sampling.num_samples; writes samples.npz (float32 [0,1] NCHW) and a PNG grid."""
  s, device = config.sampling, dist_util.get_device(config)
  if dist_util.is_main():
    folder = os.path.dirname(os.path.abspath(sample_out)) if sample_out else wd.samples_dir(workdir)
    wd.ensure_writable(folder, 'the sample output folder')
  from sde_lib import DDPMSchedule
  schedule = DDPMSchedule.from_config(config)
  auto = s.t_start == 'auto'  # chosen below, once the model is loaded; the grid is checked at T-1 until then
  check_plan(config, t_start=config.model.num_scales - 1 if auto else None)  # bad grids fail before any work
  eps_fn, step = load_eps_fn(config, workdir, device)
  extra = {}
  if auto:
    choice = choose_t_start(config, schedule, eps_fn, s.method, s.num_steps, device=device)
    config = with_t_start(config, choice['t_start'])
    s, extra = config.sampling, {'auto_tc': json.dumps(choice)}
  plan = sampling_plan(config, schedule)
  path = sample_out or wd.sample_path(config, workdir, step, plan.options)  # the name holds the checkpoint's step
  images = generate(eps_fn, schedule, plan, s.num_samples, s.batch_size, config.seed, device,
                    datasets.get_data_inverse_scaler(config))
  if not dist_util.is_main():
    return path
  io_util.save_npz(path, samples=images, timesteps=np.asarray(plan.timesteps), step=step, nfe=plan.nfe, **extra)
  save_grid(images, os.path.splitext(path)[0] + '.png')
  ts = list(plan.timesteps)  # a 1,000-step grid is not worth 4,000 characters of log: its ends say it
  shown = ts if len(ts) <= 12 else ts[:5] + ['...'] + ts[-5:]
  logging.info('wrote %d samples to %s (%s, n=%d, NFE=%d, grid %s [%s], init %s at t=%d, checkpoint step %d)',
               len(images), path, s.method, len(ts), plan.nfe, s.grid, ', '.join(map(str, shown)), s.init,
               plan.t_start, step)
  return path


def with_t_start(config, t_start):
  """A copy of ``config`` whose sampling.t_start is ``t_start`` (an auto choice made concrete)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.sampling.t_start = int(t_start)
  return config


def gauss_stats(config, workdir=None):
  """--mode=gauss_stats: (re)computes the late-start moments file of the training split."""
  path = wd.moments_path(config)
  wd.ensure_writable(os.path.dirname(os.path.abspath(path)), 'sampling.stats_dir')
  moments = write_moments(config)
  logging.info('wrote late-start moments of %d images to %s', moments['count'], path)
  return path


def export_diffusers(config, workdir):
  """--mode=export_diffusers: the EMA weights of the chosen checkpoint (sampling.checkpoint) as a diffusers
  DDPMPipeline folder, WORKDIR/diffusers (unet/ + scheduler/ + model_index.json); DDPMPipeline.from_pretrained
  loads it. Returns the folder."""
  diffusers_io.unet_config(config)  # a model diffusers cannot express is refused before anything is loaded
  folder = wd.diffusers_dir(workdir)
  wd.ensure_writable(folder, 'the export folder')
  model, step = load_ema_module(config, workdir, 'cpu')
  diffusers_io.export(model, config, folder)
  logging.info('wrote %s: the EMA weights of step %d as a diffusers DDPMPipeline (DDPMPipeline.from_pretrained)',
               folder, step)
  return folder
