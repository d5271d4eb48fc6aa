"""The sampling modes: --mode=sample (draw samples with the configured sampler and start; .npz + PNG grid),
--mode=gauss_stats (the late-start moments file) and --mode=export_diffusers (the EMA weights as a diffusers
DDPMPipeline folder with a model card)."""
import copy
import json
import logging
import os

import numpy as np

import datasets
import dist_util
import io_util
import late_start
import sampling
import workdir as wd
from errors import InputError
from models import diffusers_io
from models import checkpoints


def sample(config, workdir, sample_out=None):
  """--mode=sample: draws config.sampling.num_samples; writes samples.npz (float32 [0,1] NCHW) and a PNG grid."""
  s, device = config.sampling, dist_util.get_device(config)
  if dist_util.is_main():
    if sample_out:
      check_sample_out(sample_out)
    folder = os.path.dirname(os.path.abspath(sample_out)) if sample_out else wd.samples_dir(workdir)
    wd.ensure_writable(folder, 'the sample output folder')
  from sde_lib import DDPMSchedule
  schedule = DDPMSchedule.from_config(config)
  spec = sampling.RunSpec.from_config(s)  # the run, read from the config once
  auto = spec.t_start == 'auto'  # chosen below, once the model is loaded; the grid is checked at T-1 until then
  sampling.check_early(spec, schedule)  # bad grids fail before any work
  late_start.check_moments_file(config)
  eps_fn, step = checkpoints.load_eps_fn(config, workdir, device)
  extra = {}
  if auto:
    choice = late_start.choose_t_start(config, schedule, eps_fn, spec, device=device)
    config, spec = with_t_start(config, choice['t_start']), spec.replace(t_start=choice['t_start'])
    s, extra = config.sampling, {'auto_tc': json.dumps(choice)}
  spec = late_start.resolve_grid(config, schedule, spec)  # gaussian_opt: its timesteps from the data moments
  plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
  path = sample_out or wd.sample_path(config, workdir, step, plan.options)  # the name holds the checkpoint's step
  images = sampling.generate(eps_fn, schedule, plan, s.num_samples, s.batch_size, config.seed, device,
                    datasets.get_data_inverse_scaler(config))
  if not dist_util.is_main():
    return path
  io_util.save_npz(path, samples=images, timesteps=np.asarray(plan.timesteps), step=step, nfe=plan.nfe, **extra)
  sampling.save_grid(images, os.path.splitext(path)[0] + '.png')
  ts = list(plan.timesteps)  # a 1,000-step grid is not worth 4,000 characters of log: its ends say it
  shown = ts if len(ts) <= 12 else ts[:5] + ['...'] + ts[-5:]
  logging.info('wrote %d samples to %s (%s, n=%d, NFE=%d, grid %s [%s], init %s at t=%d, checkpoint step %d)',
               len(images), path, s.method, len(ts), plan.nfe, s.grid, ', '.join(map(str, shown)), s.init,
               plan.t_start, step)
  return path


def check_sample_out(path):
  """Refuses, before any work, a --sample_out that is not a .npz path or that would replace a file other than a
  sample file of this code base (an npz holding 'samples' and 'timesteps'); replacing one is logged."""
  if not path.endswith('.npz'):
    raise InputError(f'--sample_out={path} must end in .npz (the samples are written as an npz archive, the grid '
                     'beside it as .png)')
  if os.path.isdir(path):
    raise IsADirectoryError(f'--sample_out={path} is a folder; give a file path ending in .npz')
  if not os.path.exists(path):
    return
  try:
    with np.load(path) as f:
      ours = {'samples', 'timesteps'} <= set(f.files)
  except io_util.NPZ_ERRORS:
    ours = False
  if not ours:
    raise InputError(f'--sample_out={path} exists and is not a sample file of this code base; refusing to replace '
                     'it: choose another path or move the file away')
  logging.warning('--sample_out=%s exists (a sample file): it will be replaced', path)


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
  moments = late_start.write_moments(config)
  logging.info('wrote late-start moments of %d images to %s', moments['count'], path)
  return path


def export_diffusers(config, workdir):
  """--mode=export_diffusers: the EMA weights of the chosen checkpoint (sampling.checkpoint) as a diffusers
  DDPMPipeline folder, WORKDIR/diffusers (unet/ + scheduler/ + model_index.json); DDPMPipeline.from_pretrained
  loads it. Returns the folder."""
  diffusers_io.unet_config(config)  # a model diffusers cannot express is refused before anything is loaded
  folder = wd.diffusers_dir(workdir)
  wd.ensure_writable(folder, 'the export folder')
  model, step = checkpoints.load_ema_module(config, workdir, 'cpu')
  earlier = diffusers_io.exported_step(folder)
  if earlier not in (None, step):
    if not config.sampling.export_replace:
      raise InputError(f'{folder} holds the export of step {earlier}, not of step {step}: move it away, or pass '
                       '--config.sampling.export_replace=True to replace it')
    logging.warning('replacing the export of step %s in %s (sampling.export_replace)', earlier, folder)
  diffusers_io.export(model, config, folder, step=step)
  logging.info('wrote %s: the EMA weights of step %d as a diffusers DDPMPipeline (DDPMPipeline.from_pretrained)',
               folder, step)
  return folder
