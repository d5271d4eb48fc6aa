"""Model creation, checkpoint I/O and the EMA eps-function wrapper (docs/model.md).

Checkpoints use the score_sde / SSB layout (docs/model.md, "Checkpoint format"):
  {'optimizer': opt.state_dict() or {}, 'model': {'module.' + key: tensor}, 'ema': ema.state_dict(), 'step': int}
"""
import copy
import functools
import os
import pickle
import re
import zipfile

import torch

import dist_util
import io_util
from errors import InputError, one_line
from models import ddpm

MODELS = {'ddpm': ddpm.DDPM}  # config.model.name -> class


class CheckpointError(InputError):
  """A checkpoint file is missing, corrupt, or does not fit the model."""


_NOT_A_CHECKPOINT = 'not a checkpoint (damaged or not a torch file); delete it or use an older one'


def get_model(name):
  """The model class for config.model.name (one explicit table; models/ddpm.py defines the U-Net)."""
  if name not in MODELS:
    raise InputError(f'config.model.name={name!r} is unknown; use one of {sorted(MODELS)}')
  return MODELS[name]


def create_model(config):
  """Build the (unwrapped, CPU) model named by config.model.name; variant by config.model.variant."""
  model_cls = get_model(config.model.name)
  return model_cls(config)


def count_parameters(model):
  """Number of parameter elements (buffers such as `sigmas` excluded)."""
  return sum(p.numel() for p in model.parameters())


def save_checkpoint(path, model, ema, optimizer, step):
  """Atomically write a score_sde-layout checkpoint to `path` (temp file in the same folder, fsync, replace).

  model: bare or DataParallel-wrapped; keys are stored with the 'module.' prefix. optimizer may be None.
  """
  state = {
      'optimizer': optimizer.state_dict() if optimizer is not None else {},
      'model': {'module.' + k: v for k, v in dist_util.unwrap(model).state_dict().items()},
      'ema': ema.state_dict() if ema is not None else {},
      'step': int(step),
  }
  io_util.atomic_write(path, lambda f: torch.save(state, f))


def _read(path, map_location):
  """torch.load a checkpoint dict (weights only), turning every failure into a one-line CheckpointError.

  torch's own text is never passed on: it advises loading with weights_only=False, which runs whatever code the
  file holds."""
  if not os.path.isfile(path):
    raise CheckpointError(f'checkpoint file not found: {path}')
  try:
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
  except pickle.UnpicklingError as e:
    found = re.search(r'GLOBAL (\S+)', str(e))  # the weights-only unpickler met a class or function
    if found or 'must be imported to load' in str(e):
      what = f' ({found.group(1)})' if found else ''
      raise CheckpointError(f'{path} holds objects other than tensors{what}; refused (never loaded with '
                            'weights_only=False): it is not a checkpoint in the score_sde layout') from None
    raise CheckpointError(f'{path} is {_NOT_A_CHECKPOINT}') from None
  except OSError as e:  # the file itself cannot be read (permissions, I/O error)
    raise CheckpointError(f'cannot read checkpoint {path}: {e.strerror or one_line(e)}') from None
  # bytes that are not a torch file (or a truncated one): torch's zip reader raises RuntimeError, junk reaching
  # the weights-only unpickler EOFError, IndexError, KeyError, ValueError, ...
  except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, IndexError, KeyError):
    raise CheckpointError(f'{path} is {_NOT_A_CHECKPOINT}') from None
  if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict):
    found = sorted(map(str, ckpt))[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointError(f'{path} is not a checkpoint in the score_sde layout (a dict with "model", "ema", '
                          f'"optimizer", "step"); found {found}')
  return ckpt


def _model_state(ckpt_model, model):
  """Checkpoint 'model' entry -> state_dict for `model`: strip 'module.', reconcile the `sigmas` buffer."""
  state = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in ckpt_model.items()}
  own = model.state_dict()
  if 'sigmas' not in own:
    state.pop('sigmas', None)  # a ssb model has no sigmas buffer: ignore score_sde's
  elif 'sigmas' not in state:
    state['sigmas'] = own['sigmas']  # a score_sde model keeps its own
  return state


