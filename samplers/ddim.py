"""DDIM (Song et al. 2021, Eq. 12) and the paper's fast "DDPM" (DDIM with eta = 1); docs/samplers.md.

With a = alpha_bar(t), a' = alpha_bar(t_next) (alpha_bar(-1) = 1 via the schedule object):
  x0_pred = (x - sqrt(1-a) eps) / sqrt(a)
  sigma   = eta sqrt((1 - a/a') (1 - a') / (1 - a))
  x'      = sqrt(a') x0_pred + sqrt(1 - a' - sigma^2) eps + sigma z
The last step goes to t_next = -1 where a' = 1 and sigma = 0, so x' is the x0-prediction of
the last step (at t = 0 on the standard grids): that is the output, as in the original code.
"""
import math

import torch

import rng
from samplers.grids import check_timesteps


def step_pairs(schedule, timesteps):
  """[(t, t_next, a, a_next)] for a validated grid; the final t_next is -1. Floats, computed once."""
  seq = check_timesteps(timesteps, schedule.T)
  nxt = seq[1:] + [-1]
  ab = schedule.alpha_bar(torch.tensor(seq + [-1], dtype=torch.float64)).tolist()
  return [(t, tn, ab[i], ab[i + 1]) for i, (t, tn) in enumerate(zip(seq, nxt))]


def ddim_coefficients(a, a_next, eta):
  """(c_x, c_eps, sigma) with x' = c_x x + c_eps eps + sigma z: DDIM Eq. 12 folded into one affine step.

  Folding x0_pred in saves one tensor op per step; x0_pred is still formed for the output.
  """
  sigma = eta * math.sqrt(max((1 - a / a_next) * (1 - a_next) / (1 - a), 0.0)) if a < 1 else 0.0
  c_x = math.sqrt(a_next / a)
  c_dir = math.sqrt(max(1 - a_next - sigma ** 2, 0.0))  # Eq. 12 "direction pointing to x_t"
  c_eps = c_dir - math.sqrt(a_next * (1 - a) / a)
  return c_x, c_eps, sigma


def ddim(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None, eta=0.0):
  """DDIM sampler (docs/samplers.md). eta = 0: deterministic DDIM; eta = 1: the paper's fast DDPM.

  Args:
    eps_fn: eps_fn(x, t) -> eps, x (B, ...) float tensor, t python float (same for the batch).
    schedule: sde_lib.DDPMSchedule.
    x_init: (B, ...) state at timesteps[0] (drawn by an initialiser; never drawn here).
    timesteps: strictly descending ints in [0, T-1] (see samplers.grids); n = len = network calls.
    generator: torch.Generator or list of per-sample generators; needed only when eta > 0.
    callback: callback(t, x, x0_pred) at each grid point (samplers.trajectory), or None.
    eta: DDIM eta >= 0.
  Returns:
    x0 (same shape/dtype as x_init): the x0-prediction of the last step.
  """
  if eta < 0:
    raise ValueError(f'DDIM eta must be >= 0 (use sampling.eta=-1 only at the config level), got {eta}')
  x, x0_pred = x_init, None
  for t, t_next, a, a_next in step_pairs(schedule, timesteps):
    eps = eps_fn(x, float(t))
    x0_pred = schedule.x0_from_eps_given_alpha_bar(x, a, eps)  # Eq. 12, "predicted x0"
    if callback is not None:
      callback(t, x, x0_pred)
    if t_next < 0:
      break  # a' = 1, sigma = 0: x' = x0_pred exactly; return it (the t = 0 x0-prediction)
    c_x, c_eps, sigma = ddim_coefficients(a, a_next, eta)
    x_new = c_x * x + c_eps * eps
    if sigma > 0:
      x_new = x_new + sigma * rng.randn(x.shape, generator, device=x.device, dtype=x.dtype)
    x = x_new
  return x0_pred
