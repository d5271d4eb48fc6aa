"""Our DDIM and PNDM loops against diffusers' DDIMScheduler / PNDMScheduler loops, side by side in one run.

Both sides drive the same U-Net weights (models.utils.create_model, CIFAR-10 config; ``--smoke``: the digits
config) through the same eps function (models.utils.ema_eps_fn, a plain callable eps(x, t)), from the same
x_init, for the same n. Ours: the sampler of ``sampling.sampling_plan`` for ``RunSpec(method, n, ..., 'normal',
'uniform')``; diffusers: its pipeline loop ``for t in scheduler.timesteps: x = scheduler.step(eps(x, t),
t, x).prev_sample``. Pairs (docs/samplers.md; Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models
on Manifolds"):

* ``ddim`` eta = 0  <->  DDIMScheduler (Song et al. 2021, "Denoising Diffusion Implicit Models", Eq. 12);
* ``pndm`` f-pndm   <->  PNDMScheduler() (its default: 3 pseudo Runge-Kutta steps of 4 calls, PNDM Eq. 13,
  then 4th-order linear multistep, Eq. 12; NFE = n + 9). diffusers needs n >= 4 here and takes the RK
  midpoint at the integer t - (T // n) // 2, so the pair is exact when T // n is even (n = 10: 50); this pair
  runs at max(n, 4) steps;
* ``pndm`` plms     <->  PNDMScheduler(skip_prk_steps=True) (improved-Euler first step, NFE = n + 1).
S-PNDM and plms-euler have no diffusers counterpart.

Configuration so that both compute the same numbers: our grid ``uniform`` = arange(0, T, T // n) is diffusers'
``timestep_spacing='leading'`` with ``steps_offset=0``; ``set_alpha_to_one=True`` is our alpha_bar(-1) = 1;
``clip_sample=False``; diffusers' float32 ``alphas_cumprod`` is replaced by our float64 table (as
tests/fixtures/make_plms_fixture.py does). The weights are create_model's plus a fixed 0.02 N(0, 1)
perturbation (as tests/fixtures/ssb_ddpm): the initial output convs are ~0, which would make eps ~0.

Printed per pair: wall time of each loop (best of ``--repeats``, interleaved), the ratio ours / diffusers, the
time spent outside eps (the loop's own overhead), and max |difference| of the samples in float32 (the timed
run) and in float64 (the same weights in float64 on ``--check_batch`` images, or with ``--check_model digits``
the digits U-Net, cheap on a loaded CPU: the pairs are the same algorithm, so only round-off remains; the script
exits 1 when a float64 difference exceeds 1e-9 relative).

  nice -n 0 python benchmarks/bench_peer_samplers.py [--num_steps 10] [--batch 4] [--repeats 2]
      [--check_model timed|digits] [--threads N] [--smoke]
"""
import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import late_start  # noqa: E402
import rng  # noqa: E402
import sampling  # noqa: E402
from models import utils as mutils  # noqa: E402
from sde_lib import DDPMSchedule  # noqa: E402
from bench_samplers import Timed  # noqa: E402  (the same eps-call timer as the overhead benchmark)

# (label, our method, our pndm variant or None, diffusers scheduler class name, its extra kwargs)
PAIRS = [('DDIM eta=0 | DDIMScheduler', 'ddim', None, 'DDIMScheduler', {'clip_sample': False}),
         ('F-PNDM | PNDMScheduler (PRK warm-up)', 'pndm', 'f-pndm', 'PNDMScheduler', {'skip_prk_steps': False}),
         ('PLMS | PNDMScheduler(skip_prk_steps=True)', 'pndm', 'plms', 'PNDMScheduler', {'skip_prk_steps': True})]
TOL64 = 1e-9  # float64 max |diff| / max |x| above which a pair is reported as not matching


def load_config(name):
  """configs/ddpm/<name>.py's config ('cifar10' or 'digits')."""
  import importlib
  return importlib.import_module(f'configs.ddpm.{name}').get_config()


def perturbed_model(config):
  """create_model(config) with p += 0.02 N(0, 1) for every parameter (fixed seeds; module doc)."""
  torch.manual_seed(0)
  model = mutils.create_model(config)
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.02 * torch.randn(p.shape, generator=gen))
  return model


def float64_eps_fn(model):
  """eps(x, t) of a float64 copy of the model in eval mode (ema_eps_fn returns float32). The U-Net's
  sinusoidal time embedding is float32 by construction (models/layers.py); a pre-hook casts it for the first
  dense layer, so all later arithmetic is float64."""
  net = copy.deepcopy(model).double().eval().requires_grad_(False)
  first_dense = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
  first_dense.register_forward_pre_hook(lambda mod, args: (args[0].to(mod.weight.dtype),))

  def eps_fn(x, t):
    return net(x.double(), torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0]))
  return eps_fn


def diffusers_scheduler(name, kwargs, schedule):
  """diffusers' scheduler on our grid and table: leading spacing, alpha_bar(-1) = 1, our float64 alpha_bar."""
  import diffusers
  sched = getattr(diffusers, name)(num_train_timesteps=schedule.T, beta_schedule='linear',
                                   beta_start=float(schedule.beta[0]), beta_end=float(schedule.beta[-1]),
                                   set_alpha_to_one=True, timestep_spacing='leading', steps_offset=0, **kwargs)
  sched.alphas_cumprod = schedule.alpha_bar_table.clone()
  sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
  return sched


