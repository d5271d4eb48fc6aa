"""Training (--mode=train): the DDPM loop, resumable to the bit, on one process or under torchrun.

The workdir layout is owned by ``workdir.py``; sampling (the snapshot grids too) by ``sampling.py``.
"""
import contextlib
import logging
import signal

import numpy as np
import torch
from tqdm.auto import tqdm

import datasets
import dist_util
import io_util
import losses
import rng
import late_start
import sampling
from models import checkpoints
import sde_lib
import workdir as wd
from errors import ConfigError, InputError, Preempted, signal_handler
from models import utils as mutils
from models.ema import ExponentialMovingAverage

SNAPSHOT_SEED = 1234  # snapshot grids always start from the same noise, so they compare across steps


def write_config(config, workdir):
  """Writes the resolved config into the workdir (json; tuples become lists); rank 0 only."""
  if dist_util.is_main():
    io_util.write_text(wd.config_path(workdir), config.to_json_best_effort(indent=2, sort_keys=True))


def restore_for_training(config, workdir, model, ema, optimizer, device):
  """The step to resume from: the newest loadable checkpoint, or 0 in a fresh workdir.

  A workdir whose checkpoints all fail to load is refused (training would start over and later overwrite them),
  unless --config.training.restart_unreadable=True says to start over on purpose.
  """
  try:
    return checkpoints.restore_checkpoint(workdir, model, ema, optimizer, device)
  except mutils.CheckpointError as err:
    if not config.training.restart_unreadable:
      raise mutils.CheckpointError(f'{err} Training would start over and overwrite these files: fix the config '
                                   '(e.g. model.variant), move the files away, or pass '
                                   '--config.training.restart_unreadable=True to start from step 0 on purpose.')
    logging.warning('starting from step 0 although checkpoints exist (training.restart_unreadable): %s', err)
    return 0


