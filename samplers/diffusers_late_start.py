"""The Gaussian late start for diffusers users: a diffusers UNet2DModel and scheduler, the moments file written here
(--mode=gauss_stats), t_c and n -> samples (docs/checkpoints.md, "The late start in a diffusers loop";
docs/late_start.md).

The start is the Gaussian that the data's mean and covariance become at t_c under the forward process (SSB paper,
Sec. 6: x_{t_c} ~ N(sqrt(a) mu, a Sigma + (1 - a) I), a = alpha_bar(t_c)), drawn by this code base's
GaussianLateStart; the loop is diffusers' own, on the late-start grid linspace(0, t_c, n) passed to
``scheduler.set_timesteps(timesteps=...)`` (DDPMScheduler, DDIMScheduler with its own grid check,
DPMSolverMultistepScheduler, ...).
"""
import torch

import rng
import sde_lib
from samplers import grids
from samplers.initialisers import late_start_from_fit, load_moments


def schedule_of(scheduler):
  """This code base's DDPMSchedule equal to a diffusers scheduler's linear betas (others are refused)."""
  c = scheduler.config
  if c.get('beta_schedule', 'linear') != 'linear' or c.get('trained_betas') is not None:
    raise ValueError(f'the scheduler has beta_schedule={c.get("beta_schedule")!r}: the late start here is written '
                     'for the linear schedule of Ho et al.')
  n = int(c['num_train_timesteps'])
  return sde_lib.DDPMSchedule(float(c['beta_start']) * n, float(c['beta_end']) * n, n)


@torch.no_grad()
def gls_sample(unet, scheduler, moments_file, t_c, num_steps, num_samples, seed=0, rank=0, dataset=None):
  """Samples of a diffusers ``unet`` started from the Gaussian late start at ``t_c``.

  Args:
    unet: diffusers UNet2DModel (eps prediction), in eval mode, on any device.
    scheduler: a diffusers scheduler whose set_timesteps takes ``timesteps=[...]`` and whose step returns
      ``prev_sample`` (DDPMScheduler, DPMSolverMultistepScheduler, UniPC in newer diffusers, ...).
    moments_file: the late-start moments of the training data (--mode=gauss_stats of this code base).
    t_c: the late-start time in [0, T-1]; num_steps: n, the network calls (the grid linspace(0, t_c, n)).
    num_samples: N; seed: sample i starts from rng.sample_seed(seed, i), as this code base's own runs;
    rank: 0 = full covariance, r > 0 = top-r eigenpairs plus the diagonal (large images).
    dataset: the data set name to check the moments file against (None: any).
  Returns:
    (N, C, H, W) float32 tensor in model space [-1, 1] (images: (x + 1) / 2, clipped).
  """
  c = unet.config
  shape = (c.in_channels, c.sample_size, c.sample_size)
  moments = load_moments(moments_file, dataset, c.sample_size, c.in_channels)
  schedule = schedule_of(scheduler)
  start = late_start_from_fit(schedule, t_c, moments, shape, rank=rank)
  timesteps = grids.late_start_grid(int(t_c), int(num_steps), schedule.T)
  scheduler.set_timesteps(timesteps=list(timesteps))
  device = next(unet.parameters()).device
  x = start.sample(num_samples, rng.per_sample_generators(seed, range(num_samples))).to(device, torch.float32)
  for t in scheduler.timesteps:
    eps = unet(x, t).sample
    x = scheduler.step(eps, t, x).prev_sample
  return x

