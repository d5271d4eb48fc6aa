"""Training and sampling entry points; ``main.py`` dispatches here, notebooks and tests call them too.

Workdir layout (score_sde's):
  config.json                         the resolved config of the last run
  checkpoints/checkpoint_{k}.pth      snapshots every snapshot_freq steps (k = step // snapshot_freq)
  checkpoints-meta/checkpoint.pth     preemption checkpoint every snapshot_freq_for_preemption steps
  samples/step_{step}.png             EMA sample grid at each snapshot
  tensorboard/                        loss, lr, grad norm, eval loss
"""
import glob
import importlib
import logging
import os

import numpy as np
import torch
from tqdm.auto import tqdm

import datasets
import dist_util
import losses
import rng
import sde_lib
from configs.validation import validate_config
from models import utils as mutils
from models.ema import ExponentialMovingAverage

DEFAULT_SAMPLE_SEED = 1234  # snapshot grids always start from the same noise, so they compare across steps


def get_device(config):
  """'auto' -> CUDA when present, else CPU; 'cuda' without CUDA is an error."""
  if config.device == 'cuda' and not torch.cuda.is_available():
    raise ValueError('config.device="cuda" but CUDA is not available; use --config.device=cpu or auto')
  if config.device in ('auto', 'cuda') and torch.cuda.is_available():
    return torch.device('cuda', dist_util.local_rank())  # torchrun: one GPU per process
  return torch.device('cpu' if config.device == 'auto' else config.device)


def write_config(config, workdir, name='config.json'):
  """Writes the resolved config into the workdir (json; tuples become lists)."""
  os.makedirs(workdir, exist_ok=True)
  if not dist_util.is_main():
    return
  with open(os.path.join(workdir, name), 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def checkpoint_candidates(workdir):
  """Existing checkpoints of a workdir, newest first (by modification time)."""
  paths = glob.glob(os.path.join(workdir, 'checkpoints', 'checkpoint_*.pth'))
  meta = os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth')
  paths += [meta] if os.path.exists(meta) else []
  return sorted(paths, key=os.path.getmtime, reverse=True)


def restore_latest(workdir, model, ema, optimizer=None, device='cpu'):
  """Loads the newest readable checkpoint; a corrupt one is reported and the previous one used.

  Returns the step of the loaded checkpoint, or 0 when the workdir has none.
  """
  for path in checkpoint_candidates(workdir):
    try:
      step = mutils.load_checkpoint(path, model, ema, optimizer, map_location=device)
    except mutils.CheckpointError as err:
      logging.warning('skipping unreadable checkpoint %s: %s', path, err)
      continue
    logging.info('resumed from %s (step %d)', path, step)
    return step
  return 0


class _StepBatches(torch.utils.data.Sampler):
  """Batch indices as a pure function of (seed, step): epoch e is permutation(seed, e), drop_last.

  Starting at any step reproduces the exact data order of an uninterrupted run.
  """

  def __init__(self, num_items, batch_size, seed, start_step, rank=0, world_size=1):
    if num_items < batch_size:
      raise ValueError(f'training.batch_size={batch_size} exceeds the {num_items} training images; '
                       'lower --config.training.batch_size')
    self.n, self.b, self.seed, self.start = num_items, batch_size, seed, start_step
    self.per_epoch = num_items // batch_size
    self.rank, self.world = rank, world_size  # under torchrun each rank takes every world-th row

  def __iter__(self):
    step = self.start
    while True:
      epoch, k = divmod(step, self.per_epoch)
      perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(rng.sample_seed(self.seed, epoch)))
      for j in range(k, self.per_epoch):
        yield perm[j * self.b:(j + 1) * self.b][self.rank::self.world].tolist()
      step = (epoch + 1) * self.per_epoch


def _loader(config, dataset, batch_size, seed, start_step, shard=False):
  sampler = _StepBatches(len(dataset), batch_size, seed, start_step,
                         *((dist_util.rank(), dist_util.world_size()) if shard else (0, 1)))
  workers = config.training.num_workers
  return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                          persistent_workers=workers > 0))


