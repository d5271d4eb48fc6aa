"""Convergence order of the samplers on Gaussian data, against the exact probability-flow solution.

  python benchmarks/bench_solver_order.py [--smoke]

Data N(mu, Sigma) in D = 16 (analysis.gaussian: exact eps, exact ODE flow). Each sampler runs from 64 standard-normal
states at t_start = 400 (a late start) on the time-uniform integer grid of n points down to t_end = 50; the error is
the mean Euclidean distance of its state at t_end from the exact flow (the final step to t = -1, which each sampler
takes its own way, is left out). Prints a markdown table: error per n, NFE, and the measured order (slope of
log error against log n over the last three n), for two sets of n:
  (a) n - 1 divides 350, so the grid's steps are all equal (8 to 176 points);
  (b) n = 10, 20, ..., 160, where rounding to integer times makes neighbouring steps differ by one (e.g. 4 and 5).
PNDM's pseudo linear multistep assumes equal steps (its weights are fixed), DPM-Solver++ and UniPC take each step's
ratio r into account. --smoke: two small n (a run check).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import samplers  # noqa: E402
from analysis import gaussian  # noqa: E402
from sde_lib import DDPMSchedule  # noqa: E402

ROWS = [('ddim', {}, 'DDIM (eta = 0)'), ('pndm', {'variant': 'f-pndm'}, 'F-PNDM'),
        ('pndm', {'variant': 'plms'}, 'PLMS'), ('dpmpp_2m', {}, 'DPM-Solver++(2M)'), ('unipc', {}, 'UniPC (bh2)')]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--smoke', action='store_true', help='n = 5, 10 only (a run check)')
  args = parser.parse_args()
  schedule = DDPMSchedule()
  sets = [('equal steps', (8, 15))] if args.smoke else [('(a) equal steps', (8, 15, 36, 71, 176)),
                                                          ('(b) rounded steps', (10, 20, 40, 80, 160))]
  for title, ns in sets:
    print(f'\n{title}:\n')
    table(schedule, ns)


def table(schedule, ns):
  header = ['sampler'] + [f'n = {n}' for n in ns] + ['NFE at n', 'order']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for method, options, name in ROWS:
    errs = [gaussian.ode_error(samplers.get_sampler(method), schedule, n, **options) for n in ns]
    tail = min(3, len(ns))
    order = -np.polyfit(np.log(ns[-tail:]), np.log(errs[-tail:]), 1)[0]
    nfe = samplers.nfe(method, ns[-1], **options) - ns[-1]
    print(f'| {name} | ' + ' | '.join(f'{e:.2e}' for e in errs) + f' | n{nfe:+d} | {order:.2f} |'.replace('n+0', 'n'))


if __name__ == '__main__':
  main()
