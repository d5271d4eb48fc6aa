"""A trained model's weights from a workdir or a diffusers folder: checkpoint discovery and restore (newest loadable
first), the EMA U-Net, and the EMA U-Net as an eps function for the samplers (training resumes through
restore_checkpoint; every sampler run loads through load_eps_fn)."""
import logging
import os

import workdir as wd
from models import diffusers_io
from models import utils as mutils
from models.ema import ExponentialMovingAverage


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