def _flip(x, generator, enabled):
  """Random horizontal flip of half the batch (SPEC section 4), drawn from the step generator."""
  if not enabled:
    return x
  mask = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
  return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def build_state(config, device):
  """Model, EMA and optimiser for ``config``, on ``device``; the initial weights depend only on config.seed."""
  torch.manual_seed(config.seed)
  model = mutils.create_model(config).to(device)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  return model, ema, optimizer


def _rank_seed(config, stream):
  """Seed of one random stream (0 noise, 1 dropout, 4 flips) of this process: each torchrun rank draws its own
  numbers, and rank 0 is the single-process run."""
  return config.seed + stream + 7919 * dist_util.rank()


def _train_step(config, model, ema, optimizer, schedule, batch, step):
  """One update; every random draw comes from a generator seeded by (seed, step), so runs resume exactly."""
  gen = torch.Generator().manual_seed(rng.sample_seed(_rank_seed(config, 0), step))
  torch.manual_seed(rng.sample_seed(_rank_seed(config, 1), step))  # dropout masks
  model.train()
  loss = losses.ddpm_loss(model, schedule, batch, gen)
  if not torch.isfinite(loss):
    raise FloatingPointError(
        f'training loss is {loss.item()} at step {step}: stopping. The last good checkpoint is kept on disk and '
        'the run resumes from it; lower --config.optim.lr or check the data before resuming.')
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  grad_norm, lr = losses.optimization_step(config, optimizer, model.parameters(), step)
  ema.update(model.parameters())
  return loss.item(), grad_norm, lr


def _eval_loss(config, model, ema, schedule, eval_batches, step, device):
  """The eval-split loss with the EMA weights, at a fixed noise draw per eval batch."""
  x = next(eval_batches)[0].to(device)
  gen = torch.Generator().manual_seed(rng.sample_seed(config.seed + 2, step))
  ema.store(model.parameters())
  ema.copy_to(model.parameters())
  model.eval()
  with torch.no_grad():
    loss = losses.ddpm_loss(model, schedule, datasets.get_data_scaler(config)(x), gen).item()
  ema.restore(model.parameters())
  return loss


def _save(workdir, config, model, ema, optimizer, step, meta_only):
  if not dist_util.is_main():
    return
  model = dist_util.unwrap(model)
  mutils.save_checkpoint(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'), model, ema, optimizer, step)
  if not meta_only:
    path = os.path.join(workdir, 'checkpoints', f'checkpoint_{step // config.training.snapshot_freq}.pth')
    mutils.save_checkpoint(path, model, ema, optimizer, step)


def train(config, workdir):
  """Trains the DDPM of ``config`` in ``workdir``; resumes from the newest checkpoint if there is one."""
  validate_config(config)
  dist_util.init()
  device, main = get_device(config), dist_util.is_main()
  if config.training.batch_size % dist_util.world_size():
    raise ValueError(f'training.batch_size={config.training.batch_size} must be divisible by the number of '
                     f'processes ({dist_util.world_size()})')
  write_config(config, workdir)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  model, ema, optimizer = build_state(config, device)
  step = restore_latest(workdir, model, ema, optimizer, device)
  n_iters, tc = config.training.n_iters, config.training
  if step >= n_iters:
    logging.info('training already finished at step %d (n_iters=%d)', step, n_iters)
    return model, ema
  scaler = datasets.get_data_scaler(config)
  train_ds = datasets.get_dataset(config, 'train')
  eval_ds = datasets.get_dataset(config, 'eval')
  batches = _loader(config, train_ds, tc.batch_size, config.seed, step, shard=True)
  ddp_model = dist_util.wrap_model(model)
  eval_batches = _loader(config, eval_ds, min(tc.batch_size, len(eval_ds)), config.seed + 3, 0)
  from torch.utils.tensorboard import SummaryWriter
  writer = SummaryWriter(os.path.join(workdir, 'tensorboard')) if main else None
  pbar = tqdm(total=n_iters, initial=step, desc='train', dynamic_ncols=True, disable=not main)
  try:
    while step < n_iters:
      flip_gen = torch.Generator().manual_seed(rng.sample_seed(_rank_seed(config, 4), step))
      x = scaler(_flip(next(batches)[0], flip_gen, config.data.random_flip)).to(device)
      loss, grad_norm, lr = _train_step(config, ddp_model, ema, optimizer, schedule, x, step)
      step += 1
      pbar.update(1)
      if main and (step % tc.log_freq == 0 or step == n_iters):
        pbar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.2e}')
        for name, value in (('loss', loss), ('lr', lr), ('grad_norm', grad_norm)):
          writer.add_scalar(f'train/{name}', value, step)
      if main and step % tc.eval_freq == 0:
        writer.add_scalar('eval/loss', _eval_loss(config, model, ema, schedule, eval_batches, step, device), step)
      snapshot = step % tc.snapshot_freq == 0 or step == n_iters
      if snapshot or step % tc.snapshot_freq_for_preemption == 0:
        _save(workdir, config, model, ema, optimizer, step, meta_only=not snapshot)
      if main and snapshot and tc.snapshot_sampling:
        path = snapshot_grid(config, workdir, model, ema, schedule, step, device)
        writer.add_image('samples', _read_png(path), step, dataformats='HWC')
  finally:
    pbar.close()
    if writer is not None:
      writer.close()
  return model, ema


