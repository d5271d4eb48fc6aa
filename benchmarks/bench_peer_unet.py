"""Our DDPM U-Net against diffusers' UNet2DModel configured to the same architecture, side by side in one run.

diffusers' model is built from our config (docs/model.md): block_out_channels = nf * ch_mult, layers_per_block
= num_res_blocks, an Attn{Down,Up}Block2D at every level whose resolution is in attn_resolutions (attention
after every ResBlock on both paths, as our 'ssb' variant and Ho et al.), a ResBlock-Attn-ResBlock middle, one
head of full width (attention_head_dim=None), GroupNorm(32, eps 1e-6), dropout, conv down/up-sampling with
DDPM's (0, 1, 0, 1) padding (downsample_padding=0), and the [sin, cos] embedding with shift 1
(flip_sin_to_cos=False, freq_shift=1). The CIFAR-10 config (nf 128, ch_mult (1, 2, 2, 2), 2 ResBlocks,
attention at 16x16) has the same parameter count in both; the per-tensor sizes are compared too (our 1x1
"NIN" layers store (in, out) matrices, diffusers (out, in, 1, 1) convs or (out, in) linears).

Timed, interleaved, median of ``--repeats`` after one warm-up each: a training step (forward + MSE to eps +
backward + Adam step, train mode, batch ``--batch`` at the config's resolution, the same inputs for both) and
an eval forward (inference mode, batch ``--eval_batch``).

  nice -n 0 python benchmarks/bench_peer_unet.py [--batch 8] [--repeats 3] [--threads N] [--smoke]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from models import utils as mutils  # noqa: E402


def load_config(smoke):
  """CIFAR-10 config; --smoke: a 16x16, nf 32, ch_mult (1, 2), 1 ResBlock, attention at 8 toy."""
  from configs.ddpm import cifar10
  config = cifar10.get_config()
  if smoke:
    config.data.image_size = 16
    config.model.nf, config.model.ch_mult, config.model.num_res_blocks = 32, (1, 2), 1
    config.model.attn_resolutions = (8,)
  return config


def diffusers_unet(config):
  """diffusers.UNet2DModel with our config's depth, widths, attention resolutions and layers (module doc)."""
  from diffusers import UNet2DModel
  m, size = config.model, config.data.image_size
  attn = [size // 2 ** i in m.attn_resolutions for i in range(len(m.ch_mult))]
  return UNet2DModel(
      sample_size=size, in_channels=config.data.num_channels, out_channels=config.data.num_channels,
      block_out_channels=tuple(m.nf * k for k in m.ch_mult), layers_per_block=m.num_res_blocks,
      down_block_types=tuple('AttnDownBlock2D' if a else 'DownBlock2D' for a in attn),
      up_block_types=tuple('AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attn)),
      attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, dropout=m.dropout, act_fn='silu',
      flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)


def train_step(model, optimizer, x_t, t, eps, unwrap):
  """One step: forward, MSE to eps, backward, Adam."""
  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.mean((unwrap(model(x_t, t)) - eps) ** 2)
    loss.backward()
    optimizer.step()
  return step


def forward(model, x, t, unwrap):
  def run():
    with torch.inference_mode():
      unwrap(model(x, t))
  return run


def interleaved_medians(fns, repeats):
  """{name: median seconds}: one warm-up call each, then `repeats` rounds calling every fn once per round."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(ts) for name, ts in times.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=8, help='training batch')
  p.add_argument('--eval_batch', type=int, default=4)
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--threads', type=int, default=0, help='torch threads (0 = torch default; --smoke: 1)')
  p.add_argument('--smoke', action='store_true', help='toy size (tiny U-Net, 2 images, 1 repeat)')
  args = p.parse_args()
  if args.smoke:  # one thread: on a shared, oversubscribed CPU two spinning threads are much slower
    args.batch, args.eval_batch, args.repeats, args.threads = 2, 2, 1, args.threads or 1
  if args.threads:
    torch.set_num_threads(args.threads)
  import diffusers
  config = load_config(args.smoke)
  torch.manual_seed(0)
  models = {'ours': mutils.create_model(config), 'diffusers': diffusers_unet(config)}
  unwrap = {'ours': lambda out: out, 'diffusers': lambda out: out.sample}
  counts = {k: mutils.count_parameters(v) for k, v in models.items()}
  sizes = {k: sorted(p.numel() for p in v.parameters()) for k, v in models.items()}
  m, c = config.model, config.data
  print(f'torch {torch.__version__}, diffusers {diffusers.__version__}, threads {torch.get_num_threads()}, '
        f'load avg {os.getloadavg()[0]:.2f} (1 min) at start')
  print(f'config: {c.image_size}x{c.image_size}x{c.num_channels}, nf {m.nf}, ch_mult {tuple(m.ch_mult)}, '
        f'{m.num_res_blocks} ResBlocks, attention at {tuple(m.attn_resolutions)}, dropout {m.dropout}, '
        f'our variant {m.variant}')
  print(f'parameters: ours {counts["ours"]:,} ({len(sizes["ours"])} tensors), diffusers UNet2DModel '
        f'{counts["diffusers"]:,} ({len(sizes["diffusers"])} tensors); same per-tensor sizes: '
        f'{sizes["ours"] == sizes["diffusers"]}')
  if sizes['ours'] != sizes['diffusers']:
    sys.exit('diffusers UNet2DModel is not configured to our architecture (parameter sizes differ)')

  gen = torch.Generator().manual_seed(0)
  shape = (args.batch, c.num_channels, c.image_size, c.image_size)
  x_t, eps = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
  t = torch.randint(0, m.num_scales, (args.batch,), generator=gen).float()
  steps = {}
  for name, model in models.items():
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=config.optim.lr, foreach=True)  # run_lib's multi-tensor Adam
    steps[name] = train_step(model, opt, x_t, t, eps, unwrap[name])
  train = interleaved_medians(steps, args.repeats)
  for model in models.values():
    model.eval()
  x_e, t_e = x_t[:args.eval_batch], t[:args.eval_batch]
  evals = interleaved_medians({k: forward(v, x_e, t_e, unwrap[k]) for k, v in models.items()}, args.repeats)

  print(f'\nmedian of {args.repeats} after one warm-up; load avg {os.getloadavg()[0]:.2f} (1 min) at end\n')
  print(f'| model | params | train step (batch {args.batch}) | eval forward (batch {args.eval_batch}) |')
  print('|---|---|---|---|')
  for name, label in (('ours', f'ours (models/ddpm.py, {m.variant})'), ('diffusers', 'diffusers UNet2DModel')):
    print(f'| {label} | {counts[name]:,} | {train[name]:.3f} s | {evals[name]:.3f} s |')
  print(f'| ours / diffusers | {counts["ours"] / counts["diffusers"]:.4f} | {train["ours"] / train["diffusers"]:.3f}x '
        f'| {evals["ours"] / evals["diffusers"]:.3f}x |')


if __name__ == '__main__':
  main()
