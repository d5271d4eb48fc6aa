"""Layers of the DDPM U-Net (docs/model.md), named as in score_sde `models/layers.py`.

Attribute names (GroupNorm_0, Conv_0, Dense_0, NIN_0.W, ...) are part of the checkpoint format
(docs/model.md, "Checkpoint format"): do not rename them.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def variance_scaling(scale, mode, distribution, in_axis=1, out_axis=0):
  """JAX-style variance_scaling initialiser; returns init(shape) -> float32 tensor.

  mode: 'fan_in' | 'fan_out' | 'fan_avg'; distribution: 'uniform' | 'normal'.
  """
  def init(shape, dtype=torch.float32, device=None):
    receptive_field_size = np.prod(shape) / shape[in_axis] / shape[out_axis]
    fan_in = shape[in_axis] * receptive_field_size
    fan_out = shape[out_axis] * receptive_field_size
    if mode == 'fan_in':
      denominator = fan_in
    elif mode == 'fan_out':
      denominator = fan_out
    elif mode == 'fan_avg':
      denominator = (fan_in + fan_out) / 2
    else:
      raise ValueError(f'variance_scaling: mode must be fan_in, fan_out or fan_avg, got {mode!r}')
    variance = scale / denominator
    if distribution == 'normal':
      return torch.randn(*shape, dtype=dtype, device=device) * np.sqrt(variance)
    if distribution == 'uniform':
      return (torch.rand(*shape, dtype=dtype, device=device) * 2. - 1.) * np.sqrt(3 * variance)
    raise ValueError(f'variance_scaling: distribution must be normal or uniform, got {distribution!r}')
  return init


def default_init(scale=1.):
  """fan_avg uniform init (docs/model.md); scale 0 means 1e-10, as in DDPM's zero-ish output layers."""
  scale = 1e-10 if scale == 0 else scale
  return variance_scaling(scale, 'fan_avg', 'uniform')


def ddpm_conv3x3(in_planes, out_planes, stride=1, bias=True, dilation=1, init_scale=1., padding=1):
  """3x3 conv with DDPM init; weight (out, in, 3, 3), bias zero."""
  conv = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=padding,
                   dilation=dilation, bias=bias)
  conv.weight.data = default_init(init_scale)(conv.weight.shape, device=conv.weight.device)
  if bias:
    nn.init.zeros_(conv.bias)
  return conv


def dense(in_dim, out_dim, init_scale=1.):
  """nn.Linear with DDPM init (weight (out, in) fan_avg uniform, bias zero)."""
  layer = nn.Linear(in_dim, out_dim)
  layer.weight.data = default_init(init_scale)(layer.weight.shape, device=layer.weight.device)
  nn.init.zeros_(layer.bias)
  return layer


# config.model.nonlinearity -> module factory: the one list of activations (validation reads it).
ACTIVATIONS = {'swish': nn.SiLU, 'silu': nn.SiLU, 'relu': nn.ReLU, 'elu': nn.ELU,
               'lrelu': lambda: nn.LeakyReLU(negative_slope=0.2)}


def get_act(nonlinearity):
  """Activation module by config name (a key of ACTIVATIONS)."""
  if nonlinearity not in ACTIVATIONS:
    raise ValueError(f'config.model.nonlinearity={nonlinearity!r} is unknown; use one of {tuple(ACTIVATIONS)}')
  return ACTIVATIONS[nonlinearity]()


def get_timestep_embedding(timesteps, embedding_dim, max_positions=10000):
  """Sinusoidal embedding (dim nf, max_positions 1e4, [sin, cos]; docs/model.md).

  timesteps: (B,) float, any range (DDPM labels are in [0, T-1]). Returns (B, embedding_dim) float32.
  """
  if timesteps.ndim != 1:
    raise ValueError(f'timesteps must have shape (B,), got {tuple(timesteps.shape)}')
  half_dim = embedding_dim // 2
  emb = math.log(max_positions) / (half_dim - 1)
  emb = torch.exp(torch.arange(half_dim, dtype=torch.float32, device=timesteps.device) * -emb)
  emb = timesteps.float()[:, None] * emb[None, :]
  emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
  if embedding_dim % 2 == 1:  # zero pad
    emb = F.pad(emb, (0, 1), mode='constant')
  return emb


class NIN(nn.Module):
  """Per-pixel linear map (a 1x1 conv) stored as score_sde does: W (in_dim, num_units), b (num_units,)."""

  def __init__(self, in_dim, num_units, init_scale=0.1):
    super().__init__()
    self.W = nn.Parameter(default_init(scale=init_scale)((in_dim, num_units)), requires_grad=True)
    self.b = nn.Parameter(torch.zeros(num_units), requires_grad=True)

  def forward(self, x):
    """x (B, in_dim, H, W) -> (B, num_units, H, W)."""
    # Same maths as score_sde's contract_inner over channels; a 1x1 conv avoids two permute copies.
    return F.conv2d(x, self.W.t()[:, :, None, None], self.b)


