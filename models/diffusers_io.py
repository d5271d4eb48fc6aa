"""diffusers' DDPM weights in and out: a ``UNet2DModel`` folder <-> this code base's DDPM U-Net ('ssb' variant).

The google/ddpm-* models (Ho et al.'s CIFAR-10 model, the 256x256 CelebA-HQ / church / bedroom / cat models) are
UNet2DModels of exactly the architecture of models/ddpm.py's 'ssb' variant: the [sin, cos] timestep embedding with
shift 1 and a two-layer MLP, ResBlocks with a 1x1 skip, single-head attention after every ResBlock at the attention
resolutions on both paths, a ResBlock-Attn-ResBlock middle, DDPM's (0, 1, 0, 1) padded stride-2 down-convolutions
and nearest-neighbour up-sampling with a convolution (docs/model.md). The weights map one tensor to one tensor; our
1x1 "NIN" layers store (in, out) matrices where diffusers stores (out, in) linears or (out, in, 1, 1) convolutions.

A folder as ``UNet2DModel.save_pretrained`` writes it holds ``config.json`` and ``diffusion_pytorch_model.safetensors``
(or ``.bin``); a pipeline folder (``DDPMPipeline.save_pretrained``, a Hugging Face snapshot) holds it under ``unet/``
beside ``scheduler/scheduler_config.json`` and ``model_index.json``.
"""
import json
import os

import torch

import io_util
from errors import ConfigError, InputError, one_line

WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
# Settings of a UNet2DModel config.json that this architecture fixes: key -> the only value it can take.
FIXED = {'act_fn': 'silu', 'time_embedding_type': 'positional', 'flip_sin_to_cos': False, 'freq_shift': 1,
         'downsample_padding': 0, 'mid_block_scale_factor': 1, 'norm_eps': 1e-6, 'attention_head_dim': None,
         'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
         'num_class_embeds': None, 'downsample_type': 'conv', 'upsample_type': 'conv'}
_ATTN_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}  # diffusers < 0.15 names
_RES = (('GroupNorm_0', 'norm1', 'same'), ('Conv_0', 'conv1', 'same'), ('Dense_0', 'time_emb_proj', 'same'),
        ('GroupNorm_1', 'norm2', 'same'), ('Conv_1', 'conv2', 'same'), ('NIN_0', 'conv_shortcut', 'nin_conv'))
_ATTN = (('GroupNorm_0', 'group_norm', 'same'), ('NIN_0', 'to_q', 'nin_linear'), ('NIN_1', 'to_k', 'nin_linear'),
         ('NIN_2', 'to_v', 'nin_linear'), ('NIN_3', 'to_out.0', 'nin_linear'))


# ------------------------------------------------------------------------------------------ folders
def unet_folder(path):
  """The folder holding the UNet's config.json: ``path`` itself or its ``unet/`` (a pipeline folder)."""
  for folder in (path, os.path.join(path, 'unet')):
    if os.path.isfile(os.path.join(folder, 'config.json')) and any(
        os.path.isfile(os.path.join(folder, f)) for f in WEIGHT_FILES):
      return folder
  raise FileNotFoundError(f'config.model.pretrained={path!r} holds no diffusers UNet: expected config.json and '
                          f'{" or ".join(WEIGHT_FILES)} in it or in its unet/ subfolder (as '
                          'UNet2DModel.save_pretrained or DDPMPipeline.save_pretrained write them)')


def read_unet_config(path):
  """The UNet2DModel config.json of a UNet or pipeline folder, as a dict."""
  folder = unet_folder(path)
  try:
    with open(os.path.join(folder, 'config.json')) as f:
      cfg = json.load(f)
  except (OSError, ValueError) as err:
    raise InputError(f'{folder}/config.json is unreadable ({err}): the folder is incomplete or damaged') from None
  if cfg.get('_class_name', 'UNet2DModel') != 'UNet2DModel':
    raise InputError(f'{folder}/config.json describes a {cfg["_class_name"]}, not a UNet2DModel: only DDPM UNets '
                     'load here')
  return cfg


