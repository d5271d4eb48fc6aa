"""Sampler overhead and late-start cost on CPU (docs/samplers.md, docs/late_start.md).

(a) overhead: n = 10 steps of ddim and pndm (F-PNDM, 19 calls) on the CIFAR-10 U-Net config,
    batch 4. Overhead = wall time of the sampler minus the time spent inside eps_fn, as a
    percentage of the latter; also shown against NFE x (median time of one forward).
(b) late-start cost: 50k gls draws at D = 3072 (random SPD covariance, full rank) against one
    network forward per sample (extrapolated from the measured per-sample forward time).

  python benchmarks/bench_samplers.py [--stand-in] [--num-draws 50000] [--smoke]

--smoke: the stand-in net, 2 steps, batch 1, 100 draws at D = 48 (a run check, not a timing).

Uses models.utils.create_model + ema_eps_fn when present; otherwise (or with --stand-in) a
small conv stand-in, and says so (then the numbers in (b) are not the U-Net's).
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import late_start  # noqa: E402
import sampling  # noqa: E402
from configs.ddpm import cifar10  # noqa: E402
from samplers.initialisers import GaussianLateStart  # noqa: E402
from sde_lib import DDPMSchedule  # noqa: E402


def build_eps_fn(stand_in):
  """(eps_fn, description). The real CIFAR-10 U-Net if models.utils is importable."""
  if not stand_in:
    try:
      from configs.ddpm import cifar10
      from models import utils as mutils
      config = cifar10.get_config()
      config.device = 'cpu'
      model = mutils.create_model(config)
      return mutils.ema_eps_fn(model), 'CIFAR-10 U-Net (models.utils.create_model)'
    except (ImportError, AttributeError, TypeError) as e:
      print(f'[bench] models.utils not usable ({type(e).__name__}: {e}); using the stand-in')
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.SiLU(),
                            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.SiLU(),
                            torch.nn.Conv2d(64, 3, 3, padding=1)).eval()
  return (lambda x, t: net(x)), 'stand-in 3-layer conv (NOT the U-Net)'


class Timed:
  """Wraps eps_fn and accumulates the time spent inside it."""

  def __init__(self, fn):
    self.fn, self.seconds, self.calls = fn, 0.0, 0

  def __call__(self, x, t):
    t0 = time.perf_counter()
    out = self.fn(x, t)
    self.seconds += time.perf_counter() - t0
    self.calls += 1
    return out


def bench_overhead(eps_fn, schedule, batch=4, num_steps=10, repeats=3):
  config = cifar10.get_config()
  x_init = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
  fwd = []
  for _ in range(5):
    t0 = time.perf_counter()
    eps_fn(x_init, 500.0)
    fwd.append(time.perf_counter() - t0)
  t_fwd = float(np.median(fwd))
  for name in ['ddim', 'pndm']:
    spec = sampling.RunSpec.from_config(config.sampling, method=name, num_steps=num_steps, init='normal',
                                        t_start=999, grid='late_start')
    plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
    rows = []
    for _ in range(repeats):
      timed = Timed(eps_fn)
      t0 = time.perf_counter()
      plan.sampler(timed, schedule, x_init, plan.timesteps, **plan.options)
      total = time.perf_counter() - t0
      rows.append((total, timed.seconds, timed.calls))
    total, inside, calls = min(rows)
    print(f'(a) {name:5s} n={num_steps} NFE={calls}: total {total:.3f}s, in eps_fn {inside:.3f}s, '
          f'overhead {100 * (total - inside) / inside:.2f}% (vs NFE x median forward '
          f'{calls * t_fwd:.3f}s: {100 * (total - calls * t_fwd) / (calls * t_fwd):+.2f}%)')
  return t_fwd / batch


def bench_gls(schedule, per_sample_forward, num_draws=50000, shape=(3, 32, 32), batch=500):
  dim = int(np.prod(shape))
  g = np.random.default_rng(0)
  a = g.standard_normal((dim, dim)) / np.sqrt(dim)
  cov = a @ a.T + 0.01 * np.eye(dim)
  t0 = time.perf_counter()
  gls = GaussianLateStart.from_moments(schedule, 500, np.zeros(dim), cov, shape)
  t_eig = time.perf_counter() - t0
  gen = torch.Generator().manual_seed(0)
  t0 = time.perf_counter()
  done = 0
  while done < num_draws:
    gls.sample(min(batch, num_draws - done), gen, out_dtype=torch.float32)
    done += batch
  t_draw = time.perf_counter() - t0
  t_net = per_sample_forward * num_draws
  print(f'(b) gls D={dim}: eigh {t_eig:.2f}s (once for all t_c), {num_draws} draws {t_draw:.2f}s; '
        f'{num_draws} forwards ~ {t_net:.1f}s; gls / one forward per sample = '
        f'{100 * (t_draw + t_eig) / t_net:.2f}% (draws only {100 * t_draw / t_net:.2f}%)')


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--stand-in', action='store_true', help='skip the U-Net, use a tiny conv net')
  p.add_argument('--num-draws', type=int, default=50000)
  p.add_argument('--smoke', action='store_true', help='stand-in net, tiny sizes: a run check, not a timing')
  args = p.parse_args()
  torch.manual_seed(0)
  eps_fn, desc = build_eps_fn(args.stand_in or args.smoke)
  print(f'[bench] eps_fn: {desc}; torch threads {torch.get_num_threads()}')
  size = dict(batch=1, num_steps=2, repeats=1) if args.smoke else {}
  with torch.inference_mode():
    per_sample = bench_overhead(eps_fn, DDPMSchedule(), **size)
    if args.smoke:
      bench_gls(DDPMSchedule(), per_sample, 100, shape=(3, 4, 4), batch=50)
    else:
      bench_gls(DDPMSchedule(), per_sample, args.num_draws)


if __name__ == '__main__':
  main()
