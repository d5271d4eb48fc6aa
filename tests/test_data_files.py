"""data_files.py: the real data sets' on-disk formats written tiny into tmp_path and read through
datasets.get_dataset; missing files name the path and the files."""
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
from configs.ddpm import celeba, cifar10, imagenet64, mnist
from conftest import data_config as _config


# --- writers of the real formats -------------------------------------------------------------------

def _write_idx(path, array):
  """idx (SN3 pascalvincent) file: magic 0x08 0x(ndim), big-endian int32 dims, uint8 data."""
  with open(path, 'wb') as f:
    f.write(struct.pack('>BBBB', 0, 0, 8, array.ndim))
    f.write(struct.pack('>' + 'I' * array.ndim, *array.shape))
    f.write(array.astype(np.uint8).tobytes())


def _write_mnist(root, n_train=5, n_test=3):
  raw = root / 'MNIST' / 'raw'
  raw.mkdir(parents=True)
  rng = np.random.default_rng(1)
  out = {}
  for prefix, n in (('train', n_train), ('t10k', n_test)):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.uint8)
    _write_idx(raw / f'{prefix}-images-idx3-ubyte', x)
    _write_idx(raw / f'{prefix}-labels-idx1-ubyte', y)
    out[prefix] = (x, y)
  return out