def read_scheduler_config(path):
  """The DDPM/DDIM scheduler config beside a pipeline's UNet (scheduler/scheduler_config.json, or
  scheduler_config.json in the folder itself), or None when there is none."""
  for name in (os.path.join('scheduler', 'scheduler_config.json'), 'scheduler_config.json'):
    file = os.path.join(path, name)
    if os.path.isfile(file):
      with open(file) as f:
        return json.load(f)
  return None


# ------------------------------------------------------------------------------------------ configs
def model_fields(unet_cfg):
  """{config field: value} that a UNet2DModel config.json sets, refusing what models/ddpm.py cannot express."""
  for key, want in FIXED.items():
    have = unet_cfg.get(key, want)
    if have != want and not (key == 'act_fn' and have == 'swish'):
      raise ConfigError(f'the diffusers UNet has {key}={have!r}; this code base implements only {key}={want!r} '
                        '(the DDPM architecture of Ho et al. and the google/ddpm-* models)')
  down, up = list(unet_cfg['down_block_types']), list(unet_cfg['up_block_types'])
  allowed = {'DownBlock2D', 'AttnDownBlock2D', 'UpBlock2D', 'AttnUpBlock2D'}
  if set(down + up) - allowed or [t.replace('Down', 'Up') for t in reversed(down)] != up:
    raise ConfigError(f'the diffusers UNet has down_block_types={down} and up_block_types={up}: only '
                      f'(Attn)DownBlock2D / (Attn)UpBlock2D mirrored between the paths are this architecture')
  widths, size = list(unet_cfg['block_out_channels']), int(unet_cfg['sample_size'])
  nf = widths[0]
  if any(w % nf for w in widths) or unet_cfg['in_channels'] != unet_cfg['out_channels']:
    raise ConfigError(f'the diffusers UNet has block_out_channels={widths}, in/out channels '
                      f'{unet_cfg["in_channels"]}/{unet_cfg["out_channels"]}: widths must be multiples of the first '
                      'and the output must have the input\'s channels')
  return {'model.nf': nf, 'model.ch_mult': tuple(w // nf for w in widths),
          'model.num_res_blocks': int(unet_cfg['layers_per_block']),
          'model.attn_resolutions': tuple(size // 2 ** i for i, t in enumerate(down) if t.startswith('Attn')),
          'model.num_groups': int(unet_cfg.get('norm_num_groups', 32)), 'model.variant': 'ssb',
          'model.resamp_with_conv': True, 'model.conditional': True,
          'data.centered': not unet_cfg.get('center_input_sample', False),
          'data.image_size': size, 'data.num_channels': int(unet_cfg['in_channels'])}


def schedule_fields(sched_cfg):
  """{config field: value} of a diffusers DDPM/DDIM scheduler config; refuses a schedule other than linear betas."""
  if sched_cfg.get('beta_schedule', 'linear') != 'linear' or sched_cfg.get('trained_betas') is not None:
    raise ConfigError(f'the folder\'s scheduler has beta_schedule={sched_cfg.get("beta_schedule")!r}'
                      f'{" with trained_betas" if sched_cfg.get("trained_betas") is not None else ""}: this code base '
                      'implements the linear beta schedule of Ho et al. only')
  n = int(sched_cfg.get('num_train_timesteps', 1000))
  return {'model.num_scales': n, 'model.beta_min': float(sched_cfg.get('beta_start', 1e-4)) * n,
          'model.beta_max': float(sched_cfg.get('beta_end', 0.02)) * n}


def _get(config, field):
  section, name = field.split('.')
  return config[section].get(name)


def check_config(config, path):
  """Refuses, in one line naming the first differing field, a run config that does not describe the folder's model
  (architecture from unet config.json; schedule from the scheduler config when the folder has one)."""
  fields = model_fields(read_unet_config(path))
  sched = read_scheduler_config(path)
  if sched is not None:
    fields.update(schedule_fields(sched))
  for field, want in fields.items():
    have = _get(config, field)
    same = (tuple(have) == tuple(want)) if isinstance(want, tuple) else (
        abs(float(have) - want) <= 1e-9 * max(1.0, abs(want)) if isinstance(want, float) else have == want)
    if not same:
      raise ConfigError(f'config.{field}={have!r} but the diffusers model in {path} has {want!r}: set '
                        f'--config.{field}={want!r} or use a config written for it (configs/ddpm/*_diffusers.py)')
  if config.model.nonlinearity not in ('swish', 'silu'):
    raise ConfigError(f'config.model.nonlinearity={config.model.nonlinearity!r} but diffusers models use silu')


# ------------------------------------------------------------------------------------------ weights
def _module_pairs(config):
  """[(kind, our prefix, diffusers prefix)] in forward order, kind in res / attn / same (one tensor each)."""
  m = config.model
  levels, nrb, size = len(m.ch_mult), m.num_res_blocks, config.data.image_size
  attn = [size // 2 ** i in tuple(m.attn_resolutions) for i in range(levels)]
  pairs, i = [], 0

  def add(kind, theirs, sub=''):
    nonlocal i
    pairs.append((kind, f'all_modules.{i}{sub}', theirs))
    i += 1

  add('same', 'time_embedding.linear_1')
  add('same', 'time_embedding.linear_2')
  add('same', 'conv_in')
  for level in range(levels):
    for j in range(nrb):
      add('res', f'down_blocks.{level}.resnets.{j}')
      if attn[level]:
        add('attn', f'down_blocks.{level}.attentions.{j}')
    if level != levels - 1:
      add('same', f'down_blocks.{level}.downsamplers.0.conv', '.Conv_0')
  add('res', 'mid_block.resnets.0')
  add('attn', 'mid_block.attentions.0')
  add('res', 'mid_block.resnets.1')
  for k, level in enumerate(reversed(range(levels))):
    for j in range(nrb + 1):
      add('res', f'up_blocks.{k}.resnets.{j}')
      if attn[level]:
        add('attn', f'up_blocks.{k}.attentions.{j}')
    if level != 0:
      add('same', f'up_blocks.{k}.upsamplers.0.conv', '.Conv_0')
  add('same', 'conv_norm_out')
  add('same', 'conv_out')
  return pairs


def _tensor_pairs(config):
  """[(our key, diffusers key, how)] for every tensor; how in same / nin_conv / nin_linear."""
  out = []
  for kind, ours, theirs in _module_pairs(config):
    subs = {'res': _RES, 'attn': _ATTN, 'same': (('', '', 'same'),)}[kind]
    for our_sub, their_sub, how in subs:
      o = f'{ours}.{our_sub}' if our_sub else ours
      t = f'{theirs}.{their_sub}' if their_sub else theirs
      if how == 'same':
        out += [(f'{o}.weight', f'{t}.weight', 'same'), (f'{o}.bias', f'{t}.bias', 'same')]
      else:
        out += [(f'{o}.W', f'{t}.weight', how), (f'{o}.b', f'{t}.bias', 'same')]
  return out


def _renamed(key):
  """A diffusers < 0.15 attention key (query / key / value / proj_attn) under its current name."""
  head, _, last = key.rpartition('.')
  for old, new in _ATTN_NAMES.items():
    if head.endswith('.' + old):
      return f'{head[:-len(old)]}{new}.{last}'
  return key


def to_ours(state, config, strict_shapes=True):
  """Our DDPM state dict (``all_modules.*``) from a diffusers UNet2DModel state dict; every tensor is used once."""
  state = {_renamed(k): v for k, v in state.items()}
  ours, used = {}, set()
  for our_key, their_key, how in _tensor_pairs(config):
    if their_key not in state:
      if their_key.split('.')[-2] == 'conv_shortcut':  # a ResBlock whose width does not change has no skip
        continue
      raise InputError(f'the diffusers weights have no {their_key}: they are not the model config.json describes')
    v = state[their_key]
    used.add(their_key)
    ours[our_key] = v[:, :, 0, 0].t().contiguous() if how == 'nin_conv' else v.t().contiguous() \
        if how == 'nin_linear' else v
  left = sorted(set(state) - used)
  if left:
    raise InputError(f'the diffusers weights hold {len(left)} tensors this architecture does not have (first: '
                     f'{left[0]}): they are not the model config.json describes')
  return ours


def to_diffusers(state, config):
  """A diffusers UNet2DModel state dict from ours (``all_modules.*``, the 'ssb' variant)."""
  out = {}
  for our_key, their_key, how in _tensor_pairs(config):
    if our_key not in state:
      continue  # no NIN_0 skip where the width does not change
    v = state[our_key]
    out[their_key] = v.t()[:, :, None, None].contiguous() if how == 'nin_conv' else v.t().contiguous() \
        if how == 'nin_linear' else v.contiguous()
  return out


def weights_file(path):
  """The UNet's weights file: diffusion_pytorch_model.safetensors (preferred) or .bin."""
  folder = unet_folder(path)
  return next(os.path.join(folder, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(folder, f)))


def load_state_dict(path):
  """The UNet's tensors from its weights file, on the CPU."""
  file = weights_file(path)
  try:
    if file.endswith('.safetensors'):
      from safetensors.torch import load_file
      return load_file(file, device='cpu')
    return torch.load(file, map_location='cpu', weights_only=True)
  except Exception as err:  # a damaged or foreign file: say which, and what to do
    raise InputError(f'{file} does not load ({one_line(err)}): the download is incomplete or the file is not a UNet '
                     'state dict; fetch it again') from None


def load_into(model, path, config):
  """Loads the folder's weights into our ``model`` (built from ``config``); returns the model."""
  check_config(config, path)
  state = load_state_dict(path)
  ours = to_ours(state, config)
  bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
  if bad:  # sampling would write NaN images with exit 0 (workdir checkpoints are refused the same way)
    raise InputError(f'the diffusers weights in {path} hold non-finite values ({len(bad)} tensors, first: {bad[0]}): '
                     'the model diverged or the file is damaged; use another folder')
  missing = sorted(set(model.state_dict()) - set(ours))
  if missing:
    raise InputError(f'the diffusers weights in {path} leave {missing[0]} (and {len(missing) - 1} more) unset')
  model.load_state_dict(ours)
  return model


# ------------------------------------------------------------------------------------------ export
def unet_config(config):
  """The UNet2DModel config.json of our model config (the inverse of model_fields)."""
  m, size = config.model, config.data.image_size
  if m.get('variant', 'ssb') != 'ssb' or not m.resamp_with_conv or not m.conditional or \
          m.nonlinearity not in ('swish', 'silu'):
    raise ConfigError('only the \'ssb\' U-Net (attention after every up-path ResBlock, conv resampling, time '
                      'conditioning, swish) has a diffusers UNet2DModel twin; this model has variant='
                      f'{m.get("variant", "ssb")!r}, resamp_with_conv={m.resamp_with_conv}, '
                      f'conditional={m.conditional}, nonlinearity={m.nonlinearity!r}')
  attn = [size // 2 ** i in tuple(m.attn_resolutions) for i in range(len(m.ch_mult))]
  down = ['AttnDownBlock2D' if a else 'DownBlock2D' for a in attn]
  cfg = {'_class_name': 'UNet2DModel', '_diffusers_version': _diffusers_version(), 'sample_size': size,
         'in_channels': config.data.num_channels, 'out_channels': config.data.num_channels,
         'center_input_sample': not config.data.centered, 'down_block_types': down,
         'up_block_types': [t.replace('Down', 'Up') for t in reversed(down)],
         'block_out_channels': [m.nf * k for k in m.ch_mult], 'layers_per_block': m.num_res_blocks,
         'norm_num_groups': m.num_groups, 'dropout': m.dropout}
  cfg.update({k: v for k, v in FIXED.items() if k not in ('downsample_type', 'upsample_type', 'class_embed_type',
                                                          'num_class_embeds')})
  return cfg


def scheduler_config(config):
  """A DDPMScheduler config with this run's linear schedule (beta_t = linspace(beta_min/T, beta_max/T, T))."""
  n = config.model.num_scales
  return {'_class_name': 'DDPMScheduler', '_diffusers_version': _diffusers_version(), 'num_train_timesteps': n,
          'beta_start': config.model.beta_min / n, 'beta_end': config.model.beta_max / n, 'beta_schedule': 'linear',
          'variance_type': 'fixed_small', 'clip_sample': True, 'prediction_type': 'epsilon'}


EXPORT_INFO = 'export_info.json'  # beside model_index.json: which checkpoint step the folder holds, and its sha256


def exported_step(folder):
  """The checkpoint step of an earlier export in ``folder`` (export_info.json), 'unknown' for a diffusers folder
  without that record, or None when the folder holds no UNet weights."""
  try:
    unet_folder(folder)
  except FileNotFoundError:
    return None
  info = io_util.load_json(os.path.join(folder, EXPORT_INFO), {})
  return info.get('checkpoint_step', 'unknown')


def export(model, config, folder, step=0):
  """Writes ``folder`` as DDPMPipeline.save_pretrained does: model_index.json, unet/{config.json,
  diffusion_pytorch_model.safetensors} and scheduler/scheduler_config.json, plus export_info.json (step, sha256
  of the weights) and a model card README.md. Each file is written atomically; the weights are float32."""
  from safetensors.torch import save
  unet_cfg, sched_cfg = unet_config(config), scheduler_config(config)
  tensors = to_diffusers({k: v.detach().float().cpu() for k, v in model.state_dict().items()}, config)
  weights = os.path.join(folder, 'unet', WEIGHT_FILES[0])
  io_util.atomic_write(weights, lambda f: f.write(save(tensors, metadata={'format': 'pt'})))
  io_util.save_json(unet_cfg, os.path.join(folder, 'unet', 'config.json'))
  io_util.save_json(sched_cfg, os.path.join(folder, 'scheduler', 'scheduler_config.json'))
  io_util.save_json({'_class_name': 'DDPMPipeline', '_diffusers_version': _diffusers_version(),
                     'scheduler': ['diffusers', 'DDPMScheduler'], 'unet': ['diffusers', 'UNet2DModel']},
                    os.path.join(folder, 'model_index.json'))
  info = dict(checkpoint_step=int(step), weights_sha256=io_util.file_sha256(weights),
              num_parameters=int(sum(v.numel() for v in tensors.values())), dataset=config.data.dataset,
              image_size=int(config.data.image_size), num_channels=int(config.data.num_channels))
  io_util.save_json(info, os.path.join(folder, EXPORT_INFO))
  io_util.write_text(os.path.join(folder, 'README.md'), model_card(config, info))
  return folder


def model_card(config, info):
  """A short model card (markdown): data, architecture, training recipe, schedule, weights sha256 and how to load."""
  m, t, o, d = config.model, config.training, config.optim, config.data
  rows = [('data', f'{d.dataset}, {d.num_channels}x{d.image_size}x{d.image_size}, '
                   f'{"centred to [-1, 1]" if d.centered else "[0, 1]"}'),
          ('U-Net', f'DDPM (Ho et al. 2020) \'ssb\' variant: nf {m.nf}, ch_mult {tuple(m.ch_mult)}, '
                    f'{m.num_res_blocks} ResBlock(s) per level, attention at {tuple(m.attn_resolutions)}, '
                    f'{m.num_groups} GroupNorm groups, {info["num_parameters"]:,} parameters'),
          ('training', f'{info["checkpoint_step"]:,} steps at batch {t.batch_size}, {o.optimizer} lr {o.lr:g} '
                       f'(warm-up {o.warmup}), grad clip {o.grad_clip:g}, EMA {m.ema_rate}, precision {t.precision}, '
                       f'seed {config.seed}'),
          ('schedule', f'linear betas {m.beta_min / m.num_scales:g} to {m.beta_max / m.num_scales:g}, '
                       f'T = {m.num_scales}, eps prediction'),
          ('weights', f'the EMA weights, float32, unet/{WEIGHT_FILES[0]}, sha256 {info["weights_sha256"]}')]
  table = io_util.markdown_table(['', 'this model'], rows)
  return (f'# DDPM on {d.dataset} ({d.image_size}x{d.image_size})\n\n'
          'A diffusers `DDPMPipeline` folder written by `python main.py --mode=export_diffusers` of ssb-diffusion '
          '(the EMA weights of one training checkpoint).\n\n' + table +
          '\n## Load it\n\n```python\nfrom diffusers import DDPMPipeline, DDIMScheduler\n'
          'pipe = DDPMPipeline.from_pretrained(FOLDER); pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)\n'
          'images = pipe(batch_size=16, num_inference_steps=100).images\n```\n\n'
          'In ssb-diffusion: `--config.model.pretrained=FOLDER` with the data set\'s config (every sampler, the '
          'Gaussian late start, the eval sweep).\n')


def _diffusers_version():
  try:
    from importlib.metadata import version
    return version('diffusers')
  except Exception:  # diffusers is not needed to write its format
    return '0.42.1'
