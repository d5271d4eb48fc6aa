"""CPU cost of the CIFAR-10 DDPM U-Net (docs/model.md).

(a) one training step: forward + loss + backward + Adam step, batch 8 (one warm-up step, then
    the median of 3), as a markdown table row;
(b) one eval-mode forward at batch 4 through models.utils.ema_eps_fn (the samplers' eps function),
    for the sampler-overhead numbers.

  python benchmarks/bench_model.py [--variant ssb|score_sde] [--threads N] [--repeats 3] [--smoke]

--smoke: batch 1, one repeat (a run check, not a timing).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from configs.ddpm import cifar10  # noqa: E402
from models import ddpm, utils as mutils  # noqa: E402
from models.ema import ExponentialMovingAverage  # noqa: E402
from sde_lib import DDPMSchedule  # noqa: E402


def median_time(fn, repeats):
  """Run fn once to warm up, then `repeats` times; median wall seconds."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def train_step_fn(model, optimizer, ema, schedule, batch_size, generator):
  """A closure doing one DDPM training step (eps loss, reduce_mean; docs/model.md) on random images."""
  x0 = torch.rand(batch_size, 3, 32, 32, generator=generator) * 2 - 1

  def step():
    t = torch.randint(0, schedule.T, (batch_size,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = schedule.q_sample(x0, t, eps).float()
    loss = torch.mean((model(x_t, t.float()) - eps) ** 2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    ema.update(model.parameters())
  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--variant', default='ssb', choices=ddpm.VARIANTS)
  parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=8, help='training batch')
  parser.add_argument('--eval-batch', type=int, default=4)
  parser.add_argument('--smoke', action='store_true', help='batch 1, one repeat: a run check, not a timing')
  args = parser.parse_args()
  if args.smoke:
    args.repeats, args.batch, args.eval_batch = 1, 1, 1
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  config = cifar10.get_config()
  config.model.variant = args.variant
  model = mutils.create_model(config)
  schedule = DDPMSchedule.from_config(config)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                               eps=config.optim.eps)
  ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
  gen = torch.Generator().manual_seed(0)

  model.train()
  train_s = median_time(train_step_fn(model, optimizer, ema, schedule, args.batch, gen), args.repeats)

  eps_fn = mutils.ema_eps_fn(model, ema)
  x = torch.randn(args.eval_batch, 3, 32, 32, generator=gen)
  fwd_s = median_time(lambda: eps_fn(x, 500), args.repeats)

  print(f'threads={torch.get_num_threads()} torch={torch.__version__} device=cpu')
  print('| model | params | train step (batch %d) | s/image | eval forward (batch %d) | s/image |'
        % (args.batch, args.eval_batch))
  print('|---|---|---|---|---|---|')
  print(f'| DDPM CIFAR-10 ({args.variant}) | {mutils.count_parameters(model):,} | {train_s:.3f} s | '
        f'{train_s / args.batch:.3f} | {fwd_s:.3f} s | {fwd_s / args.eval_batch:.3f} |')


if __name__ == '__main__':
  main()
