"""Jacobian rank of the denoiser along a sampling trajectory (Wang et al. 2024; docs/gen.md).

J = d x0_pred / d x_t (D x D) at each trajectory state; its effective rank is the smallest r whose top-r
singular values hold 99% of the Frobenius norm. Plot rank/D against the noise level sigma = sqrt((1-a)/a).

Jacobians use torch.func.jacrev: one vmapped backward over all D output basis vectors per sample (optionally
chunked), not D separate backward passes. Works for modules with GroupNorm and attention, since each
sample is pushed through the model as its own batch of one.
"""
import numpy as np
import torch
from torch import func


def denoiser_jacobian(x0_fn, x, t, chunk_size=None):
  """Per-sample Jacobian of the x0-prediction.

  Args:
    x0_fn: x0_fn(x, t) -> x0_pred, x (1, *S) float, t a python number; must be built from torch ops
      (no .item()/numpy on x) so torch.func can trace it.
    x: (B, *S) states, e.g. (B, C, H, W) or (B, D); D = prod(S).
    t: python number or (B,) tensor of timesteps (one per sample).
    chunk_size: optional number of output rows per vmapped backward (memory bound; None = all D at once).
  Returns: (B, D, D) tensor, J[b, i, j] = d x0_pred[b, i] / d x[b, j], in x's dtype/device.
  """
  if x.dim() < 2:
    raise ValueError(f'x must be batched (B, ...), got shape {tuple(x.shape)}')
  batch, shape = x.shape[0], tuple(x.shape[1:])
  ts = torch.as_tensor(t, dtype=torch.float64).flatten()
  if ts.numel() == 1:
    ts = ts.expand(batch)
  if ts.numel() != batch:
    raise ValueError(f't must be a scalar or have one entry per sample ({batch}), got {ts.numel()}')
  jacs = []
  for b in range(batch):  # t is a python float per sample: schedule lookups stay outside the trace
    t_b = float(ts[b])
    if t_b == int(t_b):
      t_b = int(t_b)
    fn = lambda v, t_b=t_b: x0_fn(v.reshape((1,) + shape), t_b).reshape(-1)
    jacs.append(func.jacrev(fn, chunk_size=chunk_size)(x[b].reshape(-1).detach()))
  return torch.stack(jacs)


def effective_rank(J, energy=0.99, atol=1e-8):
  """Smallest r with sqrt(sum_{i<=r} s_i^2) > energy * ||J||_F (docs/gen.md).

  J: (D, D) or (B, D, D). Singular values <= atol count as zero, so a vanishing Jacobian (the optimal
  denoiser at low noise, exactly flat between training points) has rank 0 rather than a rank set by
  round-off. Returns an int for (D, D), a (B,) long tensor for (B, D, D).
  """
  if not 0 < energy <= 1:
    raise ValueError(f'energy must be in (0, 1], got {energy}')
  if J.dim() not in (2, 3):
    raise ValueError(f'J must be (D, D) or (B, D, D), got shape {tuple(J.shape)}')
  s = torch.linalg.svdvals(J.double())
  s = torch.where(s > atol, s, torch.zeros_like(s))
  cum = torch.sqrt(torch.cumsum(s ** 2, dim=-1))  # sqrt(sum_{i<=r} s_i^2)
  total = cum[..., -1:]
  # count of r (1-based) that do NOT yet exceed the threshold = the first r that does, minus 1
  rank = torch.minimum((cum <= energy * total).sum(-1) + 1, (s > 0).sum(-1))  # energy = 1 -> numerical rank
  rank = torch.where(total[..., 0] > 0, rank, torch.zeros_like(rank))
  return int(rank) if J.dim() == 2 else rank


def rank_curve(x0_fn, states, ts, schedule=None, energy=0.99, atol=1e-8, chunk_size=None):
  """Effective rank along a trajectory.

  Args:
    x0_fn: as in denoiser_jacobian.
    states: list of (B, *S) tensors, the sampler's x_t; ts: the matching timesteps (numbers).
      States with t < 0 (the clean endpoint, noise level 0) are skipped: no log-x position.
    schedule: sde_lib.DDPMSchedule (default: the standard DDPMSchedule()).
  Returns: list of dict(t, alpha_bar, noise_level = sqrt((1-a)/a), rank (mean over B), rank_over_D,
    rank_std), one per state with t >= 0, in trajectory order.
  """
  if schedule is None:
    import sde_lib
    schedule = sde_lib.DDPMSchedule()
  if len(states) != len(ts):
    raise ValueError(f'states and ts must have the same length, got {len(states)} and {len(ts)}')
  rows = []
  for x, t in zip(states, ts):
    t = float(t)
    if t < 0:
      continue
    a = float(schedule.alpha_bar(t))
    ranks = effective_rank(denoiser_jacobian(x0_fn, x, t, chunk_size), energy, atol).double()
    dim = int(np.prod(x.shape[1:]))
    rows.append(dict(t=t, alpha_bar=a, noise_level=float(np.sqrt((1 - a) / a)), rank=float(ranks.mean()),
                     rank_over_D=float(ranks.mean()) / dim, rank_std=float(ranks.std()) if len(ranks) > 1 else 0.))
  return rows


CSV_HEADER = ['t', 'alpha_bar', 'noise_level', 'rank', 'rank_over_D', 'rank_std']
