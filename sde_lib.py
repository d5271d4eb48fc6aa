"""The discrete DDPM noise schedule (docs/schedule.md): the one object that owns every schedule quantity.

Convention used everywhere in the code base:
  * timesteps are integers t = 0..T-1 (passed to the network as floats);
  * ``alpha_bar(-1) = 1`` is the clean data, so the last sampler step goes to t_next = -1;
  * a fractional t (PNDM's Runge-Kutta midpoints) uses log-linear interpolation of alpha_bar
    between its integer neighbours, i.e. alpha_bar(t) = exp(interp(t, log alpha_bar)).
    The network receives the same fractional t. (The original PNDM code truncated t for the
    alpha_bar lookup while feeding the float to the network; we use one rule for both.)
"""

import math

import numpy as np
import torch


class DDPMSchedule:
  """Linear-beta VP schedule: beta_t = linspace(beta_min/T, beta_max/T, T), computed in float64.

  With the defaults (0.1, 20, 1000) this is beta = linspace(1e-4, 0.02, 1000) of Ho et al.
  """

  def __init__(self, beta_min=0.1, beta_max=20.0, num_timesteps=1000):
    if num_timesteps < 1:
      raise ValueError(f'num_timesteps must be >= 1, got {num_timesteps}')
    self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), int(num_timesteps)
    self.beta = torch.linspace(beta_min / num_timesteps, beta_max / num_timesteps, num_timesteps,
                               dtype=torch.float64)
    self.alpha = 1.0 - self.beta
    self.alpha_bar_table = torch.cumprod(self.alpha, dim=0)
    # log alpha_bar with the t = -1 entry (= 0) prepended, for interpolation at fractional t.
    self._log_ab_ext = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(self.alpha_bar_table)])

  @classmethod
  def from_config(cls, config):
    return cls(config.model.beta_min, config.model.beta_max, config.model.num_scales)

  # ----------------------------------------------------------------------------- lookups
  def alpha_bar(self, t):
    """alpha_bar at t in [-1, T-1] (int, float or tensor of any shape); float64 tensor, same shape.

    alpha_bar(-1) = 1 (clean data). Fractional t interpolates log alpha_bar linearly.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    if torch.any(t < -1) or torch.any(t > self.T - 1):
      raise ValueError(f'timestep out of range [-1, {self.T - 1}]: {t}')
    s = t + 1.0  # index into the extended table
    lo = torch.floor(s).long().clamp(max=self.T)
    hi = (lo + 1).clamp(max=self.T)
    w = s - lo.double()
    return torch.exp((1 - w) * self._log_ab_ext[lo] + w * self._log_ab_ext[hi])

  def beta_at(self, t):
    """beta_t for integer t in [0, T-1]; float64 tensor."""
    return self.beta[torch.as_tensor(t, dtype=torch.long)]

  def _alpha_bar_like(self, t, like):
    """alpha_bar_t shaped to broadcast against ``like`` (B, ...), on its device and in its dtype."""
    a = self.alpha_bar(t)
    if a.dim() == 1:
      a = a.view(-1, *([1] * (like.dim() - 1)))
    return a.to(device=like.device, dtype=like.dtype)

  def _coef(self, t, like):
    """sqrt(alpha_bar_t), sqrt(1-alpha_bar_t) shaped to broadcast against ``like`` (B, ...)."""
    a = self._alpha_bar_like(t, like)
    return a.sqrt(), (1 - a).sqrt()

  # ----------------------------------------------------------------------------- maps
  def q_sample(self, x0, t, eps):
    """Forward marginal x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps.  t: scalar or (B,)."""
    sa, s1a = self._coef(t, x0)
    return sa * x0 + s1a * eps

  def x0_from_eps(self, x_t, t, eps):
    """x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (DDPM Eq. 4 solved for x0).  t: scalar or (B,)."""
    return self.x0_from_eps_given_alpha_bar(x_t, self._alpha_bar_like(t, x_t), eps)

  @staticmethod
  def x0_from_eps_given_alpha_bar(x_t, alpha_bar, eps):
    """The same map from alpha_bar itself: a python float (the samplers' per-step scalar, computed once per grid
    in float64) or a tensor broadcastable against x_t."""
    if isinstance(alpha_bar, torch.Tensor):
      return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    return (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)

  def eps_from_x0(self, x_t, t, x0):
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t); t must be >= 0."""
    sa, s1a = self._coef(t, x_t)
    return (x_t - sa * x0) / s1a

  # ----------------------------------------------------------------------------- continuous view
  def beta_continuous(self, s):
    """beta(s) = beta_min + s (beta_max - beta_min), s in [0, 1] (numpy or float)."""
    return self.beta_min + np.asarray(s) * (self.beta_max - self.beta_min)

  def theta_continuous(self, s):
    """theta(s) = sqrt(alpha_bar)(s) = exp(-s^2 (beta_max-beta_min)/4 - s beta_min/2)."""
    s = np.asarray(s, dtype=np.float64)
    return np.exp(-s ** 2 * (self.beta_max - self.beta_min) / 4 - s * self.beta_min / 2)

  def __repr__(self):
    return f'DDPMSchedule(beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T})'
