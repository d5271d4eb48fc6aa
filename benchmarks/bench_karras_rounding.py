"""What rounding the Karras grid to integer timesteps costs: diffusers' Karras loop against our dpmpp_2m on
samplers.grids.karras_grid (issue 34, item 2).

  python benchmarks/bench_karras_rounding.py [--batch 16] [--smoke] [--fid_samples 500]

diffusers' ``DPMSolverMultistepScheduler(use_karras_sigmas=True)`` (DPM-Solver++(2M), Lu et al. 2022) builds the
rho = 7 sigmas of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", Eq. 5)
between sigma(999) and sigma(0), calls the network at the *rounded* timesteps but updates with the *unrounded*
sigmas. Ours (samplers.dpm_solver.dpmpp_2m) runs on the same rounded timesteps (grids.karras_grid equals
diffusers' list) and takes alpha_bar at those integer times (sde_lib.DDPMSchedule). Both drive the same eps
function from the same start noise x_init ~ N(0, I) at t = 999. Two eps functions:

(a) a randomly initialised ``diffusers.UNet2DModel`` as in diffusers' own tests (sample_size 8, 1 channel,
    block_out_channels (32, 64), seed 0), float32 on both sides, as diffusers runs it. Untrained, its eps does not
    match x, so x0-predictions (and the samples) are large: compare the differences with the samples' RMS.
(b) the exact eps of Gaussian data N(mu, Sigma) in D = 16 (analysis.gaussian; ours in float64, diffusers casts to
    float32 in ``step``), where the exact probability-flow solution from t = 999 to the data end is known: each
    loop's RMS error against it says which of the two conventions integrates the ODE better.

(c) with --fid_samples N > 0: the shipped digits model (assets/models/digits, the UNet2DModel itself on both
    sides, float32), N samples from the per-sample seeds of the main job (rng.per_sample_generators), each loop's
    FID and KID against the digits training statistics (assets/stats, as the eval sweep scores a cell), and the
    RMS difference of the samples in [0, 1].

Columns: the grid; the largest relative shift of a sigma by the rounding, max |sigma_karras / sigma(round t) - 1|;
max |diff| and RMS diff of the final samples, ours against diffusers' Karras loop, and ours against a control:
diffusers' loop with its sigmas replaced by sigma(round t) of our table, which differs from ours only by float32
round-off. The first pair minus the control is what the rounding changes. --smoke: n = 5 and a batch of 2.
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import datasets  # noqa: E402
import evaluation  # noqa: E402
import rng  # noqa: E402
import samplers  # noqa: E402
from analysis import gaussian  # noqa: E402
from samplers import grids  # noqa: E402
from sde_lib import DDPMSchedule  # noqa: E402

T = 1000
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')


def tiny_unet():
  """diffusers' test U-Net (tests/pipelines dummy_uncond_unet) at 8 x 8, 1 channel, seed 0, eval, float32."""
  from diffusers import UNet2DModel
  torch.manual_seed(0)
  return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=2,
                     down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
                     up_block_types=('AttnUpBlock2D', 'UpBlock2D')).eval().requires_grad_(False)


def unet_eps(model):
  """eps(x (B, 1, 8, 8) float32, t) at the integer time round(t) (both loops call only grid times)."""
  def eps(x, t):
    return model(x, torch.full((x.shape[0],), int(round(float(t))), dtype=torch.int64)).sample
  return eps


def diffusers_loop(eps, x_init, n, sigmas=None):
  """diffusers' pipeline loop; ``sigmas`` (n,) replaces the scheduler's Karras sigmas (the control)."""
  from diffusers import DPMSolverMultistepScheduler
  sched = DPMSolverMultistepScheduler(beta_schedule='linear', beta_start=1e-4, beta_end=0.02,
                                      algorithm_type='dpmsolver++', solver_order=2, use_karras_sigmas=True)
  sched.set_timesteps(n)
  if sigmas is not None:
    sched.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
  x = x_init.clone()
  for t in sched.timesteps:
    x = sched.step(eps(x, t), t, x).prev_sample
  return sched.timesteps.tolist(), sched.sigmas[:-1].double().numpy(), x


def sigma_at(schedule, timesteps):
  """sigma(t) = sqrt((1 - alpha_bar) / alpha_bar) at integer times, float64 (n,)."""
  a = schedule.alpha_bar(torch.tensor(timesteps)).numpy()
  return np.sqrt((1 - a) / a)


def gaussian_eps(mu, sigma, schedule):
  """analysis.gaussian's exact eps in float64, returned in x's dtype (float32 for diffusers' loop)."""
  exact = gaussian.eps_fn(mu, sigma, schedule)
  return lambda x, t: exact(x.double(), float(t)).to(x.dtype)