def _read_png(path):
  from PIL import Image
  return np.asarray(Image.open(path).convert('RGB'))


# ------------------------------------------------------------------------------------------ sampling
def sampler_options(method, sampling):
  """Keyword options of a sampler from ``config.sampling`` (eta < 0 keeps the method's default)."""
  if method == 'pndm':
    return {'variant': sampling.pndm_variant}
  if method == 'ddim' and sampling.eta >= 0:
    return {'eta': float(sampling.eta)}
  return {}


def sample_timesteps(config, method, num_steps, t_start, grid=None):
  """The descending grid of a run; the full ancestral ddpm when num_steps == t_start + 1."""
  from samplers import grids
  return grids.make_grid(grid or config.sampling.grid, num_steps, t_start, config.model.num_scales)


def generate(eps_fn, schedule, method, timesteps, initialiser, num_samples, batch_size, seed, device,
             inverse_scaler, options=None, progress=True, desc='sample'):
  """Draws ``num_samples`` images; sample i uses generator sample_seed(seed, i) for its start and step noise.

  Returns float32 numpy (N, C, H, W) in [0, 1] (clipped), independent of ``batch_size`` and, under torchrun, of
  the number of processes (each draws its share of the indices; every rank gets the gathered result).
  """
  from samplers import get_sampler
  sampler, out = get_sampler(method), []
  indices = dist_util.shard(range(num_samples))
  for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress or not dist_util.is_main(),
                    dynamic_ncols=True):
    gens = rng.per_sample_generators(seed, indices[start:start + batch_size])
    x_init = initialiser.sample(len(gens), gens).to(device, torch.float32)
    x0 = sampler(eps_fn, schedule, x_init, timesteps, generator=gens, **(options or {}))
    out.append(inverse_scaler(x0).clamp(0.0, 1.0).float().cpu().numpy())
  local = (np.concatenate(out) if out else
           np.zeros((0, *initialiser.sample(1, torch.Generator()).shape[1:]), np.float32))
  return dist_util.gather_ordered(local, indices, num_samples)


def save_grid(images, path, nrow=None):
  """Saves (N, C, H, W) float images in [0, 1] as one PNG grid (nearest-upscaled when tiny)."""
  import torchvision
  x = torch.as_tensor(images[:256])
  if x.shape[-1] < 32:
    x = torch.nn.functional.interpolate(x, scale_factor=max(1, 32 // x.shape[-1]), mode='nearest')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  torchvision.utils.save_image(x, path, nrow=nrow or int(np.ceil(np.sqrt(len(x)))), padding=2, pad_value=1.0)
  return path


def snapshot_grid(config, workdir, model, ema, schedule, step, device):
  """EMA sample grid of a training snapshot: the configured snapshot sampler from N(0, I) at T-1."""
  from samplers.initialisers import StandardNormal
  tc, T = config.training, config.model.num_scales
  method = tc.snapshot_sampler
  timesteps = sample_timesteps(config, method, min(tc.snapshot_num_steps, T), T - 1, grid='uniform')
  shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
  images = generate(mutils.ema_eps_fn(model, ema), schedule, method, timesteps, StandardNormal(shape, T - 1),
                    tc.snapshot_num_samples, tc.snapshot_num_samples, DEFAULT_SAMPLE_SEED, device,
                    datasets.get_data_inverse_scaler(config), progress=False)
  return save_grid(images, os.path.join(workdir, 'samples', f'step_{step}.png'))


def data_batches(config, split='train', batch_size=500, progress=True, desc='data'):
  """Model-space batches (B, C, H, W) of a whole split, in order, without flips (one pass)."""
  ds = datasets.get_dataset(config, split)
  loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False,
                                       num_workers=config.training.num_workers)
  scaler = datasets.get_data_scaler(config)
  for x, _ in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True):
    yield scaler(x)