def _mismatch(state, own):
  """(missing, unexpected, wrong-shape) key lists of `state` against the reference state_dict `own`."""
  missing = [k for k in own if k not in state]
  unexpected = [k for k in state if k not in own]
  shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
  return missing, unexpected, shapes


def _other_variant_hint(state, model):
  """' This checkpoint fits model.variant=X: ...' if it fits the other DDPM variant, else ''."""
  config = getattr(model, '_config', None)
  if config is None or config.model.name != 'ddpm':
    return ''
  other = 'score_sde' if config.model.get('variant', 'ssb') == 'ssb' else 'ssb'
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.variant = other
  with torch.device('meta'):  # shapes only, no memory and no init cost
    other_model = get_model('ddpm')(config)
  other_state = _model_state(state, other_model)
  if not any(_mismatch(other_state, other_model.state_dict())):
    return f' This checkpoint fits model.variant={other}: set --config.model.variant={other}.'
  return ''


def _non_finite(tree, prefix=''):
  """Names of the floating-point tensors in a nested dict / list of tensors that hold a NaN or an inf."""
  if torch.is_tensor(tree):
    return [prefix or 'tensor'] if tree.is_floating_point() and not bool(torch.isfinite(tree).all()) else []
  items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
  return [name for key, value in items for name in _non_finite(value, f'{prefix}.{key}' if prefix else str(key))]


def load_checkpoint(path, model, ema=None, optimizer=None, map_location='cpu'):
  """Load a score_sde / SSB checkpoint into model (and ema, optimizer when given). Returns the step (int).

  Model keys may or may not carry 'module.'; the `sigmas` buffer may be present or absent.
  Raises CheckpointError for a missing, corrupt or foreign file, or one that does not fit the model.
  """
  ckpt = _read(path, map_location)
  bare = dist_util.unwrap(model)
  own = bare.state_dict()
  state = _model_state(ckpt['model'], bare)
  missing, unexpected, shapes = _mismatch(state, own)
  if missing or unexpected or shapes:
    parts = [f'{name} ({len(keys)}): {keys[:4]}' for name, keys in
             (('missing keys', missing), ('unexpected keys', unexpected), ('shape mismatches', shapes)) if keys]
    raise CheckpointError(f'checkpoint {path} does not fit this model; ' + '; '.join(parts) + '.'
                          + _other_variant_hint(state, bare))
  bad = _non_finite(state) + (_non_finite(ckpt.get('ema')) if ema is not None else [])
  if bad:  # bytes overwritten inside a file that still unpickles: as unreadable as a truncated one
    raise CheckpointError(f'checkpoint {path} holds non-finite weights ({len(bad)} tensor(s), e.g. {bad[:3]}): the '
                          'file is damaged; it is skipped for an older checkpoint where one loads')
  bare.load_state_dict(state, strict=True)
  if ema is not None:
    if not ckpt.get('ema'):
      raise CheckpointError(f'checkpoint {path} has no EMA weights ("ema" entry); load it without an ema')
    try:
      ema.load_state_dict(ckpt['ema'])
    except ValueError as e:
      raise CheckpointError(f'EMA weights in {path} do not fit this model: {e}') from e
  if optimizer is not None and ckpt.get('optimizer'):
    try:
      optimizer.load_state_dict(ckpt['optimizer'])
    except (ValueError, KeyError) as e:
      raise CheckpointError(f'optimizer state in {path} does not fit this optimizer: {e}') from e
  return int(ckpt.get('step', 0))


PRECISIONS = ('fp32', 'bf16', 'auto')  # config.training.precision / config.eval.precision


