"""Training and sampling entry points; ``main.py`` dispatches here, notebooks and tests call them too.

Workdir layout (score_sde's):
  config.json                         the resolved config of the last run
  checkpoints/checkpoint_{k}.pth      snapshots every snapshot_freq steps (k = step // snapshot_freq)
  checkpoints-meta/checkpoint.pth     preemption checkpoint every snapshot_freq_for_preemption steps
  samples/step_{step}.png             EMA sample grid at each snapshot
  tensorboard/                        loss, lr, grad norm, eval loss
"""
import glob
import json
import logging
import os

import numpy as np
import torch
from tqdm.auto import tqdm

import datasets
import losses
import rng
import sde_lib
from configs.validation import validate_config
from models import utils as mutils
from models.ema import ExponentialMovingAverage

DEFAULT_SAMPLE_SEED = 1234  # snapshot grids always start from the same noise, so they compare across steps


def get_device(config):
  """'auto' -> CUDA when present, else CPU; 'cuda' without CUDA is an error."""
  if config.device == 'auto':
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  if config.device == 'cuda' and not torch.cuda.is_available():
    raise ValueError('config.device="cuda" but CUDA is not available; use --config.device=cpu or auto')
  return torch.device(config.device)


def write_config(config, workdir, name='config.json'):
  """Writes the resolved config into the workdir (json; tuples become lists)."""
  os.makedirs(workdir, exist_ok=True)
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

  def __init__(self, num_items, batch_size, seed, start_step):
    if num_items < batch_size:
      raise ValueError(f'training.batch_size={batch_size} exceeds the {num_items} training images; '
                       'lower --config.training.batch_size')
    self.n, self.b, self.seed, self.start = num_items, batch_size, seed, start_step
    self.per_epoch = num_items // batch_size

  def __iter__(self):
    step = self.start
    while True:
      epoch, k = divmod(step, self.per_epoch)
      perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(rng.sample_seed(self.seed, epoch)))
      for j in range(k, self.per_epoch):
        yield perm[j * self.b:(j + 1) * self.b].tolist()
      step = (epoch + 1) * self.per_epoch


def _loader(config, dataset, batch_size, seed, start_step):
  sampler = _StepBatches(len(dataset), batch_size, seed, start_step)
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
  """Model, EMA and optimiser for ``config``, on ``device``."""
  model = mutils.create_model(config).to(device)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  return model, ema, optimizer


def _train_step(config, model, ema, optimizer, schedule, batch, step):
  """One update; every random draw comes from a generator seeded by (seed, step), so runs resume exactly."""
  gen = torch.Generator().manual_seed(rng.sample_seed(config.seed, step))
  torch.manual_seed(rng.sample_seed(config.seed + 1, step))  # dropout masks
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
  mutils.save_checkpoint(os.path.join(workdir, 'checkpoints-meta', 'checkpoint.pth'), model, ema, optimizer, step)
  if not meta_only:
    path = os.path.join(workdir, 'checkpoints', f'checkpoint_{step // config.training.snapshot_freq}.pth')
    mutils.save_checkpoint(path, model, ema, optimizer, step)


def train(config, workdir):
  """Trains the DDPM of ``config`` in ``workdir``; resumes from the newest checkpoint if there is one."""
  validate_config(config)
  device = get_device(config)
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
  batches = _loader(config, train_ds, tc.batch_size, config.seed, step)
  eval_batches = _loader(config, eval_ds, min(tc.batch_size, len(eval_ds)), config.seed + 3, 0)
  from torch.utils.tensorboard import SummaryWriter
  writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))
  pbar = tqdm(total=n_iters, initial=step, desc='train', dynamic_ncols=True)
  try:
    while step < n_iters:
      x = scaler(_flip(next(batches)[0], torch.Generator().manual_seed(rng.sample_seed(config.seed + 4, step)),
                       config.data.random_flip)).to(device)
      loss, grad_norm, lr = _train_step(config, model, ema, optimizer, schedule, x, step)
      step += 1
      pbar.update(1)
      if step % tc.log_freq == 0 or step == n_iters:
        pbar.set_postfix(loss=f'{loss:.4f}', lr=f'{lr:.2e}')
        for name, value in (('loss', loss), ('lr', lr), ('grad_norm', grad_norm)):
          writer.add_scalar(f'train/{name}', value, step)
      if step % tc.eval_freq == 0:
        writer.add_scalar('eval/loss', _eval_loss(config, model, ema, schedule, eval_batches, step, device), step)
      snapshot = step % tc.snapshot_freq == 0 or step == n_iters
      if snapshot or step % tc.snapshot_freq_for_preemption == 0:
        _save(workdir, config, model, ema, optimizer, step, meta_only=not snapshot)
      if snapshot and tc.snapshot_sampling:
        path = snapshot_grid(config, workdir, model, ema, schedule, step, device)
        writer.add_image('samples', _read_png(path), step, dataformats='HWC')
  finally:
    pbar.close()
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

  Returns float32 numpy (N, C, H, W) in [0, 1] (clipped), independent of ``batch_size``.
  """
  from samplers import get_sampler
  sampler, out = get_sampler(method), []
  for start in tqdm(range(0, num_samples, batch_size), desc=desc, disable=not progress, dynamic_ncols=True):
    gens = rng.per_sample_generators(seed, range(start, min(start + batch_size, num_samples)))
    x_init = initialiser.sample(len(gens), gens).to(device, torch.float32)
    x0 = sampler(eps_fn, schedule, x_init, timesteps, generator=gens, **(options or {}))
    out.append(inverse_scaler(x0).clamp(0.0, 1.0).float().cpu().numpy())
  return np.concatenate(out)


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