def runs(schedule, eps, x_init, n, dtype):
  """(grid, sigma shift, {'ours', 'diffusers', 'control'}: final samples as float64) for one n."""
  grid = grids.make_grid('karras', n, T - 1, T)
  ref_grid, karras_sigmas, ref = diffusers_loop(eps, x_init.float(), n)
  assert tuple(ref_grid) == grid, (ref_grid, grid)
  rounded = sigma_at(schedule, grid)
  _, _, control = diffusers_loop(eps, x_init.float(), n, sigmas=rounded)
  ours = samplers.dpmpp_2m(eps, schedule, x_init.to(dtype), grid)
  shift = float(np.abs(karras_sigmas / rounded - 1).max())
  return grid, shift, {'ours': ours.double(), 'diffusers': ref.double(), 'control': control.double()}


def _max_rms(a, b):
  d = a - b
  return f'{float(d.abs().max()):.2e} | {float(d.pow(2).mean().sqrt()):.2e}'


def table(schedule, eps, x_init, ns, dtype, exact=None):
  """Prints one markdown table; ``exact`` (B, ...) adds the RMS error of each loop against it."""
  head = '| n | karras grid | max sigma shift | ours vs diffusers: max abs | RMS | ours vs control: max abs | RMS |'
  head += ' RMS error: ours | diffusers | control |' if exact is not None else ' RMS of samples |'
  print(head)
  print('|' + '---|' * (head.count('|') - 1))
  for n in ns:
    grid, shift, out = runs(schedule, eps, x_init, n, dtype)
    cells = [str(n), ', '.join(map(str, grid)), f'{shift:.2e}', _max_rms(out['ours'], out['diffusers']),
             _max_rms(out['ours'], out['control'])]
    if exact is None:
      cells.append(f'{float(out["ours"].pow(2).mean().sqrt()):.3f}')
    else:
      cells += [f'{float((out[k] - exact).pow(2).mean().sqrt()):.2e}' for k in ('ours', 'diffusers', 'control')]
    print('| ' + ' | '.join(cells) + ' |')


def fid_table(schedule, ns, num_samples):
  """(c): FID / KID of ours and of diffusers' Karras loop on the shipped digits model, same noise."""
  from configs.ddpm import digits
  from diffusers import UNet2DModel
  config = digits.get_config()
  model = UNet2DModel.from_pretrained(os.path.join(ROOT, 'assets', 'models', 'digits'), subfolder='unet').eval()
  eps = unet_eps(model.requires_grad_(False))
  config.sampling.stats_dir = os.path.join(ROOT, config.sampling.stats_dir)
  ref, inception = evaluation.load_reference(config), evaluation.load_inception(backend=config.eval.fid_backend)
  gens = rng.per_sample_generators(config.seed, range(num_samples))
  x_init = torch.cat([torch.randn(1, 1, 8, 8, generator=g) for g in gens])
  to_images = lambda x: datasets.get_data_inverse_scaler(config)(x).clamp(0, 1).float().numpy()  # noqa: E731
  print('| n | loop | FID | KID | KID SE | RMS diff of images to ours |\n|---|---|---|---|---|---|')
  for n in ns:
    _, _, out = runs(schedule, eps, x_init, n, torch.float32)
    images = {k: to_images(out[k]) for k in ('ours', 'diffusers', 'control')}
    for name, x in images.items():
      scores = evaluation.score_images(x, inception, ref, config, 'cpu')
      rms = float(np.sqrt(((x - images['ours']) ** 2).mean()))
      print(f"| {n} | {name} | {scores['fid']:.2f} | {scores['kid']:.4f} | {scores['kid_std']:.4f} | {rms:.2e} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=16, help='samples per run')
  parser.add_argument('--smoke', action='store_true', help='n = 5, batch 2 (a run check)')
  parser.add_argument('--fid_samples', type=int, default=0,
                      help='(c): this many samples of the shipped digits model per loop, scored (0: skip)')
  args = parser.parse_args()
  torch.set_grad_enabled(False)
  import diffusers
  ns, batch = ((5,), 2) if args.smoke else ((5, 10, 20), args.batch)
  schedule = DDPMSchedule()
  print(f'diffusers {diffusers.__version__}, torch {torch.__version__}; batch {batch}, x_init N(0, I) seed 1\n')
  print('(a) random UNet2DModel 8x8x1, block_out_channels (32, 64), float32:\n')
  x_init = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1))
  table(schedule, unet_eps(tiny_unet()), x_init, ns, torch.float32)
  print('\n(b) exact eps of Gaussian data N(mu, Sigma), D = 16 (ours float64, diffusers float32):\n')
  mu, sigma = gaussian.random_gaussian(16, seed=0)
  x_init = torch.randn(batch, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  exact = gaussian.flow(mu, sigma, schedule)(x_init, T - 1, -1)
  table(schedule, gaussian_eps(mu, sigma, schedule), x_init, ns, torch.float64, exact)
  if args.fid_samples:
    print(f'\n(c) the shipped digits model, {args.fid_samples} samples per loop, FID / KID against the digits '
          'training statistics:\n')
    fid_table(schedule, ns[:2], args.fid_samples)


if __name__ == '__main__':
  main()
