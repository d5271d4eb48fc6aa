"""U-Net fast paths against eager fp32, in one run: bf16 autocast, channels_last, torch.compile (and TF32 on CUDA).

  python benchmarks/bench_fast_paths.py [--smoke] [--no-compile] [--threads N]

Workloads (each through the project's own code, so the flags act exactly as in training and sampling):
  digits train step   run_lib._train_step on one real digits batch (batch 128, 0.70M-parameter U-Net):
                      forward + loss + backward + clip + Adam + EMA; reported as steps/s;
  CIFAR-10 forward    models.utils.ema_eps_fn (the samplers' eps function), batch 8, eval mode;
  CIFAR-10 train step run_lib._train_step, batch 8.
For each workload: eager fp32, then each flag alone, then the combination of the flags that were each at least
3% faster alone ("best combination"). The timed calls of the variants are interleaved (round-robin) so that
load changes on a shared machine hit all alike; time is the median per variant; 'first call' is the first
call alone (for compile, the compilation). 'rel. diff' is |out - out_fp32| / |out_fp32| of the
eps output (forward) or of the loss after the same steps from the same init (training), so a row that changes
results shows it.
On CUDA the same workloads run again with larger batches, with TF32 as a training-only flag; without CUDA the
script says so. --smoke: toy sizes, no compile, a few calls (checks only that the script runs).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import datasets  # noqa: E402
import run_lib  # noqa: E402
import sde_lib  # noqa: E402
from configs.ddpm import cifar10, digits  # noqa: E402
from models import utils as mutils  # noqa: E402

FLAGS = {  # row name -> overrides of the eager fp32 config
    'channels_last': {'channels_last': True},
    'bf16 autocast': {'precision': 'bf16'},
    'torch.compile': {'compile': True},
    'TF32 (training)': {'tf32': True},
}
GAIN = 1.03  # a flag joins the best combination when it alone is at least this much faster


def _config(base, flags, batch):
  config = base()
  config.training.batch_size = batch
  config.model.channels_last = flags.get('channels_last', False)
  config.training.precision = config.eval.precision = flags.get('precision', 'fp32')
  config.training.compile = config.eval.compile = flags.get('compile', False)
  config.training.tf32 = flags.get('tf32', False)
  return config


def _smoke(config):
  config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 32, (1, 2), 1
  config.data.image_size, config.model.attn_resolutions = 8, (4,)
  return config


def train_runner(base, flags, batch, device, smoke):
  """call() -> loss (0-d tensor): one training step of ``base`` with ``flags`` on one fixed batch."""
  config = _config(base, flags, batch)
  if smoke:
    _smoke(config)
  if config.data.dataset.upper() == 'DIGITS':
    ds = datasets.get_dataset(config, 'train')
    x = torch.stack([ds[i][0] for i in range(batch)])
  else:  # CIFAR-10 images are not needed for timing: uniform pixels of the right shape
    x = torch.rand(batch, config.data.num_channels, config.data.image_size, config.data.image_size,
                   generator=torch.Generator().manual_seed(0))
  x = datasets.get_data_scaler(config)(x).to(device)
  model, ema, optimizer = run_lib.build_state(config, device)
  step_model = run_lib._step_model(model, config.training.compile)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  state = {'step': 1000}  # past the lr warm-up

  def call():
    with run_lib._tf32(config.training.tf32):
      loss = run_lib._train_step(config, step_model, ema, optimizer, schedule, x, state['step'])[0]
    state['step'] += 1
    return torch.tensor(loss)
  return call


def forward_runner(base, flags, batch, device, smoke):
  """call() -> eps (B, C, H, W) float32: one eps_fn call of a randomly initialised U-Net of ``base``."""
  config = _config(base, flags, batch)
  if smoke:
    _smoke(config)
  torch.manual_seed(0)
  model = mutils.create_model(config).to(device)
  with torch.no_grad():  # the init zeroes the last conv; random weights make the outputs worth comparing
    for p in model.parameters():
      p.copy_(torch.randn_like(p) / (p[0].numel() ** 0.5 if p.dim() > 1 else 10.))
  eps_fn = mutils.ema_eps_fn(model, precision=config.eval.precision, channels_last=config.model.channels_last,
                             compile=config.eval.compile)
  gen = torch.Generator().manual_seed(1)
  shape = (batch, config.data.num_channels, config.data.image_size, config.data.image_size)
  x, t = torch.randn(shape, generator=gen), torch.randint(0, 1000, (batch,), generator=gen).float()
  return lambda: eps_fn(x, t)


def _sync(device):
  if torch.device(device).type == 'cuda':
    torch.cuda.synchronize()


def _timed(call, device):
  t0 = time.perf_counter()
  out = call()
  _sync(device)
  return time.perf_counter() - t0, out


def interleaved(make, variants, warmup, repeats, device):
  """{label: (first call s, median s per call, last output)} of ``variants`` ({label: flags}).

  Each variant is built, called once (timed: for compile, the compilation) and warmed up; then the timed calls
  go round-robin, one call of each variant per round, so a change of load on the shared machine hits every
  variant alike. Every variant makes the same calls, so the last outputs compare (training: the loss after
  1 + warmup + repeats steps from the same init).
  """
  calls, first = {}, {}
  for label, flags in variants.items():
    calls[label] = make(flags)
    first[label] = _timed(calls[label], device)[0]
    for _ in range(warmup):
      calls[label]()
  times, outs = {label: [] for label in variants}, {}
  for _ in range(repeats):
    for label, call in calls.items():
      sec, outs[label] = _timed(call, device)
      times[label].append(sec)
  return {label: (first[label], statistics.median(times[label]), outs[label].detach().float().cpu())
          for label in variants}


def run_workload(name, make, flag_names, warmup, repeats, device, per_second=False):
  """Markdown rows: eager fp32 and each flag (interleaved), then the best combination against eager fp32
  again (a second interleaved group); each ratio is against the eager fp32 of its own group."""
  res = interleaved(make, {'eager fp32': {}, **{f: FLAGS[f] for f in flag_names}}, warmup, repeats, device)
  base = res['eager fp32']
  rows = [(label, *res[label], base) for label in res]
  winners = [f for f in flag_names if base[1] / res[f][1] >= GAIN]
  if len(winners) >= 2:
    label = 'best: ' + ' + '.join(winners)
    combined = {k: v for f in winners for k, v in FLAGS[f].items()}
    res = interleaved(make, {'eager fp32': {}, label: combined}, warmup, repeats, device)
    rows.append((label, *res[label], res['eager fp32']))
  lines = []
  for label, first, sec, out, (_, base_s, base_out) in rows:
    speed = f'{1 / sec:.2f} steps/s' if per_second else f'{sec * 1000:.0f} ms'
    diff = float((out - base_out).norm() / base_out.norm())
    lines.append(f'| {name} | {label} | {speed} | {sec * 1000:.1f} ms | {base_s / sec:.2f}x | {first:.1f} s | '
                 f'{diff:.1e} |')
  if len(winners) < 2:
    lines.append(f'| {name} | best combination | fewer than two flags won alone: nothing to combine | | | | |')
  for line in lines:
    print(line, flush=True)
  return lines


def run_device(device, args):
  cuda = torch.device(device).type == 'cuda'
  flags = ['channels_last', 'bf16 autocast'] + ([] if args.no_compile or args.smoke else ['torch.compile'])
  train_flags = flags + (['TF32 (training)'] if cuda else [])
  b_digits, b_fwd, b_train = (8, 2, 2) if args.smoke else ((128, 128, 128) if cuda else (128, 8, 8))
  reps = (1, 2) if args.smoke else ((5, 20) if cuda else None)
  print(f'\n### {device}\n')
  print('| workload | variant | speed | per call | vs eager fp32 | first call | rel. diff |')
  print('|---|---|---|---|---|---|---|')
  run_workload(f'digits train step (batch {b_digits})',
               lambda f: train_runner(digits.get_config, f, b_digits, device, args.smoke), train_flags,
               *(reps or (3, 15)), device, per_second=True)
  run_workload(f'CIFAR-10 forward (batch {b_fwd})',
               lambda f: forward_runner(cifar10.get_config, f, b_fwd, device, args.smoke), flags,
               *(reps or (1, 5)), device)
  run_workload(f'CIFAR-10 train step (batch {b_train})',
               lambda f: train_runner(cifar10.get_config, f, b_train, device, args.smoke), train_flags,
               *(reps or (1, 3)), device)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--smoke', action='store_true', help='toy sizes, no compile: checks that the script runs')
  parser.add_argument('--no-compile', action='store_true', help='leave out the torch.compile rows')
  parser.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default)')
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
  print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, '
        f'CPU capability {torch.backends.cpu.get_cpu_capability()}, 1-min load {load:.2f} at start')
  start = time.perf_counter()
  run_device('cpu', args)
  if torch.cuda.is_available():
    run_device('cuda', args)
  else:
    print('\nCUDA: not run (no GPU)')
  load = os.getloadavg() if hasattr(os, 'getloadavg') else (float('nan'),) * 3
  print(f'\ntotal {time.perf_counter() - start:.0f} s; load average at the end {load[0]:.2f} (1 min), '
        f'{load[2]:.2f} (15 min)')


if __name__ == '__main__':
  main()
