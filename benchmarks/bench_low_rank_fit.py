"""The rank-r late-start fit at 256x256 without the covariance (samplers/low_rank_fit.py): time and peak memory.

Synthetic data in the image-folder layout (docs/data.md, "Image folders"): N PNGs of 256x256 RGB with a
low-dimensional structure (a few smooth random patterns mixed with random weights, plus pixel noise), read through
datasets.model_batches exactly as --mode=gauss_stats reads a real folder (decode, crop, resize, every pass).
Each rank runs in its own subprocess, which resets its peak RSS (Linux VmHWM) before the fit and reports the
growth, so the data and another case are not counted. Also printed: what the full covariance would take.

  nice -n 0 python benchmarks/bench_low_rank_fit.py [--num_images 256] [--ranks 16,64] [--threads 2]
  python benchmarks/bench_low_rank_fit.py --smoke
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

from bench_gls_fit import _peak_rss_kib, _reset_peak_rss  # noqa: E402


def write_folder(root, n, size, seed=0):
  """root/train/NNNNN.png: n RGB images, x = sum_j w_j P_j + noise (8 smooth patterns P_j), in [0, 255]."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  patterns = [np.stack([np.sin(2 * np.pi * (a * xx + b * yy) + c) for c in rng.uniform(0, 6, 3)], -1)
              for a, b in rng.integers(1, 6, (8, 2))]
  os.makedirs(os.path.join(root, 'train'), exist_ok=True)
  for i in range(n):
    img = sum(w * p for w, p in zip(rng.normal(0, 1, 8), patterns)) * 30 + 128 + rng.normal(0, 10, (size, size, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(root, 'train', f'{i:05d}.png'))


def _config(root, size, rank):
  from configs.ddpm import celebahq256_diffusers
  config = celebahq256_diffusers.get_config()
  config.data.root, config.data.image_size, config.sampling.gls_rank = root, size, rank
  config.model.pretrained, config.training.num_workers = '', 0
  return config


def _child(args):
  import torch
  import datasets
  from samplers import low_rank_fit
  torch.set_num_threads(args.threads)
  config = _config(args.root, args.size, args.rank)
  dim = 3 * args.size ** 2
  base = _reset_peak_rss()
  t0 = time.perf_counter()
  fit = low_rank_fit.streaming_low_rank(lambda: datasets.model_batches(config, batch_size=64, progress=False), dim,
                                        args.rank)
  print(json.dumps(dict(seconds=time.perf_counter() - t0, peak_growth_gb=(_peak_rss_kib() - base) / 2 ** 20,
                        top=fit['eigvals'][:3].tolist(), count=fit['count'])))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=256)
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--ranks', default='16,64')
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--smoke', action='store_true', help='16 images of 32x32, rank 4')
  parser.add_argument('--child', action='store_true')
  parser.add_argument('--root')
  parser.add_argument('--rank', type=int)
  args = parser.parse_args()
  if args.child:
    return _child(args)
  if args.smoke:
    args.num_images, args.size, args.ranks = 16, 32, '4'
  from samplers import low_rank_fit
  dim = 3 * args.size ** 2
  with tempfile.TemporaryDirectory() as root:
    write_folder(root, args.num_images, args.size)
    print(f'D = {dim:,}, N = {args.num_images} images ({args.size}x{args.size} PNG, image-folder layout), '
          f'{args.threads} threads; the full float64 covariance would take '
          f'{low_rank_fit.full_covariance_bytes(dim) / 2 ** 30:.1f} GiB\n')
    print('| rank r | passes over the data | seconds | peak memory growth (GB) | top eigenvalues |')
    print('|---|---|---|---|---|')
    for rank in (int(r) for r in args.ranks.split(',')):
      cmd = [sys.executable, os.path.abspath(__file__), '--child', '--root', root, '--size', str(args.size),
             '--rank', str(rank), '--threads', str(args.threads)]
      out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
                       .stdout.strip().splitlines()[-1])
      print(f"| {rank} | 8 | {out['seconds']:.1f} | {out['peak_growth_gb']:.2f} | "
            f"{', '.join(f'{v:.1f}' for v in out['top'])} |")


if __name__ == '__main__':
  main()
