"""Times pytorch-fid's calculate_activation_statistics against our evaluation.feature_moments on the same
images and the same network object, and checks the two means agree (SPEC 7: channels_last +
inference_mode should be ~1.8x faster on CPU).

  python benchmarks/bench_fid.py --num_images 200 --batch_size 50
"""
import argparse
import copy
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation  # noqa: E402


def _write_pngs(images_u8, folder):
  """images_u8: (N,H,W,3) uint8 -> list of PNG paths."""
  paths = []
  for i, img in enumerate(images_u8):
    paths.append(os.path.join(folder, f'{i:05d}.png'))
    Image.fromarray(img).save(paths[-1])
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=200)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=50)
  parser.add_argument('--inception_path', default='')
  args = parser.parse_args()
  from pytorch_fid.fid_score import calculate_activation_statistics

  rng = np.random.default_rng(0)
  images_u8 = rng.integers(0, 256, size=(args.num_images, args.image_size, args.image_size, 3), dtype=np.uint8)
  images = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255  # the same values pytorch-fid decodes
  model = evaluation.load_inception(args.inception_path, 'cpu')
  print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, N={args.num_images}, '
        f'{args.image_size}x{args.image_size}, batch {args.batch_size}')

  with torch.inference_mode():  # warm-up, so that no timed run pays for first-call allocations
    model(torch.rand(2, 3, 299, 299))
  with tempfile.TemporaryDirectory() as folder:
    files = _write_pngs(images_u8, folder)
    t0 = time.perf_counter()
    mu_ref, sigma_ref = calculate_activation_statistics(files, model, args.batch_size, 2048, 'cpu', num_workers=0)
    t_ref = time.perf_counter() - t0
    # pytorch-fid's stock set-up: the same weights in the default contiguous (NCHW) memory format.
    stock = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    t0 = time.perf_counter()
    mu_stock, _ = calculate_activation_statistics(files, stock, args.batch_size, 2048, 'cpu', num_workers=0)
    t_stock = time.perf_counter() - t0

  batches = (images[i:i + args.batch_size] for i in range(0, len(images), args.batch_size))
  t0 = time.perf_counter()
  mu, sigma, n, _ = evaluation.feature_moments(batches, model, args.batch_size, progress=False)
  t_ours = time.perf_counter() - t0

  print(f'pytorch-fid calculate_activation_statistics: {t_ref:.2f} s ({args.num_images / t_ref:.1f} img/s)')
  print(f'evaluation.feature_moments:                  {t_ours:.2f} s ({args.num_images / t_ours:.1f} img/s)')
  print(f'pytorch-fid, stock NCHW model:               {t_stock:.2f} s ({args.num_images / t_stock:.1f} img/s)')
  print(f'speed-up vs same model object: {t_ref / t_ours:.2f}x; vs stock NCHW model: {t_stock / t_ours:.2f}x')
  print(f'max |mu diff| vs stock model = {np.abs(mu - mu_stock).max():.2e}')
  print(f'max |mu diff| = {np.abs(mu - mu_ref).max():.2e}, max |sigma diff| = {np.abs(sigma - sigma_ref).max():.2e}')
  assert n == args.num_images and np.allclose(mu, mu_ref, atol=1e-4), 'means disagree'


if __name__ == '__main__':
  main()
