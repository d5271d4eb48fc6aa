"""Where the MNIST training step's time goes: achieved GFLOP/s in fp32 and bf16 autocast against this CPU's measured
matmul peak, and the operators that take the time (BENCHMARKS.md, "Training step against the CPU's peak").

  python benchmarks/bench_train_flops.py [--config configs/ddpm/mnist5k.py] [--repeats 10] [--smoke]

In one run, interleaved (round-robin, so load changes hit every variant alike; medians reported):
  * a 2048 x 2048 matmul in fp32 and in bf16 (the peak a dense kernel reaches here);
  * the config's training step (run_lib._train_step: forward + loss + backward + clip + Adam + EMA) on one random
    batch, with training.precision fp32 and bf16; its FLOPs are counted by torch.utils.flop_counter (forward +
    backward of the U-Net; the optimiser's element-wise work is not counted).
Then a torch.profiler table of the bf16 step's most expensive operators. The CPU model and its bf16 flags are
printed first: bf16 is fast only where the CPU has AVX512_BF16 or AMX (models.utils.native_bf16).
--smoke: toy sizes, 2 repeats (a run check).
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import losses  # noqa: E402
import run_lib  # noqa: E402
import sde_lib  # noqa: E402
from configs.validation import load_config_file  # noqa: E402
from models import utils as mutils  # noqa: E402


def cpu_line():
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True).stdout
  except OSError:
    out = ''
  names = [ln.split(':', 1)[1].strip() for ln in out.splitlines() if ln.startswith('Model name')]
  model = names[0] if names else platform.processor()
  flags = sorted({f for f in ('avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile') if f in out.split()})
  return (f'CPU {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, flags {flags}; '
          f'native bf16 (models.utils.native_bf16): {mutils.native_bf16("cpu")}')


def step_flops(config, batch):
  """FLOPs of one forward + backward of the U-Net on ``batch`` (torch.utils.flop_counter)."""
  from torch.utils.flop_counter import FlopCounterMode
  model = mutils.create_model(config)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  with FlopCounterMode(display=False) as counter:
    losses.ddpm_loss(model, schedule, batch, torch.Generator().manual_seed(0)).backward()
  return counter.get_total_flops()


def variants(config, batch, size):
  a32, b32 = torch.randn(size, size), torch.randn(size, size)
  a16, b16 = a32.bfloat16(), b32.bfloat16()
  out = {'matmul fp32': (lambda: a32 @ b32, 2 * size ** 3), 'matmul bf16': (lambda: a16 @ b16, 2 * size ** 3)}
  flops = step_flops(config, batch)
  for precision in ('fp32', 'bf16'):
    c = config.copy_and_resolve_references()
    c.training.precision = precision
    model, ema, optimizer = run_lib.build_state(c, 'cpu')
    schedule = sde_lib.DDPMSchedule.from_config(c)
    counter = iter(range(10 ** 9))
    out[f'train step {precision}'] = (
        lambda c=c, m=model, e=ema, o=optimizer, s=schedule: run_lib._train_step(c, m, e, o, s, batch, next(counter)),
        flops)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')
  parser.add_argument('--config', default=os.path.join(root, 'configs', 'ddpm', 'mnist5k.py'))
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--smoke', action='store_true')
  args = parser.parse_args()
  config = load_config_file(args.config)
  size, repeats = (256, 2) if args.smoke else (2048, args.repeats)
  if args.smoke:
    config.training.batch_size, config.model.nf, config.model.ch_mult = 4, 16, (1, 2)
    config.model.num_groups = 8
  d = config.data
  batch = torch.rand(config.training.batch_size, d.num_channels, d.image_size, d.image_size) * 2 - 1
  print(cpu_line())
  runs = variants(config, batch, size)
  times = {name: [] for name in runs}
  for name, (fn, _) in runs.items():  # warm-up
    fn()
  for _ in range(repeats):
    for name, (fn, _) in runs.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  peak = {p: runs[f'matmul {p}'][1] / statistics.median(times[f'matmul {p}']) / 1e9 for p in ('fp32', 'bf16')}
  print(f'\n| workload | GFLOP | median ms | GFLOP/s | share of the {size}x{size} matmul peak (same precision) |')
  print('|---|---|---|---|---|')
  for name, (_, flops) in runs.items():
    ms = 1000 * statistics.median(times[name])
    rate = flops / statistics.median(times[name]) / 1e9
    print(f'| {name} | {flops / 1e9:.2f} | {ms:.1f} | {rate:.0f} | {rate / peak[name.split()[-1]]:.0%} |')
  profile(runs['train step bf16'][0], 2 if args.smoke else 5)


def profile(fn, steps):
  """The bf16 training step's operators by their own CPU time, over ``steps`` steps."""
  from torch.profiler import ProfilerActivity, profile as torch_profile
  with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      fn()
  print(f'\nbf16 training step, {steps} steps, operators by self CPU time:\n')
  print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=12, max_name_column_width=40))


if __name__ == '__main__':
  main()
