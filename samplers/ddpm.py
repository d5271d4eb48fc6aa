"""DDPM sampling (docs/samplers.md): the full ancestral chain, or the paper's fast "DDPM".

* Full chain, used when ``timesteps`` are the consecutive integers t_start, t_start-1, ..., 0
  (t_start = T-1 gives the 1000-step chain of Ho et al. 2020, Alg. 2):
    x' = (x - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(1 - beta_t) + sqrt(beta_t) z,
  with no noise on the last step (t = 0). Output: the final x.
* Any other grid: the paper's fast "DDPM" = DDIM with eta = 1 (samplers.ddim), whose output is
  the last x0-prediction.
"""
import math

import torch

import rng
from samplers.ddim import ddim as ddim_sampler
from samplers.grids import check_timesteps


def is_full_chain(timesteps):
  """True when the validated grid is t_start, t_start-1, ..., 0 (consecutive, down to 0)."""
  return timesteps[-1] == 0 and all(a - b == 1 for a, b in zip(timesteps, timesteps[1:]))


def ddpm(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None, eta=1.0):
  """Ancestral DDPM on a consecutive grid, else DDIM with ``eta`` (default 1); see module doc.

  Args: as samplers.ddim.ddim. ``eta`` is used only on non-consecutive grids.
  Returns: x0 (same shape as x_init).
  """
  seq = check_timesteps(timesteps, schedule.T)
  if not is_full_chain(seq):
    return ddim_sampler(eps_fn, schedule, x_init, seq, generator=generator,
                        callback=callback, eta=eta)
  # Per-step scalars computed once, before the loop (float64 -> python floats).
  ts = torch.tensor(seq, dtype=torch.float64)
  betas = schedule.beta_at(torch.tensor(seq)).tolist()
  abs_ = schedule.alpha_bar(ts).tolist()
  x = x_init
  for t, beta, a in zip(seq, betas, abs_):
    eps = eps_fn(x, float(t))
    if callback is not None:
      callback(t, x, schedule.x0_from_eps_given_alpha_bar(x, a, eps))
    # Ho et al. Alg. 2 line 4 with sigma_t^2 = beta_t.
    x_new = (x - (beta / math.sqrt(1 - a)) * eps) / math.sqrt(1 - beta)
    if t > 0:  # no noise on the last step
      x_new = x_new + math.sqrt(beta) * rng.randn(x.shape, generator, device=x.device, dtype=x.dtype)
    x = x_new
  return x