class AttnBlock(nn.Module):
  """Channel-wise self-attention block over the H*W positions, with a residual connection."""

  def __init__(self, channels, num_groups=32):
    super().__init__()
    self.GroupNorm_0 = nn.GroupNorm(num_groups=num_groups, num_channels=channels, eps=1e-6)
    self.NIN_0 = NIN(channels, channels)
    self.NIN_1 = NIN(channels, channels)
    self.NIN_2 = NIN(channels, channels)
    self.NIN_3 = NIN(channels, channels, init_scale=0.)

  def forward(self, x):
    """x (B, C, H, W) -> (B, C, H, W)."""
    B, C, H, W = x.shape
    h = self.GroupNorm_0(x)
    # q, k, v as (B, HW, C); softmax(q k^T / sqrt(C)) v is score_sde's einsum attention.
    q = self.NIN_0(h).flatten(2).transpose(1, 2)
    k = self.NIN_1(h).flatten(2).transpose(1, 2)
    v = self.NIN_2(h).flatten(2).transpose(1, 2)
    h = F.scaled_dot_product_attention(q, k, v, scale=C ** (-0.5))
    h = h.transpose(1, 2).reshape(B, C, H, W)
    return x + self.NIN_3(h)


class Upsample(nn.Module):
  """Nearest x2 upsampling, then a 3x3 conv when with_conv."""

  def __init__(self, channels, with_conv=False):
    super().__init__()
    if with_conv:
      self.Conv_0 = ddpm_conv3x3(channels, channels)
    self.with_conv = with_conv

  def forward(self, x):
    """x (B, C, H, W) -> (B, C, 2H, 2W)."""
    h = F.interpolate(x, scale_factor=2, mode='nearest')
    if self.with_conv:
      h = self.Conv_0(h)
    return h


class Downsample(nn.Module):
  """Stride-2 3x3 conv after padding (0,1,0,1) (docs/model.md), or 2x2 average pooling."""

  def __init__(self, channels, with_conv=False):
    super().__init__()
    if with_conv:
      self.Conv_0 = ddpm_conv3x3(channels, channels, stride=2, padding=0)
    self.with_conv = with_conv

  def forward(self, x):
    """x (B, C, H, W) -> (B, C, H/2, W/2)."""
    if self.with_conv:
      x = F.pad(x, (0, 1, 0, 1))  # TF 'SAME' padding of the original DDPM code
      return self.Conv_0(x)
    return F.avg_pool2d(x, kernel_size=2, stride=2, padding=0)


class ResnetBlockDDPM(nn.Module):
  """DDPM ResBlock: GN, act, conv, +Dense(act(temb)), GN, act, dropout, conv; NIN skip if channels change."""

  def __init__(self, act, in_ch, out_ch=None, temb_dim=None, conv_shortcut=False, dropout=0.1, num_groups=32):
    super().__init__()
    out_ch = in_ch if out_ch is None else out_ch
    self.GroupNorm_0 = nn.GroupNorm(num_groups=num_groups, num_channels=in_ch, eps=1e-6)
    self.act = act
    self.Conv_0 = ddpm_conv3x3(in_ch, out_ch)
    if temb_dim is not None:
      self.Dense_0 = dense(temb_dim, out_ch)
    self.GroupNorm_1 = nn.GroupNorm(num_groups=num_groups, num_channels=out_ch, eps=1e-6)
    self.Dropout_0 = nn.Dropout(dropout)
    self.Conv_1 = ddpm_conv3x3(out_ch, out_ch, init_scale=0.)  # zero-ish last conv (docs/model.md)
    if in_ch != out_ch:
      if conv_shortcut:
        self.Conv_2 = ddpm_conv3x3(in_ch, out_ch)
      else:
        self.NIN_0 = NIN(in_ch, out_ch)
    self.out_ch = out_ch
    self.in_ch = in_ch
    self.conv_shortcut = conv_shortcut

  def forward(self, x, temb=None):
    """x (B, in_ch, H, W), temb (B, temb_dim) or None -> (B, out_ch, H, W)."""
    h = self.act(self.GroupNorm_0(x))
    h = self.Conv_0(h)
    if temb is not None:
      h = h + self.Dense_0(self.act(temb))[:, :, None, None]
    h = self.act(self.GroupNorm_1(h))
    h = self.Dropout_0(h)
    h = self.Conv_1(h)
    if self.in_ch != self.out_ch:
      x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
    return x + h
