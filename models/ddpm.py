"""DDPM U-Net (Ho et al. 2020) in score_sde's layout, with the two up-path variants of docs/model.md.

- 'ssb' (default): the SSB paper's code; attention after EVERY up-path ResBlock at attn resolutions,
  no `sigmas` buffer (CIFAR-10: 35,746,307 parameters).
- 'score_sde': attention once per up level after its last ResBlock; a float64 `sigmas` buffer
  (CIFAR-10: 35,218,947 parameters).
All layers live in one `all_modules` ModuleList, so state_dict keys match the published checkpoints.
"""
import copy
import functools

import numpy as np
import torch
import torch.nn as nn

from errors import ConfigError
from models import layers

VARIANTS = ('ssb', 'score_sde')
NORMALIZATIONS = ('GroupNorm',)
NONLINEARITIES = tuple(layers.ACTIVATIONS)


def get_sigmas(config):
  """score_sde's NCSN sigmas, float64 (num_scales,): exp(linspace(log sigma_max, log sigma_min, N))."""
  sigma_max = config.model.get('sigma_max', 50.)
  sigma_min = config.model.get('sigma_min', 0.01)
  return np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), config.model.num_scales))


def num_groups(config):
  """GroupNorm group count: config.model.num_groups, or 32 (the published models') for a config written before
  the field existed (an older run's config.json)."""
  return config.model.get('num_groups', 32)


def check_model_config(config):
  """Raise ConfigError naming the config field when a model setting is unusable (configs.validation runs this
  before any work; the model's constructor runs it again for configs built elsewhere)."""
  m = config.model
  variant = m.get('variant', 'ssb')
  for field, value, choices in (('variant', variant, VARIANTS), ('nonlinearity', m.nonlinearity, NONLINEARITIES),
                                ('normalization', m.normalization, NORMALIZATIONS)):
    if value not in choices:
      raise ConfigError(f'config.model.{field}={value!r} is invalid: choose one of {", ".join(choices)}')
  ch_mult = tuple(m.ch_mult)
  if not ch_mult or any(int(c) < 1 for c in ch_mult):
    raise ConfigError(f'config.model.ch_mult={ch_mult} is invalid: it needs at least one level, each a positive int')
  factor = 2 ** (len(ch_mult) - 1)
  if config.data.image_size < 1 or config.data.image_size % factor:
    raise ConfigError(f'config.data.image_size={config.data.image_size} is invalid: it must be divisible by '
                      f'2**(len(model.ch_mult)-1) = {factor} (the U-Net downsamples {len(ch_mult) - 1} times); '
                      'change data.image_size or model.ch_mult')
  groups = num_groups(config)
  if not isinstance(groups, int) or groups < 1:
    raise ConfigError(f'config.model.num_groups={groups!r} is invalid: it must be a positive int')
  if m.nf < groups or m.nf % groups:
    raise ConfigError(f'config.model.nf={m.nf} is invalid: it must be a positive multiple of model.num_groups = '
                      f'{groups} (the GroupNorm group count)')
  if m.num_res_blocks < 1:
    raise ConfigError(f'config.model.num_res_blocks={m.num_res_blocks} is invalid: it must be >= 1')
  if not 0.0 <= m.dropout < 1.0:
    raise ConfigError(f'config.model.dropout={m.dropout} is invalid: it must be in [0, 1)')
  if m.get('scale_by_sigma', False):
    raise ConfigError('config.model.scale_by_sigma=True is for NCSN-style models; DDPM predicts eps, set it False')