def load_ema_module(config, workdir, device):
  """The U-Net with the EMA weights of the chosen checkpoint (config.sampling.checkpoint; -1 = newest), in eval
  mode and usable under autograd / torch.func. Returns (model, step); a missing checkpoint says how to make one."""
  model = mutils.create_model(config).to(device)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  index = config.sampling.checkpoint
  if index < 0:
    if not checkpoint_candidates(workdir):
      raise FileNotFoundError(f'no checkpoint in {os.path.abspath(workdir)}/checkpoints or checkpoints-meta: '
                              'train first (--mode=train) or point --workdir at a trained run')
    step = restore_latest(workdir, model, ema, device=device)
  else:
    path = os.path.join(workdir, 'checkpoints', f'checkpoint_{index}.pth')
    if not os.path.exists(path):
      found = sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, 'checkpoints', '*.pth')))
      raise FileNotFoundError(f'checkpoint {path} does not exist (config.sampling.checkpoint={index}); '
                              f'available: {found or "none"}')
    step = mutils.load_checkpoint(path, model, ema, map_location=device)
  ema.copy_to(model.parameters())
  return model.eval(), step


def load_ema_model(config, workdir, device):
  """eps function (x, t) -> eps of the EMA weights of the chosen checkpoint; returns (eps_fn, step)."""
  model, step = load_ema_module(config, workdir, device)
  return mutils.ema_eps_fn(model), step


def late_start_moments(config):
  """Data mean and covariance for the Gaussian late start, in model space.

  Reads config.sampling.moments_file if set (missing = error); otherwise the stats_dir default, which is
  computed with one streaming pass over the training split on first use and cached.
  """
  from samplers import initialisers
  d = config.data
  path = config.sampling.moments_file or initialisers.moments_path(config.sampling.stats_dir, d.dataset, d.image_size)
  if config.sampling.moments_file or os.path.exists(path):
    return initialisers.load_moments(path, d.dataset, d.image_size, d.num_channels)
  logging.info('late-start moments not found at %s: computing them (one pass over the training split)', path)
  moments = initialisers.compute_data_moments(data_batches(config, desc='late-start moments'))
  initialisers.save_moments(path, moments, d.dataset, d.image_size, d.num_channels)
  return moments


def build_initialiser(config, schedule, t_start, init=None, moments=None, cache=None):
  """StandardNormal at t_start, or the Gaussian late start fitted to the data (config.sampling.gls_*).

  cache: a dict the caller keeps across t_c values; the exact fit is then eigendecomposed once and re-timed
  with ``.at(t_start)`` (the Monte-Carlo fit is specific to its t_start and is always refitted).
  """
  from samplers import initialisers
  init = init or config.sampling.init
  shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
  if init == 'normal':
    return initialisers.StandardNormal(shape, t_start)
  s = config.sampling
  if cache is not None and s.gls_fit == 'exact':
    if 'gls' not in cache:
      cache['gls'] = build_initialiser(config, schedule, t_start, 'gls', moments)
    return cache['gls'].at(t_start)
  dtype = torch.float32 if s.gls_dtype == 'float32' else torch.float64
  if s.gls_fit == 'monte_carlo':  # the paper's fit: one noised copy of each image at t_start, then np.cov
    gen = torch.Generator().manual_seed(rng.sample_seed(config.seed, t_start))
    fit = initialisers.monte_carlo_moments(data_batches(config, desc='monte-carlo fit'), schedule, t_start, gen)
    return initialisers.GaussianLateStart.from_noised_moments(t_start, fit['mean'], fit['cov'], shape, dtype=dtype)
  moments = moments if moments is not None else late_start_moments(config)
  return initialisers.GaussianLateStart.from_moments(schedule, t_start, moments['mean'], moments['cov'], shape,
                                                     rank=s.gls_rank, dtype=dtype)