def _write_cifar(root, n_per_batch=2):
  folder = root / 'cifar-10-batches-py'
  folder.mkdir(parents=True)
  rng = np.random.default_rng(2)
  out = {}
  for name in [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']:
    x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
    y = [int(v) for v in rng.integers(0, 10, n_per_batch)]
    with open(folder / name, 'wb') as f:
      pickle.dump({'batch_label': name, 'data': x, 'labels': y, 'filenames': ['a.png'] * n_per_batch}, f)
    out[name] = (x, y)
  with open(folder / 'batches.meta', 'wb') as f:
    pickle.dump({'label_names': [str(i) for i in range(10)], 'num_cases_per_batch': n_per_batch}, f)
  return out


def _write_celeba(root, parts=(0, 0, 0, 1, 2)):
  """178x218 JPEGs (the real aligned size): green in the central 140x140 crop, red outside."""
  folder = root / 'img_align_celeba'
  folder.mkdir(parents=True)
  img = np.zeros((218, 178, 3), np.uint8)
  img[..., 0] = 255
  top, left = (218 - 140) // 2, (178 - 140) // 2
  img[top:top + 140, left:left + 140] = (0, 255, 0)
  lines = []
  for i, part in enumerate(parts):
    name = f'{i + 1:06d}.jpg'
    Image.fromarray(img).save(folder / name, quality=100, subsampling=0)  # 4:4:4: no chroma bleed
    lines.append(f'{name} {part}\n')
  (root / 'list_eval_partition.txt').write_text(''.join(lines))


def _write_imagenet(root, n_per_batch=2, n_val=3):
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(3)
  out = {}
  for i in range(1, 11):
    x = rng.integers(0, 256, (n_per_batch, 12288), dtype=np.uint8)
    y = rng.integers(1, 1001, n_per_batch)
    np.savez(root / f'train_data_batch_{i}.npz', data=x, labels=list(y), mean=np.zeros(12288))
    out[i] = (x, y)
  x = rng.integers(0, 256, (n_val, 12288), dtype=np.uint8)
  y = rng.integers(1, 1001, n_val)
  np.savez_compressed(root / 'val_data.npz', data=x, labels=list(y))  # compressed: the non-mmap path
  out['val'] = (x, y)
  return out


# --- real formats ----------------------------------------------------------------------------------

def test_mnist_idx_exact(tmp_path):
  raw = _write_mnist(tmp_path)
  config = _config(mnist, tmp_path)
  for split, key in (('train', 'train'), ('eval', 't10k')):
    x, y = datasets.load_arrays(config, split)
    assert x.shape == (len(raw[key][0]), 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_array_equal(np.rint(x[:, 0].numpy() * 255).astype(np.uint8), raw[key][0])
    np.testing.assert_array_equal(y.numpy(), raw[key][1])


def test_cifar10_pickles_exact(tmp_path):
  raw = _write_cifar(tmp_path)
  config = _config(cifar10, tmp_path)
  x, y = datasets.load_arrays(config, 'train')
  assert x.shape == (10, 3, 32, 32)
  expected = np.concatenate([raw[f'data_batch_{i}'][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
  np.testing.assert_array_equal(np.rint(x.numpy() * 255).astype(np.uint8), expected)
  assert y.tolist() == sum((raw[f'data_batch_{i}'][1] for i in range(1, 6)), [])
  x, y = datasets.load_arrays(config, 'eval')
  np.testing.assert_array_equal(np.rint(x.numpy() * 255).reshape(2, -1).astype(np.uint8), raw['test_batch'][0])


@pytest.mark.parametrize('module,size', [(celeba, 32), (celeba, 64)])
def test_celeba_crop_resize(tmp_path, module, size):
  _write_celeba(tmp_path)
  config = _config(module, tmp_path, image_size=size)
  ds = datasets.get_dataset(config, 'train')
  assert len(ds) == 3 and len(datasets.get_dataset(config, 'eval')) == 1  # eval_split = validation
  x, y = ds[0]
  assert x.shape == (3, size, size) and x.dtype == torch.float32 and y.item() == 0
  assert x.min() >= 0 and x.max() <= 1
  green = torch.tensor([0., 1., 0.])[:, None, None]
  assert (x - green).abs().max() < 0.1  # only the central 140x140 (green) survives the crop
  config.data.eval_split = 'test'
  assert len(datasets.get_dataset(config, 'eval')) == 1


def test_imagenet64_npz_exact(tmp_path):
  raw = _write_imagenet(tmp_path / 'in64')
  config = _config(imagenet64, tmp_path / 'in64')
  ds = datasets.get_dataset(config, 'train')
  assert len(ds) == 20
  x, y = ds[7]  # batch 4, row 1
  assert x.shape == (3, 64, 64)
  np.testing.assert_array_equal(np.rint(x.numpy() * 255).astype(np.uint8).reshape(-1), raw[4][0][1])
  assert y.item() == raw[4][1][1] - 1  # 1-based on disk
  assert isinstance(ds.images[7], np.memmap)  # np.savez batches are memory-mapped, not loaded
  assert not isinstance(datasets.get_dataset(config, 'eval').images[0], np.memmap)  # compressed: loaded
  xv, yv = datasets.load_arrays(config, 'eval')
  np.testing.assert_array_equal(np.rint(xv.numpy() * 255).astype(np.uint8).reshape(3, -1), raw['val'][0])
  np.testing.assert_array_equal(yv.numpy(), raw['val'][1] - 1)


@pytest.mark.parametrize('module,files', [
    (mnist, ['train-images-idx3-ubyte']), (cifar10, ['data_batch_1', 'batches.meta']),
    (celeba, ['list_eval_partition.txt']), (imagenet64, ['train_data_batch_1.npz'])])
def test_missing_dataset_names_path_and_files(tmp_path, module, files):
  config = _config(module, tmp_path / 'nowhere')
  with pytest.raises(datasets.DatasetNotFoundError) as err:
    datasets.get_dataset(config, 'train')
  assert isinstance(err.value, FileNotFoundError)
  msg = str(err.value)
  assert str(tmp_path / 'nowhere') in msg and 'config.data.root' in msg
  assert all(f in msg for f in files)


def test_celeba_missing_images(tmp_path):
  _write_celeba(tmp_path)
  for f in (tmp_path / 'img_align_celeba').iterdir():
    f.unlink()
  with pytest.raises(datasets.DatasetNotFoundError, match='img_align_celeba'):
    datasets.get_dataset(_config(celeba, tmp_path), 'train')
