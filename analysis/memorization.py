"""Reproducibility and memorization scores (Zhang et al., "The Emergence of Reproducibility and
Consistency in Diffusion Models", ICML 2024; formulas in docs/gen.md).

* RP score: two models sampled from the same initial noise (same seed per image); RP = fraction of
  index-matched pairs whose feature similarity is > threshold.
* Memorization: fraction of generated samples whose best similarity to the training set is
  > threshold; generalization = 1 - mem.
* kNN ratio (weight-free): a sample is memorised when d1/d2 < 1/3 (L2 to nearest / second nearest
  training image, flattened pixels).

The similarity of two images is the dot product of their features, as the feature net returns them
(the scores never re-normalise). Feature networks take images (N, C, H, W) in [0, 1] (torch or numpy)
and return (N, F) float32 rows:
  * a path to an SSCD TorchScript file (the papers' choice, ``sscd_disc_large``: resize to 320,
    ImageNet normalisation, 1024-d output); threshold 0.6 as in the papers. By default its outputs
    are used as they are, so the similarity is the raw dot product of SSCD features, as in the GEN
    reference code (the released SSCD TorchScript models end with an L2 normalisation, so for them
    this is the cosine). ``sscd_normalize=True`` (config.analysis.sscd_normalize) L2-normalises them
    first, for exports without that final normalisation;
  * 'pixels' (the offline default): flattened pixels minus a mean, L2-normalised (cosine). Centred by the
    training-set mean image when a ``reference`` set is given, else by each image's own mean (then
    the cosine is the pixel Pearson correlation, which needs no reference). Without centring every
    pair of non-negative images has a high cosine; centring removes the shared background. No weights
    to download, and at 8x8 (digits) pixel correlation is a meaningful near-duplicate measure;
  * 'inception': pool3 features of evaluation.load_inception (imported lazily), L2-normalised (cosine).
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

# Cosine thresholds per feature net. 'sscd': the papers' value. 'pixels' (reference=None, per-image
# centring): calibrated on sklearn digits with calibrate_digits_threshold() (seeds 0, 1, 2; 1497 train /
# 300 held out). Positives = training digits + Gaussian noise std 0.05 (in [0,1] units) vs themselves:
# min cosine 0.987-0.989. Negatives = held-out digits vs their nearest training digit: median 0.947,
# 99th percentile 0.981-0.983, max 0.990-0.994 (8x8 digits have near-duplicates across writers).
# Balanced-accuracy optimum 0.986-0.988 (balanced accuracy 0.998); we round to 0.985. With noise std
# 0.1 the classes overlap (best balanced accuracy 0.89): a pixel-cosine "copy" means within ~5% pixel
# noise of a training image, far stricter than SSCD's 0.6. Training-mean centring (reference=...) gives
# lower negatives (median 0.89) but needs its own threshold (0.976 at noise 0.05, seed 0).
DEFAULT_THRESHOLDS = {'sscd': 0.6, 'pixels': 0.985}

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _to_tensor(x, name='x'):
  if isinstance(x, np.ndarray):
    x = torch.from_numpy(x)
  if not torch.is_tensor(x):
    raise ValueError(f'{name} must be a torch tensor or numpy array, got {type(x).__name__}')
  return x


def _check_feats(a, b, name_a, name_b):
  a, b = _to_tensor(a, name_a), _to_tensor(b, name_b)
  if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must be (N, F) and (M, F) '
                     'with the same feature size F')
  return a, b


def best_match(sample_feats, train_feats, chunk_size=4096):
  """Best match of each sample in the training set by feature dot product, chunked over train.

  Features are used as given (L2-normalised rows give the cosine, in [-1, 1]).
  Returns (best_sim (N,) float64, nn_index (N,) int64 into train_feats).
  """
  a, b = _check_feats(sample_feats, train_feats, 'sample_feats', 'train_feats')
  if b.shape[0] < 1:
    raise ValueError('train_feats is empty')
  a = a.double()
  best = torch.full((a.shape[0],), -float('inf'), dtype=torch.float64)
  idx = torch.zeros(a.shape[0], dtype=torch.long)
  for lo in range(0, b.shape[0], chunk_size):
    sims, arg = (a @ b[lo:lo + chunk_size].double().T).max(1)
    better = sims > best
    best, idx = torch.where(better, sims, best), torch.where(better, arg + lo, idx)
  return best, idx


def reproducibility_score(feats_a, feats_b, threshold=0.6):
  """RP score: fraction of index-matched pairs (same seed) with feature dot product > threshold; in [0, 1]."""
  a, b = _check_feats(feats_a, feats_b, 'feats_a', 'feats_b')
  if a.shape[0] != b.shape[0]:
    raise ValueError(f'feats_a {tuple(a.shape)} and feats_b {tuple(b.shape)} must hold the same number of '
                     'samples (pairs are matched by index / seed)')
  sims = (a.double() * b.double()).sum(1)  # features as given: the cosine for L2-normalised nets
  return float((sims > threshold).double().mean())


def memorization_score(sample_feats, train_feats, threshold=0.6):
  """dict(mem, gen = 1 - mem, best_sim (N,) numpy, nn_index (N,) numpy); mem = frac(best_sim > threshold)."""
  best, idx = best_match(sample_feats, train_feats)
  mem = float((best > threshold).double().mean())
  return dict(mem=mem, gen=1.0 - mem, best_sim=best.numpy(), nn_index=idx.numpy())


def knn_ratio_memorization(samples, train, ratio=1 / 3, chunk_size=1024):
  """kNN-ratio memorization on flattened pixels: memorised when d1/d2 < ratio (docs/gen.md).

  samples (N, ...) and train (M, ...) with equal per-image shape, M >= 2.
  Returns dict(mem (float), ratios (N,) numpy d1/d2, nn_index (N,) numpy).
  """
  s, tr = _to_tensor(samples, 'samples'), _to_tensor(train, 'train')
  if tuple(s.shape[1:]) != tuple(tr.shape[1:]):
    raise ValueError(f'samples {tuple(s.shape)} and training set {tuple(tr.shape)} must have the same '
                     'per-image shape')
  if tr.shape[0] < 2:
    raise ValueError(f'the kNN ratio needs at least 2 training images, got {tr.shape[0]}')
  s, tr = s.reshape(s.shape[0], -1).double(), tr.reshape(tr.shape[0], -1).double()
  best2 = torch.full((s.shape[0], 2), float('inf'), dtype=torch.float64)  # running two smallest distances
  idx2 = torch.zeros((s.shape[0], 2), dtype=torch.long)
  for lo in range(0, tr.shape[0], chunk_size):
    d = torch.cdist(s, tr[lo:lo + chunk_size])
    both = torch.cat([best2, d], 1)
    both_idx = torch.cat([idx2, torch.arange(lo, lo + d.shape[1]).expand(s.shape[0], -1)], 1)
    best2, pos = both.topk(2, dim=1, largest=False)
    idx2 = both_idx.gather(1, pos)
  ratios = best2[:, 0] / best2[:, 1].clamp_min(1e-300)
  return dict(mem=float((ratios < ratio).double().mean()), ratios=ratios.numpy(), nn_index=idx2[:, 0].numpy())


# ----------------------------------------------------------------------------- feature networks
class PixelFeatures:
  """Mean-centred, L2-normalised flattened pixels: images (N, C, H, W) in [0, 1] -> (N, C*H*W) float32.

  mean_image: (C, H, W) training-set mean to subtract; None = subtract each image's own mean.
  """

  def __init__(self, mean_image=None):
    self.mean_image = None if mean_image is None else _to_tensor(mean_image, 'mean_image').double()

  def __call__(self, images):
    x = _to_tensor(images, 'images').double()
    if self.mean_image is not None:
      if tuple(x.shape[1:]) != tuple(self.mean_image.shape):
        raise ValueError(f'images {tuple(x.shape)} do not match the reference mean image '
                         f'{tuple(self.mean_image.shape)}')
      x = x - self.mean_image
    x = x.reshape(x.shape[0], -1)
    if self.mean_image is None:
      x = x - x.mean(1, keepdim=True)
    return F.normalize(x, dim=1).float()


@torch.no_grad()
def _rgb_batched_features(images, embed, batch_size, device, normalize=True):
  """embed(batch) over images (N, C, H, W) in [0, 1], in batches on ``device``, grey tiled to RGB;
  rows L2-normalised when ``normalize``. Returns (N, F) float32 on the CPU."""
  x = _to_tensor(images, 'images').float()
  outs = []
  for lo in range(0, x.shape[0], batch_size):
    b = x[lo:lo + batch_size].to(device)
    b = b.expand(-1, 3, -1, -1) if b.shape[1] == 1 else b
    f = embed(b).flatten(1).float()
    outs.append((F.normalize(f, dim=1) if normalize else f).cpu())
  return torch.cat(outs)


class _TorchScriptFeatures:
  """SSCD-style wrapper: resize to `size`, grey -> RGB, ImageNet normalisation; the model's outputs as
  they are (the reference's raw dot product), or L2-normalised when ``normalize``."""

  def __init__(self, model, size=320, device='cpu', batch_size=32, normalize=False):
    self.model, self.size, self.device, self.batch_size = model, size, torch.device(device), batch_size
    self.normalize = bool(normalize)

  def _embed(self, b):
    b = F.interpolate(b, size=(self.size, self.size), mode='bilinear', align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=b.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=b.device).view(1, 3, 1, 1)
    return self.model((b - mean) / std)

  def __call__(self, images):
    return _rgb_batched_features(images, self._embed, self.batch_size, self.device, self.normalize)


class _InceptionFeatures:
  """pool3 (2048-d) features of the FID Inception, L2-normalised; input (N, C, H, W) in [0, 1]."""

  def __init__(self, device='cpu', batch_size=50):
    from evaluation import load_inception  # lazy: heavy, and owned by the evaluation module
    self.model, self.device, self.batch_size = load_inception(device=device), torch.device(device), batch_size

  def __call__(self, images):
    return _rgb_batched_features(images, lambda b: self.model(b)[0], self.batch_size, self.device)


def load_feature_net(name_or_path, reference=None, device='cpu', sscd_normalize=False):
  """A feature net: callable images (N, C, H, W) in [0, 1] -> (N, F) float32 features (module doc).

  name_or_path: 'pixels' (offline default), 'inception', or a path to an SSCD TorchScript file
    (sscd_disc_large.torchscript.pt from facebookresearch/sscd-copy-detection, as the GEN reference).
  reference: for 'pixels' only, optional training images (N, C, H, W) in [0, 1] whose mean image is
    subtracted; None = per-image centring (the mode DEFAULT_THRESHOLDS['pixels'] is calibrated for).
  sscd_normalize: SSCD only (config.analysis.sscd_normalize). False (default, the reference): raw
    model outputs, similarity = their dot product; True: L2-normalise them (cosine). 'pixels' and
    'inception' are always L2-normalised.
  """
  if name_or_path == 'pixels':
    mean = None if reference is None else _to_tensor(reference, 'reference').double().mean(0)
    return PixelFeatures(mean)
  if name_or_path == 'inception':
    return _InceptionFeatures(device)
  if name_or_path == 'sscd' or os.sep in str(name_or_path) or str(name_or_path).endswith(('.pt', '.pth')):
    if not os.path.isfile(str(name_or_path)):
      raise FileNotFoundError(
          f'SSCD TorchScript model not found at {name_or_path!r}: download sscd_disc_large.torchscript.pt '
          '(facebookresearch/sscd-copy-detection) on a machine with network access and pass its path, '
          "or use the offline feature net 'pixels'")
    return _TorchScriptFeatures(torch.jit.load(str(name_or_path), map_location=device).eval(), device=device,
                                normalize=sscd_normalize)
  raise ValueError(f"unknown feature net {name_or_path!r}: use 'pixels', 'inception' or a path to an SSCD "
                   'TorchScript file')


def default_threshold(name_or_path):
  """The similarity threshold for a feature net: its DEFAULT_THRESHOLDS entry; SSCD paths get 0.6."""
  if name_or_path in DEFAULT_THRESHOLDS:
    return DEFAULT_THRESHOLDS[name_or_path]
  if name_or_path == 'inception':
    raise ValueError("no calibrated threshold for 'inception': calibrate one with calibrate_threshold() "
                     'and pass it explicitly')
  return DEFAULT_THRESHOLDS['sscd']


# ----------------------------------------------------------------------------- threshold calibration
def calibrate_threshold(pos_sims, neg_sims):
  """Cosine threshold separating known positives (copies) from negatives (novel images).

  Picks the midpoint between consecutive sorted scores that maximises balanced accuracy
  (tpr = frac(pos > thr), tnr = frac(neg <= thr)); among equal optima the median candidate.
  Returns dict(threshold, balanced_accuracy, tpr, tnr).
  """
  pos, neg = np.sort(np.asarray(pos_sims, np.float64)), np.sort(np.asarray(neg_sims, np.float64))
  if pos.size == 0 or neg.size == 0:
    raise ValueError(f'need positives and negatives, got {pos.size} and {neg.size}')
  scores = np.unique(np.concatenate([pos, neg]))
  cands = np.concatenate([[scores[0] - 1e-6], (scores[1:] + scores[:-1]) / 2, [scores[-1] + 1e-6]])
  tpr = 1 - np.searchsorted(pos, cands, side='right') / pos.size
  tnr = np.searchsorted(neg, cands, side='right') / neg.size
  bal = (tpr + tnr) / 2
  best = np.flatnonzero(bal == bal.max())
  i = best[len(best) // 2]
  return dict(threshold=float(cands[i]), balanced_accuracy=float(bal[i]), tpr=float(tpr[i]), tnr=float(tnr[i]))


def calibrate_digits_threshold(feature_net='pixels', noise_std=0.05, num_train=1497, seed=0):
  """Calibrate the cosine threshold on sklearn digits (8x8, values 0..16 -> /16 -> [0, 1]).

  Shuffle with `seed`; the first num_train images are the training set, the rest held out.
  Positives: each of the first 300 training images with Gaussian noise (std noise_std, clipped to [0, 1])
    against its clean self (a memorised sample, slightly off). Negatives: each held-out image against
    its best match in the training set (a novel image that is merely similar).
  Returns calibrate_threshold's dict plus pos_sims, neg_sims (numpy).
  Measured with the defaults for 'pixels' (per-image centring): threshold 0.987 (seed 0), balanced
  accuracy 0.998; DEFAULT_THRESHOLDS['pixels'] = 0.985 rounds the seeds 0-2 optima.
  """
  from sklearn.datasets import load_digits
  net = load_feature_net(feature_net) if isinstance(feature_net, str) else feature_net
  images = load_digits().images.astype(np.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
  images = images[np.random.default_rng(seed).permutation(len(images))]
  train, held = torch.from_numpy(images[:num_train]), torch.from_numpy(images[num_train:])
  if len(held) == 0:
    raise ValueError(f'num_train={num_train} leaves no held-out digits (there are {len(images)})')
  clean = train[:300]
  gen = torch.Generator().manual_seed(seed)
  noisy = (clean + noise_std * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
  pos = (net(noisy).double() * net(clean).double()).sum(1).numpy()
  neg, _ = best_match(net(held), net(train))
  out = calibrate_threshold(pos, neg.numpy())
  out.update(pos_sims=pos, neg_sims=neg.numpy())
  return out
