"""Readers of the real data sets in their published on-disk formats (docs/data.md, "Real data sets"): MNIST idx
files, CIFAR-10 python pickles, CelebA JPEGs with list_eval_partition.txt, ImageNet 64x64 npz batches; plus the
array-backed Dataset they return and the data errors.

Nothing is downloaded: a missing file raises :class:`DatasetNotFoundError` saying what to put where, a damaged
one a :class:`DataError` naming it. Each reader returns a Dataset of (image float32 (C, H, W) in [0, 1], label
int64); datasets.get_dataset picks the reader, checks the config and applies num_train and flips.
"""
import gzip
import os
import pickle
import zipfile
import zlib

import numpy as np
import torch
from torch.utils.data import Dataset

import io_util
from errors import InputError, one_line

_CELEBA_CROP = 140  # docs/data.md: centre crop 140, then resize to 32 or 64


class DataError(InputError):
  """A data file is missing, corrupt or truncated; the one-line message names it and says what to do."""


class DatasetNotFoundError(DataError, FileNotFoundError):
  """A real data set's files are not where config.data.root says; ``files`` are the missing ones."""

  def __init__(self, dataset, folder, files, how):
    folder = os.path.abspath(folder)
    super().__init__(
        f'{dataset} not found: {", ".join(files)} missing in {folder}. Nothing is downloaded at run '
        f'time: {how}, then set config.data.root (e.g. --config.data.root=/path/to/{dataset.lower()}).')
    self.dataset, self.folder, self.files = dataset, folder, list(files)


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


def _require(dataset, folder, files, how, every=None, exists=os.path.isfile):
  """Raise DatasetNotFoundError unless every file of ``files`` exists in folder. The error lists every missing
  file of ``every`` (all the data set's splits; default ``files``), so one download fixes all of them."""
  if not all(exists(os.path.join(folder, f)) for f in files):
    missing = [f for f in (every or files) if not exists(os.path.join(folder, f))]
    raise DatasetNotFoundError(dataset, folder, missing, how)


def _corrupt(path, err, how):
  """DataError for a damaged file: names it and the cause, and says to replace it."""
  return DataError(f'{path} is corrupt or truncated ({one_line(err)}): delete it and {how}')


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


_MNIST_FILES = {split: [f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte']
                for split, prefix in (('train', 'train'), ('test', 't10k'))}


def _idx_path(folder, name):
  """folder/name, or folder/name.gz when only the gzipped file (as downloaded) is there."""
  path = os.path.join(folder, name)
  return path + '.gz' if not os.path.isfile(path) and os.path.isfile(path + '.gz') else path


def read_mnist(root, split):
  """The split's two idx files (``name`` or ``name.gz``) under root/MNIST/raw -> uint8 (N, 1, 28, 28)."""
  folder = os.path.join(root, 'MNIST', 'raw')
  names = _MNIST_FILES['train' if split == 'train' else 'test']
  _require('MNIST', folder, names, _MNIST_HOW, every=_MNIST_FILES['train'] + _MNIST_FILES['test'],
           exists=lambda p: os.path.isfile(p) or os.path.isfile(p + '.gz'))
  paths = [_idx_path(folder, n) for n in names]
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


def read_cifar10(root, split):
  """CIFAR-10's python pickle batches (uint8 (N, 3, 32, 32), rows stored CHW).

  Read directly: torchvision's class checks md5 sums, which would reject a partial copy."""
  folder = os.path.join(root, 'cifar-10-batches-py')
  train = [f'data_batch_{i}' for i in range(1, 6)]
  names = train if split == 'train' else ['test_batch']
  _require('CIFAR10', folder, names + ['batches.meta'], _CIFAR_HOW, every=train + ['test_batch', 'batches.meta'])
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


_IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.webp', '.bmp')


class ImageFolder(Dataset):
  """Every image under root/<split>/ (any depth; .png .jpg .jpeg .webp .bmp), in sorted path order: CelebA-HQ's
  PNGs, or LSUN church / bedroom / cat exported from its lmdb to files (docs/data.md, "Image folders").

  RGB; centre crop to a square of the shorter side, then bicubic antialiased resize to image_size (the
  preprocessing of Ho et al.'s 256x256 models). Label = 0.
  """

  def __init__(self, root, split, image_size):
    folder = os.path.join(root, split)
    files = []
    for here, _, names in os.walk(folder):
      files += [os.path.join(here, n) for n in names if n.lower().endswith(_IMAGE_SUFFIXES)]
    if not files:
      raise DatasetNotFoundError('IMAGEFOLDER', folder, [f'*{s}' for s in _IMAGE_SUFFIXES[:2]], _FOLDER_HOW)
    self.files, self.image_size = sorted(files), image_size

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    from PIL import Image
    import torchvision.transforms.functional as TF
    path = self.files[i]
    try:
      with Image.open(path) as img:
        img = img.convert('RGB')
    except (OSError, SyntaxError, ValueError) as err:
      raise _corrupt(path, err, _FOLDER_HOW) from None
    side = min(img.size)
    x = TF.pil_to_tensor(TF.center_crop(img, [side, side])).float() / 255.
    x = TF.resize(x, [self.image_size, self.image_size], TF.InterpolationMode.BICUBIC, antialias=True)
    return x.clamp(0., 1.), torch.tensor(0, dtype=torch.int64)


_FOLDER_HOW = ('put the training images under <data.root>/train/ and held-out ones under <data.root>/test/ '
               '(docs/data.md, "Image folders")')
_CELEBA_HOW = ('get img_align_celeba.zip (extract to img_align_celeba/) and list_eval_partition.txt '
               'from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html')
_IMAGENET_HOW = ('get Imagenet64_train_part1/2.zip and Imagenet64_val.zip (npz format) from '
                 'https://image-net.org/download-images.php (downsampled images) and unzip them into one folder')


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
    except io_util.NPZ_ERRORS as err:
      raise _corrupt(path, err, _IMAGENET_HOW) from None
    return data

  def __getitem__(self, i):
    b = int(np.searchsorted(self.ends, i, side='right'))
    if self._arrays[b] is None:
      self._arrays[b] = self._load(b)
    row = i - (int(self.ends[b - 1]) if b else 0)
    return self._arrays[b][row].reshape(3, 64, 64)


def read_imagenet64(root, split):
  """Downsampled ImageNet 64x64 npz batches; labels are stored 1-based (docs/data.md)."""
  train = [f'train_data_batch_{i}.npz' for i in range(1, 11)]
  names = train if split == 'train' else ['val_data.npz']
  _require('IMAGENET64', root, names, _IMAGENET_HOW, every=train + ['val_data.npz'])
  paths = [os.path.join(root, n) for n in names]
  labels = []
  for p in paths:
    try:
      with np.load(p) as npz:  # an npz reads one member at a time: the images stay on disk
        labels.append(np.asarray(npz['labels'], dtype=np.int64).reshape(-1))
    except io_util.NPZ_ERRORS as err:
      raise _corrupt(p, err, _IMAGENET_HOW) from None
  for p, lab in zip(paths, labels):
    if len(lab) and lab.min() < 1:
      raise DataError(f'{p}: labels should be 1-based (1..1000), found {lab.min()}; {_IMAGENET_HOW}')
  images = _NpzImages(paths, [len(lab) for lab in labels])
  return ArrayDataset(images, np.concatenate(labels) - 1)