class _StepBatches(torch.utils.data.Sampler):
  """Batch indices as a pure function of (seed, step): epoch e is permutation(seed, e), drop_last.

  Starting at any step reproduces the exact data order of an uninterrupted run.
  """

  def __init__(self, num_items, batch_size, seed, start_step, rank=0, world_size=1):
    if num_items < batch_size:
      raise ConfigError(f'training.batch_size={batch_size} exceeds the {num_items} training images; '
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


def _flip(x, generator, enabled, rows=(0, 1)):
  """Random horizontal flip of each image with probability 1/2 (docs/data.md), drawn from the step generator
  for the whole global batch; rows=(rank, world): x holds its rows rank, rank + world, ... (as ddpm_loss)."""
  if not enabled:
    return x
  rank, world = rows
  mask = (torch.rand(x.shape[0] * world, generator=generator) < 0.5)[rank::world].to(x.device)
  return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def build_state(config, device):
  """Model, EMA and optimiser for ``config``, on ``device``; the initial weights depend only on config.seed."""
  torch.manual_seed(config.seed)
  model = mutils.create_model(config).to(device)
  if config.model.channels_last:
    model.to(memory_format=torch.channels_last)  # NHWC conv weights; EMA shadows and Adam moments copy the layout
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  return model, ema, optimizer


def _rank_seed(config, stream):
  """Seed of a random stream of this process (1: dropout masks, drawn inside the model for this rank's rows
  only): each torchrun rank draws its own numbers, and rank 0 is the single-process run. The per-row streams
  (t and eps: seed + 0, flips: seed + 4) are the same on every rank and drawn for the global batch."""
  return config.seed + stream + 7919 * dist_util.rank()


def _train_step(config, model, ema, optimizer, schedule, batch, step):
  """One update; every random draw comes from a generator seeded by (seed, step), so runs resume exactly.

  ``model`` may be DDP-wrapped and/or torch.compile'd; its parameters are the plain module's. With
  training.precision='bf16' the forward pass and the loss run under bfloat16 autocast (the loss is float32,
  the backward pass and the update stay outside autocast, in fp32 weights). Under torchrun ``batch`` holds this
  rank's rows of the global batch; the returned loss is the whole global batch's (the mean over ranks).
  """
  gen = torch.Generator().manual_seed(rng.sample_seed(config.seed, step))  # t and eps of the global batch
  torch.manual_seed(rng.sample_seed(_rank_seed(config, 1), step))  # dropout masks
  rows = {'rows': (dist_util.rank(), dist_util.world_size())} if dist_util.world_size() > 1 else {}  # 1: plain call
  model.train()
  if config.model.channels_last:
    batch = batch.contiguous(memory_format=torch.channels_last)
  with mutils.autocast(batch.device, config.training.precision):
    loss = losses.ddpm_loss(model, schedule, batch, gen, **rows)
  global_loss = dist_util.mean_over_ranks(loss)  # the global batch's loss: a NaN on one rank stops every rank
  if not torch.isfinite(global_loss):
    raise FloatingPointError(f'training loss is {global_loss.item()} at step {step}: stopping.')
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  grad_norm, lr = losses.optimization_step(config, optimizer, model.parameters(), step)
  ema.update(model.parameters())
  return global_loss.item(), grad_norm, lr


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


def _check_finite(model, ema, step):
  """Refuses to go on (and so to save) when a weight or EMA weight is NaN or inf after the update of ``step``."""
  tensors = list(model.parameters()) + list(ema.shadow_params)
  if not all(bool(torch.isfinite(t).all()) for t in tensors):
    raise FloatingPointError(
        f'the weights became non-finite at step {step} (the loss was still finite): stopping without saving them.')


def _resume_advice(saved_step):
  """What a diverged run leaves behind and what to do, true to the workdir: ``saved_step`` is the step of the
  newest checkpoint on disk (all of them finite: non-finite weights are never saved), 0 when there is none."""
  fix = 'lower --config.optim.lr (or raise optim.warmup / lower optim.grad_clip) or check the data'
  if saved_step:
    return (f'The last good checkpoint (step {saved_step}) is kept on disk and the next run resumes from it; '
            f'{fix} before resuming.')
  return f'No checkpoint was written yet, so the next run starts from step 0; {fix} first.'


def _save(workdir, config, model, ema, optimizer, step, meta_only):
  if not dist_util.is_main():
    return
  model = dist_util.unwrap(model)
  mutils.save_checkpoint(wd.meta_checkpoint_path(workdir), model, ema, optimizer, step)
  if not meta_only:
    mutils.save_checkpoint(wd.checkpoint_path(workdir, step // config.training.snapshot_freq), model, ema,
                           optimizer, step)


def _start(config, workdir, device):
  """Checks, lock-free set-up and the resumed state: (schedule, model, ema, optimizer, step)."""
  if config.training.batch_size % dist_util.world_size():
    raise InputError(f'training.batch_size={config.training.batch_size} must be divisible by the number of '
                     f'processes ({dist_util.world_size()})')
  if dist_util.is_main():
    wd.ensure_writable(workdir)
    for folder in (wd.checkpoint_dir(workdir), wd.meta_dir(workdir)):
      wd.ensure_writable(folder, 'the checkpoint folder')  # before any step, not at the first save
      for path in io_util.remove_stale_tmp(folder):
        logging.warning('removed %s, left by a checkpoint write that was killed', path)
  dist_util.barrier()
  write_config(config, workdir)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  model, ema, optimizer = build_state(config, device)
  step = restore_for_training(config, workdir, model, ema, optimizer, device)
  _match_layout(model, ema, optimizer)
  logging.info('training precision %s (training.precision=%s)',
               mutils.resolve_precision(device, config.training.precision), config.training.precision)
  return schedule, model, ema, optimizer, step


def _match_layout(model, ema, optimizer):
  """Gives each EMA shadow and Adam moment its parameter's memory format (a checkpoint written with another
  model.channels_last keeps its strides when loaded); values are unchanged, fused updates stay on the fast path."""
  params = [p for p in model.parameters() if p.requires_grad]
  ema.shadow_params = [s if s.stride() == p.stride() else torch.empty_like(p).copy_(s)
                       for s, p in zip(ema.shadow_params, params)]
  for p in params:
    state = optimizer.state.get(p, {})
    for key, value in state.items():
      if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
        state[key] = torch.empty_like(p).copy_(value)


@contextlib.contextmanager
def _tf32(enabled):
  """training.tf32 on CUDA: TF32 matmuls and cuDNN convolutions for the training loop only; the previous flags
  come back afterwards, so FID features (evaluation.py turns TF32 off) and sampling never see it. False leaves
  PyTorch's settings as they are."""
  saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
  if enabled and torch.cuda.is_available():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  try:
    yield
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _step_model(model, compile_model):
  """The module the training step calls: ``model`` (DDP-wrapped under torchrun) or torch.compile of it (DDP
  first, then compile, as PyTorch's DDP + compile notes advise). Checkpoints always save the plain module.
  dynamic=False: a new shape or memory format recompiles for it (inductor failed on channels_last inputs with
  symbolic sizes in torch 2.14), and training has one shape."""
  return torch.compile(model, dynamic=False) if compile_model else model


@contextlib.contextmanager
def _stop_signals():
  """While training: SIGTERM and SIGINT (what SLURM and most schedulers send before they kill a job, and Ctrl-C) only
  record the signal, so the step in progress finishes and a checkpoint of it is written (``_train``); a second
  signal stops at once. The previous handlers come back afterwards. Yields the list of received signal numbers.
  Signal handlers can only be set in the main thread; elsewhere the signals keep their handlers."""
  received = []

  def handler(signum, frame):
    if received:
      raise Preempted(f'{signal.Signals(signum).name} again: stopped at once, without waiting for the checkpoint '
                      'of this step; the newest checkpoint on disk is kept and the next run resumes from it', signum)
    received.append(signum)
  with signal_handler(handler):
    yield received


def _stop_requested(received, device):
  """The signal to stop on, or 0; every rank agrees (a signal to any rank stops all of them after the same step)."""
  anyone = dist_util.mean_over_ranks(torch.tensor(float(bool(received)), device=device)).item() > 0
  return (received[0] if received else signal.SIGTERM) if anyone else 0


def train(config, workdir):
  """Trains the DDPM of ``config`` in ``workdir``; resumes from the newest checkpoint if there is one.

  Returns (model, ema). Only rank 0 writes; every rank resumes from the same checkpoint. On SIGTERM / SIGINT it
  writes the preemption checkpoint of the step in progress and raises errors.Preempted.
  """
  if config.model.get('pretrained'):
    raise ConfigError(f'config.model.pretrained={config.model.pretrained!r}: training starts from this code base\'s '
                      'own checkpoints, not from a diffusers folder; unset it to train (sample, eval and the analyses '
                      'use the folder)')
  with _tf32(config.training.tf32), _stop_signals() as received:
    return _train(config, workdir, received)


def _train(config, workdir, received=()):
  dist_util.init()
  device, main = dist_util.get_device(config), dist_util.is_main()
  schedule, model, ema, optimizer, step = _start(config, workdir, device)
  n_iters, tc = config.training.n_iters, config.training
  if step >= n_iters:
    logging.info('training already finished at step %d (n_iters=%d)', step, n_iters)
    return model, ema
  scaler = datasets.get_data_scaler(config)
  eval_ds = datasets.get_dataset(config, 'eval')
  batches = _loader(config, datasets.get_dataset(config, 'train'), tc.batch_size, config.seed, step, shard=True)
  ddp_model = _step_model(dist_util.wrap_model(model), tc.compile)
  eval_batches = _loader(config, eval_ds, min(tc.batch_size, len(eval_ds)), config.seed + 3, 0)
  from torch.utils.tensorboard import SummaryWriter
  writer = SummaryWriter(wd.tensorboard_dir(workdir)) if main else None
  pbar = tqdm(total=n_iters, initial=step, desc='train', dynamic_ncols=True, disable=not main)
  saved = step  # the newest checkpoint on disk (0: none yet)
  try:
    while step < n_iters:
      flip_gen = torch.Generator().manual_seed(rng.sample_seed(config.seed + 4, step))
      rows = dist_util.rank(), dist_util.world_size()
      x = scaler(_flip(next(batches)[0], flip_gen, config.data.random_flip, rows)).to(device)
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
        _check_finite(model, ema, step)
        _save(workdir, config, model, ema, optimizer, step, meta_only=not snapshot)
        saved = step
      if snapshot and tc.snapshot_sampling:  # every rank: generate() shares the samples out and gathers them
        path = snapshot_grid(config, workdir, model, ema, schedule, step, device)
        if main:
          writer.add_image('samples', _read_png(path), step, dataformats='HWC')
      signum = _stop_requested(received, device)
      if signum:
        if saved != step:
          _check_finite(model, ema, step)
          _save(workdir, config, model, ema, optimizer, step, meta_only=True)
        raise Preempted(f'{signal.Signals(signum).name} at step {step}: wrote {wd.meta_checkpoint_path(workdir)}; '
                        'run the same command again to resume from it', signum)
  except FloatingPointError as err:  # a diverged run: say what is on disk and what to do
    raise FloatingPointError(f'{err} {_resume_advice(saved)}') from None
  finally:
    pbar.close()
    if writer is not None:
      writer.close()
  return model, ema


def _read_png(path):
  from PIL import Image
  return np.asarray(Image.open(path).convert('RGB'))


def snapshot_grid(config, workdir, model, ema, schedule, step, device):
  """EMA sample grid of a training snapshot: the configured snapshot sampler from N(0, I), DDIM's uniform grid.

  Under torchrun every rank calls it (the samples are shared over the ranks); rank 0 writes the PNG, the other
  ranks return None."""
  tc, T = config.training, config.model.num_scales
  spec = sampling.RunSpec.from_config(config.sampling, method=tc.snapshot_sampler,
                                      num_steps=min(tc.snapshot_num_steps, T), init='normal', t_start=T - 1,
                                      grid='uniform')
  plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
  images = sampling.generate(mutils.ema_eps_fn(model, ema), schedule, plan, tc.snapshot_num_samples,
                             tc.snapshot_num_samples, SNAPSHOT_SEED, device, datasets.get_data_inverse_scaler(config),
                             progress=False)
  return sampling.save_grid(images, wd.snapshot_grid_path(workdir, step)) if dist_util.is_main() else None