def diffusers_loop(sched, n, eps_fn, x):
  """diffusers' pipeline loop (DDIMPipeline / PNDMPipeline) with eps_fn in place of unet(x, t).sample."""
  sched.set_timesteps(n)
  for t in sched.timesteps:
    x = sched.step(eps_fn(x, t), t, x).prev_sample
  return x


def run_pair(pair, config, schedule, n, eps_fn, x_init, repeats):
  """{'ours': (best s, outside-eps s, calls, x), 'diffusers': ...} for one pair; interleaved repeats."""
  label, method, variant, sched_name, kwargs = pair
  if variant is not None:
    config.sampling.pndm_variant = variant
  config.sampling.eta = 0.0
  spec = sampling.RunSpec.from_config(config.sampling, method=method, num_steps=n, init='normal', grid='uniform')
  plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
  sched = diffusers_scheduler(sched_name, kwargs, schedule)
  runs = {'ours': lambda f: plan.sampler(f, schedule, x_init, plan.timesteps, **plan.options),
          'diffusers': lambda f: diffusers_loop(sched, n, f, x_init)}
  best = {}
  for _ in range(repeats):
    for side, run in runs.items():
      timed = Timed(eps_fn)
      t0 = time.perf_counter()
      x = run(timed)
      total = time.perf_counter() - t0
      if side not in best or total < best[side][0]:
        best[side] = (total, total - timed.seconds, timed.calls, x)
  if best['ours'][2] != plan.nfe or best['diffusers'][2] != plan.nfe:
    print(f'[note] {label}: calls ours {best["ours"][2]}, diffusers {best["diffusers"][2]}, plan NFE {plan.nfe}')
  return best


def max_diff(a, b):
  """(max |a - b|, that / max |b|)."""
  d = (a.double() - b.double()).abs().max().item()
  return d, d / b.double().abs().max().item()


def setup(config_name, num_images):
  """(config, schedule, perturbed model, x_init (num_images, C, H, W) float32 from per-sample generators)."""
  config = load_config(config_name)
  model = perturbed_model(config)
  shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
  x_init = rng.randn((num_images, *shape), rng.per_sample_generators(0, range(num_images)))
  return config, DDPMSchedule.from_config(config), model, x_init


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--num_steps', type=int, default=10, help='n (F-PNDM pair: max(n, 4))')
  p.add_argument('--batch', type=int, default=4, help='images in the timed float32 run')
  p.add_argument('--check_batch', type=int, default=1, help='images in the float64 check')
  p.add_argument('--check_model', choices=('timed', 'digits'), default='timed',
                 help='float64 check on the timed U-Net, or on the digits U-Net (cheap, for a loaded CPU)')
  p.add_argument('--repeats', type=int, default=2, help='timed runs per loop, interleaved; the best counts')
  p.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default; --smoke: 1)')
  p.add_argument('--smoke', action='store_true', help='toy size (digits U-Net, n=2, 2 images, 1 repeat)')
  args = p.parse_args()
  if args.smoke:  # one thread: on a shared, oversubscribed CPU two spinning threads are ~20x slower here
    args.num_steps, args.batch, args.check_batch, args.repeats = 2, 2, 2, 1
    args.threads, args.check_model = args.threads or 1, 'timed'
  return args


def main():
  args = parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  import diffusers
  name = 'digits' if args.smoke else 'cifar10'
  config, schedule, model, x_init = setup(name, args.batch)
  check = setup('digits' if args.check_model == 'digits' else name, args.check_batch)
  print(f'torch {torch.__version__}, diffusers {diffusers.__version__}, threads {torch.get_num_threads()}, '
        f'{config.data.dataset} U-Net {mutils.count_parameters(model):,} params, {tuple(x_init.shape[1:])}; '
        f'float64 check: {check[0].data.dataset} U-Net; load avg {os.getloadavg()[0]:.2f} (1 min) at start')
  eps32, eps64 = mutils.ema_eps_fn(model), float64_eps_fn(check[2])
  eps32(x_init, 0.0)  # first-call allocations are not timed
  rows, failed = [], []
  for pair in PAIRS:
    n = max(args.num_steps, 4) if pair[2] == 'f-pndm' else args.num_steps
    with torch.inference_mode():
      b32 = run_pair(pair, config, schedule, n, eps32, x_init, args.repeats)
      b64 = run_pair(pair, check[0], check[1], n, eps64, check[3].double(), 1)
    d32, d64 = max_diff(b32['ours'][3], b32['diffusers'][3]), max_diff(b64['ours'][3], b64['diffusers'][3])
    if not d64[1] <= TOL64:
      failed.append(pair[0])
    (to, oo, calls, _), (td, od, _, _) = b32['ours'], b32['diffusers']
    rows.append(f'| {pair[0]} | {n} | {calls} | {to:.3f} | {td:.3f} | {to / td:.3f}x | {1e3 * oo:.1f} / '
                f'{1e3 * od:.1f} | {d32[0]:.1e} ({d32[1]:.0e} rel.) | {d64[0]:.1e} ({d64[1]:.0e} rel.) |')
  print(f'\nbatch {args.batch} (float32, best of {args.repeats}); float64 check on {args.check_batch} image(s); '
        f'load avg {os.getloadavg()[0]:.2f} (1 min) at end\n')
  print('| ours | diffusers | n | NFE | ours s | diffusers s | ours / diffusers | outside eps ms (ours / diffusers) '
        '| max abs diff float32 | max abs diff float64 |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  print('\n'.join(rows))  # each label holds 'ours | diffusers'
  if failed:
    print(f'NOT EQUAL in float64 (> {TOL64:g} relative): {failed}')
    sys.exit(1)


if __name__ == '__main__':
  main()
