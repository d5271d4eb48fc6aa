"""Common pytest set-up: repo root on sys.path, the `gpu` marker, the golden-fixture folder."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
FIXTURE_FOLDERS = ('fid_inception', 'score_sde_ddpm', 'ssb_ddpm')
# Every subprocess / notebook timeout in the tests: it only guards against a hang, far above any run time on a slow
# or loaded machine, and no test asserts on the clock.
HANG_GUARD_S = 3600


def pytest_configure(config):
  config.addinivalue_line('markers', 'gpu: needs CUDA; skipped when it is absent')
  config.addinivalue_line('markers', 'slow: end-to-end runs of a few tens of seconds')


def pytest_collection_modifyitems(config, items):
  if torch.cuda.is_available():
    return
  skip = pytest.mark.skip(reason='CUDA is not available')
  for item in items:
    if 'gpu' in item.keywords:
      item.add_marker(skip)


@pytest.fixture
def tf32_switches():
  """Saves torch's two TF32 switches and the CUDA probe, and puts them back by plain assignment after the test.

  pytest's monkeypatch cannot be used for them: the switches are served by a module ``__getattr__``, and from
  pytest 9.2 its undo calls ``delattr`` there, which fails and would leave ``torch.cuda.is_available`` faked
  for every later test. Returns a setter: ``set(matmul=..., cudnn=..., cuda_available=...)``."""
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.cuda.is_available)

  def set_switches(matmul=None, cudnn=None, cuda_available=None):
    if matmul is not None:
      torch.backends.cuda.matmul.allow_tf32 = matmul
    if cudnn is not None:
      torch.backends.cudnn.allow_tf32 = cudnn
    if cuda_available is not None:
      torch.cuda.is_available = lambda: cuda_available
  try:
    yield set_switches
  finally:
    torch.cuda.is_available = saved[2]
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]


@pytest.fixture(scope='session')
def fixtures_dir():
  """tests/fixtures: the golden reference data (see each sub-folder's README). Part of the repository, so a
  missing folder is an error, never a skip."""
  missing = [name for name in FIXTURE_FOLDERS if not os.path.isdir(os.path.join(FIXTURES, name))]
  if missing:
    raise FileNotFoundError(f'golden fixtures {missing} missing under {FIXTURES}; they ship with the repository')
  return FIXTURES


def tiny_digits_config(tmp_dir, **overrides):
  """The digits config shrunk to a few seconds of CPU work; stats/moments go under ``tmp_dir``."""
  from configs.ddpm import digits
  config = digits.get_config()
  config.model.nf = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 1
  config.training.batch_size = 32
  config.training.n_iters = 20
  config.training.log_freq = 5
  config.training.eval_freq = 10
  config.training.snapshot_freq = 10
  config.training.snapshot_freq_for_preemption = 5
  config.training.snapshot_num_samples = 8
  config.training.snapshot_num_steps = 5
  config.sampling.stats_dir = os.path.join(str(tmp_dir), 'stats')
  config.sampling.num_samples = 8
  config.sampling.batch_size = 8
  config.eval.num_samples = 8
  config.eval.batch_size = 8
  for path, value in overrides.items():
    section, name = path.split('.')
    config[section][name] = value
  return config


TRAINED_OVERRIDES = {'data.num_train': 32, 'training.snapshot_sampling': False}  # the shared model's run


@pytest.fixture(scope='session')
def trained_workdir(tmp_path_factory):
  """The workdir of a tiny digits model (tiny_digits_config with TRAINED_OVERRIDES: 20 steps on 32 images), trained
  once per session. Tests that write into a workdir take a copy (copy_workdir), so they cannot see each other."""
  import run_lib
  tmp = tmp_path_factory.mktemp('trained')
  workdir = os.path.join(str(tmp), 'run')
  run_lib.train(tiny_digits_config(tmp, **TRAINED_OVERRIDES), workdir)
  return workdir


def copy_workdir(workdir, dest):
  """A private copy of a trained workdir at ``dest`` (str path)."""
  import shutil
  shutil.copytree(workdir, str(dest))
  return str(dest)


def data_config(module, root='', **data):
  """The config of configs/ddpm/<module> reading its data from root, without loader workers; data overrides
  config.data fields."""
  config = module.get_config()
  config.data.root = str(root)
  config.training.num_workers = 0
  for k, v in data.items():
    config.data[k] = v
  return config


@pytest.fixture
def tiny_config(tmp_path):
  return tiny_digits_config(tmp_path)


# --- tiny data sets in the real on-disk formats (docs/data.md) ---------------------------------------
# Each writer returns {split: (images uint8 (N, C, H, W), labels int64 (N,))} of what it wrote (labels 0-based,
# as the loader returns them; CelebA: images None, the JPEGs are lossy).

def write_idx(path, array, gzipped=False):
  """An idx file (yann.lecun.com's format): bytes 0 0 8 ndim, ndim big-endian uint32 sizes, then uint8 data;
  gzipped: as downloaded (path should end in .gz), else as extracted."""
  import gzip
  import struct
  data = struct.pack('>BBBB', 0, 0, 8, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()
  with open(path, 'wb') as f:
    f.write(gzip.compress(data) if gzipped else data)


def write_mnist(root, n_train=5, n_test=3, seed=0, gzipped=True):
  """MNIST in root/MNIST/raw (torchvision's folder): {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz], gzipped as
  downloaded or extracted (the loader reads both)."""
  import numpy as np
  raw = os.path.join(str(root), 'MNIST', 'raw')
  os.makedirs(raw, exist_ok=True)
  rng, out = np.random.default_rng(seed), {}
  for split, prefix, n in (('train', 'train', n_train), ('test', 't10k', n_test)):
    x, y = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)
    for name, array in ((f'{prefix}-images-idx3-ubyte', x), (f'{prefix}-labels-idx1-ubyte', y)):
      write_idx(os.path.join(raw, name + ('.gz' if gzipped else '')), array, gzipped)
    out[split] = (x[:, None], y.astype(np.int64))
  return out


def _py2_pickle(obj, f):
  """Pickles like Python 2's cPickle at protocol 2, as the real CIFAR-10 batches were written: every str and bytes
  is a Python 2 byte string (SHORT_BINSTRING / BINSTRING; read back as b'data' with encoding='bytes', as str
  with encoding='latin1') and numpy's reconstructor is named numpy.core.multiarray, its numpy 1 module."""
  import pickle
  import struct

  class Py2Pickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
      data = obj.encode('latin1') if isinstance(obj, str) else obj
      size = bytes([len(data)]) if len(data) < 256 else struct.pack('<i', len(data))
      self.write((pickle.SHORT_BINSTRING if len(data) < 256 else pickle.BINSTRING) + size + data)
      self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_string

    def save_global(self, obj, name=None):
      module = {'numpy._core.multiarray': 'numpy.core.multiarray'}.get(obj.__module__, obj.__module__)
      self.write(pickle.GLOBAL + f'{module}\n{name or obj.__qualname__}\n'.encode('ascii'))
      self.memoize(obj)

  Py2Pickler(f, protocol=2).dump(obj)


def write_cifar10(root, n_per_batch=2, n_test=2, seed=0):
  """cifar-10-python.tar.gz extracted: root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}, Python 2
  pickles of dicts with 'batch_label', 'labels' (list of int), 'data' (uint8 (N, 3072), rows CHW), 'filenames'."""
  import numpy as np
  folder = os.path.join(str(root), 'cifar-10-batches-py')
  os.makedirs(folder, exist_ok=True)
  rng, xs, ys = np.random.default_rng(seed), {'train': [], 'test': []}, {'train': [], 'test': []}
  batches = [(f'data_batch_{i}', 'train', n_per_batch, f'training batch {i} of 5') for i in range(1, 6)]
  for name, split, n, label in batches + [('test_batch', 'test', n_test, 'testing batch 1 of 1')]:
    x, y = rng.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, 10, n)]
    with open(os.path.join(folder, name), 'wb') as f:
      _py2_pickle({'batch_label': label, 'labels': y, 'data': x, 'filenames': [f'img_{i}.png' for i in range(n)]}, f)
    xs[split].append(x.reshape(n, 3, 32, 32))
    ys[split].extend(y)
  meta = {'num_cases_per_batch': n_per_batch, 'num_vis': 3072,
          'label_names': ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']}
  with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
    _py2_pickle(meta, f)
  return {s: (np.concatenate(xs[s]), np.asarray(ys[s], np.int64)) for s in xs}


def write_celeba(root, n_train=3, n_val=1, n_test=1, seed=0, image=None):
  """Aligned CelebA: root/img_align_celeba/NNNNNN.jpg (178x218 RGB JPEGs, numbered as the real files: train from
  000001, validation from 162771, test from 182638) and root/list_eval_partition.txt rows 'NNNNNN.jpg p'.
  image: one uint8 (218, 178, 3) picture for every file, saved at JPEG quality 100 without chroma subsampling (so
  its colours survive); default: random pixels."""
  import numpy as np
  from PIL import Image
  folder = os.path.join(str(root), 'img_align_celeba')
  os.makedirs(folder, exist_ok=True)
  rng, rows, out = np.random.default_rng(seed), [], {}
  for split, part, first, n in (('train', 0, 1, n_train), ('validation', 1, 162771, n_val),
                                ('test', 2, 182638, n_test)):
    for i in range(first, first + n):
      path = os.path.join(folder, f'{i:06d}.jpg')
      if image is None:
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(path)
      else:
        Image.fromarray(image).save(path, quality=100, subsampling=0)
      rows.append(f'{i:06d}.jpg {part}\n')
    out[split] = (None, np.zeros(n, np.int64))
  with open(os.path.join(str(root), 'list_eval_partition.txt'), 'w') as f:
    f.write(''.join(rows))
  return out


def write_imagenet64(root, n_per_batch=2, n_val=3, seed=0):
  """Downsampled ImageNet 64x64 (npz format), unzipped into root: train_data_batch_{1..10}.npz with 'data' (uint8
  (N, 12288), rows CHW), 'labels' (1-based, 1..1000) and 'mean'; val_data.npz with 'data' and 'labels'. The train
  files are written uncompressed (memory-mapped by the loader), val_data compressed (loaded whole): both paths."""
  import numpy as np
  os.makedirs(str(root), exist_ok=True)
  rng, xs, ys = np.random.default_rng(seed), [], []
  for i in range(1, 11):
    x, y = rng.integers(0, 256, (n_per_batch, 12288), dtype=np.uint8), rng.integers(1, 1001, n_per_batch)
    np.savez(os.path.join(str(root), f'train_data_batch_{i}.npz'), data=x, labels=[int(v) for v in y],
             mean=x.mean(0))
    xs.append(x)
    ys.append(y)
  xv, yv = rng.integers(0, 256, (n_val, 12288), dtype=np.uint8), rng.integers(1, 1001, n_val)
  np.savez_compressed(os.path.join(str(root), 'val_data.npz'), data=xv, labels=[int(v) for v in yv])
  return {'train': (np.concatenate(xs).reshape(-1, 3, 64, 64), np.concatenate(ys) - 1),
          'validation': (xv.reshape(-1, 3, 64, 64), yv - 1)}


@pytest.fixture
def umask022():
  """Files are created under the usual umask 022 (the tests check their 0644 permissions)."""
  old = os.umask(0o022)
  yield
  os.umask(old)
