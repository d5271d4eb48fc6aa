"""Training speed of a config through the real loop (run_lib.train): steps per second on this machine.

  python benchmarks/bench_train.py [--config configs/ddpm/digits.py] [--steps 300] [--smoke]

Runs --steps steps in a temporary workdir with the config's batch size, logging, eval loss and preemption
checkpoints as configured (snapshot sample grids off, so the number is the training loop alone), and
reports the wall time of the steps after the first 20 (warm-up excluded). --smoke: 3 steps after a 2-step
warm-up, only to show the script runs (tests/test_benchmarks.py).
"""
import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
sys.path.insert(0, ROOT)

import run_lib  # noqa: E402
from configs.validation import load_config_file  # noqa: E402


def timed_train(config, steps, workdir):
  config.training.n_iters = steps
  config.training.snapshot_sampling = False
  config.training.snapshot_freq = steps
  start = time.perf_counter()
  run_lib.train(config, workdir)
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs', 'ddpm', 'digits.py'))
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--smoke', action='store_true', help='3 steps after a 2-step warm-up (a run check, no timing)')
  args = parser.parse_args()
  warm_steps = 2 if args.smoke else 20
  if args.smoke:
    args.steps = 3
  config = load_config_file(args.config)
  with tempfile.TemporaryDirectory() as tmp:
    warm = timed_train(load_config_file(args.config), warm_steps, os.path.join(tmp, 'warm'))
    total = timed_train(config, args.steps + warm_steps, os.path.join(tmp, 'run'))
  per_step = (total - warm) / args.steps
  print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, config {args.config}, '
        f'batch {config.training.batch_size}')
  n_iters = load_config_file(args.config).training.n_iters
  print(f'{args.steps} steps after a {warm_steps}-step warm-up: {per_step * 1000:.1f} ms/step, '
        f'{1 / per_step:.2f} steps/s (n_iters={n_iters} would take {n_iters * per_step:.0f} s)')


if __name__ == '__main__':
  main()