def default_sample_path(config, workdir):
  s = config.sampling
  return os.path.join(workdir, 'samples', f'{s.method}_n{s.num_steps}_{s.grid}_{s.init}_tc{s.t_start}'
                      f'_N{s.num_samples}_seed{config.seed}.npz')


def save_npz_atomic(path, **arrays):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def sample(config, workdir, sample_out=None):
  """--mode=sample: draws config.sampling.num_samples; writes samples.npz (float32 [0,1] NCHW) and a PNG grid."""
  from samplers import nfe
  validate_config(config)
  dist_util.init()
  s, device = config.sampling, get_device(config)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  timesteps = sample_timesteps(config, s.method, s.num_steps, s.t_start)  # bad grids fail here, before any work
  initialiser = build_initialiser(config, schedule, s.t_start)
  eps_fn, step = load_ema_model(config, workdir, device)
  options = sampler_options(s.method, s)
  images = generate(eps_fn, schedule, s.method, timesteps, initialiser, s.num_samples, s.batch_size, config.seed,
                    device, datasets.get_data_inverse_scaler(config), options)
  path = sample_out or default_sample_path(config, workdir)
  if not dist_util.is_main():
    return path
  save_npz_atomic(path, samples=images, timesteps=np.asarray(timesteps), step=step,
                  nfe=nfe(s.method, len(timesteps), **options))
  save_grid(images, os.path.splitext(path)[0] + '.png')
  logging.info('wrote %d samples to %s (%s, n=%d, NFE=%d, grid %s %s, init %s, checkpoint step %d)', len(images),
               path, s.method, len(timesteps), nfe(s.method, len(timesteps), **options), s.grid,
               list(np.asarray(timesteps)), s.init, step)
  return path


def gauss_stats(config, workdir):
  """--mode=gauss_stats: (re)computes the late-start moments file of the training split."""
  from samplers import initialisers
  d = config.data
  path = config.sampling.moments_file or initialisers.moments_path(config.sampling.stats_dir, d.dataset, d.image_size)
  moments = initialisers.compute_data_moments(data_batches(config, desc='late-start moments'))
  initialisers.save_moments(path, moments, d.dataset, d.image_size, d.num_channels)
  logging.info('wrote late-start moments of %d images to %s', moments['count'], path)
  return path


# ------------------------------------------------------------------------------------------ modes
def run_all(config, workdir):
  """--mode=all, the main job: train, then fid_stats (if missing), then the eval sweep; prints the table."""
  import eval_lib
  train(config, workdir)
  if dist_util.is_main() and not os.path.exists(eval_lib.fid_stats_path(config)):
    eval_lib.fid_stats(config, workdir)
  dist_util.barrier()  # under torchrun the other ranks wait for rank 0's statistics
  return eval_lib.evaluate(config, workdir)


def _lazy(module, name):
  """A mode implemented in another module, imported on use (keeps start-up and --help fast)."""
  def call(config, workdir, **kwargs):
    return getattr(importlib.import_module(module), name)(config, workdir, **kwargs)
  call.__name__ = name
  return call


# --mode=<key> -> function(config, workdir, **kwargs); main.py dispatches through this dict.
MODES = {
    'train': train,
    'sample': sample,
    'gauss_stats': gauss_stats,
    'fid_stats': _lazy('eval_lib', 'fid_stats'),
    'eval': _lazy('eval_lib', 'evaluate'),
    'all': run_all,
    'diversity': _lazy('analysis.ssb_experiments', 'diversity'),
    'potentials': _lazy('analysis.ssb_experiments', 'potentials'),
    'late_start_curve': _lazy('analysis.ssb_experiments', 'late_start_curve'),
    'predicted_tc': _lazy('analysis.ssb_experiments', 'predicted_tc'),
    'memorization': _lazy('analysis.gen_experiments', 'memorization'),
    'mem_score': _lazy('analysis.gen_experiments', 'mem_score'),
    'jacobian_rank': _lazy('analysis.gen_experiments', 'jacobian_rank'),
}