class DDPM(nn.Module):
  """eps-prediction U-Net. forward(x (B,C,H,W) in model space [-1,1], t (B,) float in [0, T-1]) -> (B,C,H,W)."""

  def __init__(self, config):
    super().__init__()
    check_model_config(config)
    self._config = copy.deepcopy(config)  # lets load_checkpoint name the other variant when keys differ
    self.variant = config.model.get('variant', 'ssb')
    self.act = act = layers.get_act(config.model.nonlinearity)
    if self.variant == 'score_sde':
      # Registered before all_modules so that 'sigmas' is the first state_dict key, as in score_sde.
      self.register_buffer('sigmas', torch.tensor(get_sigmas(config)))
    self.nf = nf = config.model.nf
    ch_mult = tuple(config.model.ch_mult)
    self.num_res_blocks = num_res_blocks = config.model.num_res_blocks
    self.attn_resolutions = attn_resolutions = tuple(config.model.attn_resolutions)
    self.num_resolutions = num_resolutions = len(ch_mult)
    self.all_resolutions = [config.data.image_size // (2 ** i) for i in range(num_resolutions)]
    self.conditional = conditional = config.model.conditional
    self.centered = config.data.centered
    self.scale_by_sigma = config.model.get('scale_by_sigma', False)  # always False: check_model_config refuses True
    resamp_with_conv = config.model.resamp_with_conv
    channels = config.data.num_channels
    # GroupNorm groups: 32 in the published models (nf 128: 4 channels per group). With one channel per group
    # every norm removes each channel's spatial mean, so the net cannot carry the image's mean brightness to
    # its output; small models set model.num_groups lower (docs/mnist_job.md). Weights do not depend on it.
    groups = num_groups(config)
    ResnetBlock = functools.partial(layers.ResnetBlockDDPM, act=act, temb_dim=4 * nf,
                                    dropout=config.model.dropout, num_groups=groups)
    AttnBlock = functools.partial(layers.AttnBlock, num_groups=groups)

    modules = []
    if conditional:  # timestep MLP: Dense(nf, 4nf), act, Dense(4nf, 4nf) (docs/model.md)
      modules.append(layers.dense(nf, nf * 4))
      modules.append(layers.dense(nf * 4, nf * 4))
    modules.append(layers.ddpm_conv3x3(channels, nf))
    hs_c = [nf]
    in_ch = nf
    for i_level in range(num_resolutions):  # down path
      for _ in range(num_res_blocks):
        out_ch = nf * ch_mult[i_level]
        modules.append(ResnetBlock(in_ch=in_ch, out_ch=out_ch))
        in_ch = out_ch
        if self.all_resolutions[i_level] in attn_resolutions:
          modules.append(AttnBlock(channels=in_ch))
        hs_c.append(in_ch)
      if i_level != num_resolutions - 1:
        modules.append(layers.Downsample(channels=in_ch, with_conv=resamp_with_conv))
        hs_c.append(in_ch)

    in_ch = hs_c[-1]  # middle: ResBlock, Attn, ResBlock (both variants)
    modules.append(ResnetBlock(in_ch=in_ch))
    modules.append(AttnBlock(channels=in_ch))
    modules.append(ResnetBlock(in_ch=in_ch))

    for i_level in reversed(range(num_resolutions)):  # up path; the variants differ here only
      has_attn = self.all_resolutions[i_level] in attn_resolutions
      for _ in range(num_res_blocks + 1):
        out_ch = nf * ch_mult[i_level]
        modules.append(ResnetBlock(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
        in_ch = out_ch
        if has_attn and self.variant == 'ssb':
          modules.append(AttnBlock(channels=in_ch))
      if has_attn and self.variant == 'score_sde':
        modules.append(AttnBlock(channels=in_ch))
      if i_level != 0:
        modules.append(layers.Upsample(channels=in_ch, with_conv=resamp_with_conv))
    assert not hs_c, 'skip channel bookkeeping is off'

    modules.append(nn.GroupNorm(num_channels=in_ch, num_groups=groups, eps=1e-6))
    modules.append(layers.ddpm_conv3x3(in_ch, channels, init_scale=0.))  # zero-ish conv_out (docs/model.md)
    self.all_modules = nn.ModuleList(modules)

  def forward(self, x, labels):
    """x (B, C, H, W) float32 in [-1, 1] (or [0, 1] if not centered); labels (B,) float timesteps.

    Returns the eps prediction, (B, C, H, W).
    """
    if x.ndim != 4 or labels.shape != (x.shape[0],):
      raise ValueError(f'DDPM expects x (B, C, H, W) and t (B,); got x {tuple(x.shape)}, t {tuple(labels.shape)}')
    modules = self.all_modules
    m_idx = 0
    temb = None
    if self.conditional:
      temb = layers.get_timestep_embedding(labels, self.nf)  # float32, as score_sde; cast for a float64 model
      temb = modules[m_idx](temb.to(modules[m_idx].weight.dtype))
      temb = modules[m_idx + 1](self.act(temb))
      m_idx += 2
    h = x if self.centered else 2 * x - 1.
    hs = [modules[m_idx](h)]
    m_idx += 1
    for i_level in range(self.num_resolutions):
      for _ in range(self.num_res_blocks):
        h = modules[m_idx](hs[-1], temb)
        m_idx += 1
        if h.shape[-1] in self.attn_resolutions:
          h = modules[m_idx](h)
          m_idx += 1
        hs.append(h)
      if i_level != self.num_resolutions - 1:
        hs.append(modules[m_idx](hs[-1]))
        m_idx += 1

    h = modules[m_idx](hs[-1], temb)
    h = modules[m_idx + 1](h)
    h = modules[m_idx + 2](h, temb)
    m_idx += 3

    for i_level in reversed(range(self.num_resolutions)):
      has_attn = h.shape[-1] in self.attn_resolutions
      for _ in range(self.num_res_blocks + 1):
        h = modules[m_idx](torch.cat([h, hs.pop()], dim=1), temb)
        m_idx += 1
        if has_attn and self.variant == 'ssb':
          h = modules[m_idx](h)
          m_idx += 1
      if has_attn and self.variant == 'score_sde':
        h = modules[m_idx](h)
        m_idx += 1
      if i_level != 0:
        h = modules[m_idx](h)
        m_idx += 1

    assert not hs
    h = self.act(modules[m_idx](h))
    h = modules[m_idx + 1](h)
    return h
