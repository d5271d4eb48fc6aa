"""Gaussian late-start fit: time and peak memory of GaussianLateStart.from_moments, full eigh against the rank-r
subspace iteration, at D = 3,072 (32x32x3) and 12,288 (64x64x3).

The covariance is A^T A / (n - 1) of n = 2000 centred synthetic rows with a natural-image-like power-law spectrum
(lambda_i ~ 1 / i, as a 1/f^2 image power spectrum gives), in float64. Each fit runs in its own subprocess that
loads the covariance from a .npy file, resets its peak RSS (Linux VmHWM; else getrusage's ru_maxrss) and reports
the peak's growth during the fit, so neither the covariance itself nor another case's allocations are counted.
The top-r eigenvalues are compared with the full eigh's where it ran, and every rank-r fit reports its largest
relative residual ||S v - lambda v|| / lambda.

  nice -n 0 python benchmarks/bench_gls_fit.py                  # the full eigh at D = 12,288 only if idle
  nice -n 0 python benchmarks/bench_gls_fit.py --full_12288 yes  # ~6 minutes and 7 GB on 2 cores
  python benchmarks/bench_gls_fit.py --smoke                     # toy size, for CI
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def make_cov(dim, n=2000, seed=0):
  """(dim, dim) float64 sample covariance of n rows x = sum_i sqrt(1/i) g_i v_i, v_i random directions."""
  gen = torch.Generator().manual_seed(seed)
  m = min(n, dim)
  basis = torch.randn(m, dim, generator=gen, dtype=torch.float64) / dim ** 0.5
  scale = torch.arange(1, m + 1, dtype=torch.float64) ** -0.5
  rows = (torch.randn(n, m, generator=gen, dtype=torch.float64) * scale) @ basis
  rows -= rows.mean(0)
  return (rows.T @ rows / (n - 1)).numpy()


def _status_kib(field):
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def _reset_peak_rss():
  """Current RSS in KiB, with the peak (VmHWM) reset to it where Linux allows; else getrusage's peak so far."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')  # resets VmHWM to the current RSS (Linux >= 4.0)
    return _status_kib('VmRSS')
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kib():
  try:
    return _status_kib('VmHWM')
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _child(args):
  """One fit in this process: prints a JSON line with seconds, peak RSS growth and the top eigenvalues."""
  from samplers.initialisers import GaussianLateStart
  from sde_lib import DDPMSchedule
  if args.threads:
    torch.set_num_threads(args.threads)
  cov = np.load(args.cov_file)
  dim = cov.shape[0]
  base = _reset_peak_rss()
  t0 = time.perf_counter()
  fit = GaussianLateStart.from_moments(DDPMSchedule(), 500, np.zeros(dim), cov, (dim,), rank=args.rank,
                                       solver=args.solver)
  seconds = time.perf_counter() - t0
  peak = _peak_rss_kib()
  vals, vecs = fit.eigvals.flip(0)[:64], fit.eigvecs.flip(1)[:, :64]  # descending
  resid = ((torch.from_numpy(cov) @ vecs - vecs * vals).norm(dim=0) / vals).max().item()
  print(json.dumps(dict(seconds=seconds, peak_growth_gb=(peak - base) / 2 ** 20, top=vals.tolist(),
                        max_rel_residual=resid)))


def _run_case(cov_file, rank, solver, threads):
  cmd = [sys.executable, os.path.abspath(__file__), '--child', '--cov_file', cov_file, '--rank', str(rank),
         '--solver', solver, '--threads', str(threads)]
  out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--dims', default='3072,12288')
  parser.add_argument('--ranks', default='8,64')
  parser.add_argument('--full_12288', choices=('auto', 'yes', 'no'), default='auto',
                      help='auto: run the ~6-minute full eigh at D >= 12288 only if the 1-minute load is < 1.5')
  parser.add_argument('--threads', type=int, default=0,
                      help='torch threads in each fit; 0 = torch default. 1 is steadier on a shared machine')
  parser.add_argument('--smoke', action='store_true', help='toy size (CI): D = 256, rank 4')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--cov_file', help=argparse.SUPPRESS)
  parser.add_argument('--rank', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--solver', default='auto', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return _child(args)
  if args.smoke:
    args.dims, args.ranks = '256', '4'
  ranks = [int(r) for r in args.ranks.split(',')]
  threads = args.threads or torch.get_num_threads()
  print(f'torch {torch.__version__}, threads {threads}, load {os.getloadavg()[0]:.2f}')
  print('\n| D | fit | time (s) | peak memory growth (GB) | max rel. error of top-r eigenvalues vs full | '
        'max rel. residual |\n|---|---|---|---|---|---|')
  with tempfile.TemporaryDirectory() as folder:
    for dim in (int(d) for d in args.dims.split(',')):
      cov_file = os.path.join(folder, f'cov{dim}.npy')
      np.save(cov_file, make_cov(dim))
      run_full = dim < 12288 or args.full_12288 == 'yes' or (args.full_12288 == 'auto' and os.getloadavg()[0] < 1.5)
      full = _run_case(cov_file, 0, 'eigh', args.threads) if run_full else None
      if full:
        print(f'| {dim:,} | full eigh (rank 0) | {full["seconds"]:.1f} | {full["peak_growth_gb"]:.2f} | reference '
              f'| - |', flush=True)
      else:
        print(f'| {dim:,} | full eigh (rank 0) | not re-measured (machine busy) | | reference | - |', flush=True)
      for rank in ranks:
        res = _run_case(cov_file, rank, 'subspace', args.threads)
        err = 'n/a' if not full else \
            f'{np.max(np.abs(np.subtract(res["top"][:rank], full["top"][:rank])) / full["top"][:rank]):.1e}'
        print(f'| {dim:,} | rank {rank}, subspace iteration | {res["seconds"]:.1f} | '
              f'{res["peak_growth_gb"]:.2f} | {err} | {res["max_rel_residual"]:.1e} |', flush=True)
      os.remove(cov_file)


if __name__ == '__main__':
  main()
