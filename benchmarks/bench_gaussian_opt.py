"""The `gaussian_opt` grid against the library grids, in closed form on a data set's fitted Gaussian (no network).

  python benchmarks/bench_gaussian_opt.py [--moments assets/stats/digits_8_moments.npz] [--ns 3,5,10]
      [--t_starts 999,200,400] [--methods ddim,dpmpp_2m,unipc] [--smoke]

For each sampler, n and start (999 = from N(0, I); otherwise the exact noised data at t_c, i.e. the Gaussian late
start on Gaussian data), the squared 2-Wasserstein distance (pixel units, samplers/gaussian_opt.py) between the
sampler's output and the exact output on N(mean, cov) of the moments file, for the grids late_start, karras, logsnr,
trailing and the searched gaussian_opt grid, which is printed. --smoke: a random 16-pixel Gaussian, n = 3.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import io_util  # noqa: E402
from samplers import gaussian_opt, get_sampler, grids  # noqa: E402
from sde_lib import DDPMSchedule  # noqa: E402

GRIDS = ('late_start', 'karras', 'logsnr', 'trailing')


def rows(m, lam, methods, ns, t_starts, schedule):
  out = []
  for method in methods:
    sampler = get_sampler(method)
    for n in ns:
      for t_start in t_starts:
        vanilla = t_start == schedule.T - 1
        errs = []
        for kind in GRIDS:
          g = grids.make_grid(kind, n, t_start)
          ok = g[0] == t_start
          errs.append(gaussian_opt.fitted_error(sampler, {}, schedule, m, lam, g, vanilla) if ok else float('nan'))
        t0 = time.time()
        grid, err = gaussian_opt.optimise(sampler, {}, schedule, m, lam, n, t_start, vanilla)
        out.append([method, n, 'vanilla' if vanilla else f'gls t_c={t_start}', *[f'{e:.4g}' for e in errs],
                    f'{err:.4g}', ', '.join(map(str, grid)), f'{time.time() - t0:.1f}'])
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--moments', default='assets/stats/digits_8_moments.npz')
  parser.add_argument('--ns', default='3,5,10')
  parser.add_argument('--t_starts', default='999,200,400')
  parser.add_argument('--methods', default='ddim,dpmpp_2m,unipc')
  parser.add_argument('--smoke', action='store_true')
  args = parser.parse_args()
  schedule = DDPMSchedule()
  if args.smoke:
    a = torch.randn(16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) / 4
    mean, cov, ns, t_starts, methods = torch.zeros(16), (a @ a.T).numpy(), [3], [999, 400], ['ddim']
  else:
    with np.load(args.moments) as f:
      mean, cov = f['mean'], f['cov']
    ns, t_starts = [int(v) for v in args.ns.split(',')], [int(v) for v in args.t_starts.split(',')]
    methods = args.methods.split(',')
  m, lam = gaussian_opt.eigenbasis(mean, cov, schedule)
  header = ['sampler', 'n', 'start', *GRIDS, 'gaussian_opt', 'gaussian_opt grid', 'search s']
  print(io_util.markdown_table(header, rows(m, lam, methods, ns, t_starts, schedule)))
  source = 'a random 16-pixel Gaussian' if args.smoke else args.moments
  print(f'squared W2 (pixel units, model space [-1, 1]) on the fitted Gaussian of {source} (D = {len(m)}); '
        'nan: the grid does not start at t_c.')


if __name__ == '__main__':
  main()