def native_bf16(device):
  """True where ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512_BF16 or
  AMX tiles (oneDNN then runs bf16 convolutions and matmuls directly; elsewhere it converts and is slower)."""
  device = torch.device(device)
  if device.type == 'cuda':
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
  if device.type != 'cpu':
    return False
  cpu = torch.cpu
  return bool(getattr(cpu, '_is_avx512_bf16_supported', lambda: False)()
              or getattr(cpu, '_is_amx_tile_supported', lambda: False)())


def resolve_precision(device, precision):
  """'auto' -> 'bf16' where ``device`` has native bf16 (``native_bf16``), else 'fp32'; other values unchanged."""
  if precision not in PRECISIONS:
    raise InputError(f'precision={precision!r} is unknown; use one of {PRECISIONS}')
  if precision == 'auto':
    return 'bf16' if native_bf16(device) else 'fp32'
  return precision


def autocast(device, precision):
  """Context for a forward pass in ``precision``: 'fp32' (a no-op context, the exact default), 'bf16'
  (torch.autocast to bfloat16 on ``device``'s type, CUDA or CPU; weights and gradients stay float32) or 'auto'
  (bf16 where the device computes it natively, fp32 elsewhere: ``resolve_precision``)."""
  import contextlib
  if resolve_precision(device, precision) == 'fp32':
    return contextlib.nullcontext()
  return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def ema_eps_fn(model, ema=None, precision='fp32', channels_last=False, compile=False):
  """eps_fn(x, t) evaluating a deep copy of `model` with the EMA weights, in eval mode, under inference_mode.

  x: (B, C, H, W) in model space [-1, 1]; t: python number, 0-d or (B,) tensor of timesteps in [0, T-1]
  (fractional allowed), broadcast to (B,) float32 on the model's device. Returns (B, C, H, W) float32 eps,
  contiguous. The copy is taken now: later training steps do not change the returned function.
  Fast paths (config.eval.*; the defaults are the exact fp32 eager network): precision 'bf16' runs under
  bfloat16 autocast, channels_last stores weights and inputs NHWC, compile evaluates torch.compile(copy).
  ``eps_fn.model`` is always the plain (uncompiled) copy, usable under autograd / torch.func.
  """
  from models.ema import ExponentialMovingAverage
  if ema is not None and not isinstance(ema, ExponentialMovingAverage):
    raise TypeError(f'ema_eps_fn(model, ema): ema must be an ExponentialMovingAverage or None, '
                    f'got {type(ema).__name__}')
  net = copy.deepcopy(dist_util.unwrap(model))
  if ema is not None:
    ema.copy_to(net.parameters())
  net.eval().requires_grad_(False)
  for p in net.parameters():
    p.grad = None  # the copy only evaluates; drop any copied training gradients
  fmt = torch.channels_last if channels_last else torch.preserve_format  # preserve: x is passed on as it is
  if channels_last:
    net.to(memory_format=fmt)
  run = torch.compile(net, dynamic=False) if compile else net  # static shapes: at most a last, smaller batch
  param = next(net.parameters())
  device, dtype = param.device, param.dtype
  precision_ctx = functools.partial(autocast, device, precision)
  precision_ctx()  # an unknown precision fails here, not at the first sampler call

  def eps_fn(x, t):
    x = x.to(device=device, dtype=dtype, memory_format=fmt)
    t = torch.as_tensor(t, device=device, dtype=torch.float32)
    if t.ndim == 0:
      t = t.expand(x.shape[0])
    elif t.shape != (x.shape[0],):
      raise ValueError(f't must be a number, a 0-d tensor or shape ({x.shape[0]},), got {tuple(t.shape)}')
    with torch.inference_mode(), precision_ctx():
      out = run(x, t)
    return out.to(torch.float32, memory_format=torch.contiguous_format)  # no-op (same tensor) on the default path

  eps_fn.model = net
  return eps_fn
