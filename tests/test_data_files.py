"""data_files.py: the real data sets' on-disk formats written tiny into tmp_path and read through
datasets.get_dataset; missing files name the path and the files."""

import numpy as np
import pytest
import torch

import datasets
from configs.ddpm import celeba, cifar10, imagenet64, mnist
from conftest import data_config as _config, write_celeba, write_cifar10, write_imagenet64, write_mnist


# --- real formats ----------------------------------------------------------------------------------

@pytest.mark.parametrize('gzipped', [True, False])  # as downloaded, or extracted
def test_mnist_idx_exact(tmp_path, gzipped):
  raw = write_mnist(tmp_path, gzipped=gzipped)
  config = _config(mnist, tmp_path)
  for split, key in (('train', 'train'), ('eval', 'test')):
    x, y = datasets.load_arrays(config, split)
    assert x.shape == raw[key][0].shape and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_array_equal(np.rint(x.numpy() * 255).astype(np.uint8), raw[key][0])
    np.testing.assert_array_equal(y.numpy(), raw[key][1])


def test_cifar10_pickles_exact(tmp_path):
  raw = write_cifar10(tmp_path)  # Python 2 pickles, as the real batches
  config = _config(cifar10, tmp_path)
  for split, key in (('train', 'train'), ('eval', 'test')):
    x, y = datasets.load_arrays(config, split)
    assert x.shape == raw[key][0].shape and x.shape[1:] == (3, 32, 32)
    np.testing.assert_array_equal(np.rint(x.numpy() * 255).astype(np.uint8), raw[key][0])
    np.testing.assert_array_equal(y.numpy(), raw[key][1])


@pytest.mark.parametrize('module,size', [(celeba, 32), (celeba, 64)])
def test_celeba_crop_resize(tmp_path, module, size):
  img = np.zeros((218, 178, 3), np.uint8)  # 178x218 (the real aligned size): green in the central 140x140, red outside
  img[..., 0] = 255
  top, left = (218 - 140) // 2, (178 - 140) // 2
  img[top:top + 140, left:left + 140] = (0, 255, 0)
  write_celeba(tmp_path, n_train=3, n_val=1, n_test=1, image=img)
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
  raw = write_imagenet64(tmp_path / 'in64', n_per_batch=2, n_val=3)
  config = _config(imagenet64, tmp_path / 'in64')
  ds = datasets.get_dataset(config, 'train')
  assert len(ds) == 20
  x, y = ds[7]  # batch 4, row 1
  assert x.shape == (3, 64, 64)
  np.testing.assert_array_equal(np.rint(x.numpy() * 255).astype(np.uint8), raw['train'][0][7])
  assert y.item() == raw['train'][1][7]  # 1-based on disk, 0-based loaded
  assert isinstance(ds.images[7], np.memmap)  # np.savez batches are memory-mapped, not loaded
  assert not isinstance(datasets.get_dataset(config, 'eval').images[0], np.memmap)  # compressed: loaded
  xv, yv = datasets.load_arrays(config, 'eval')
  np.testing.assert_array_equal(np.rint(xv.numpy() * 255).astype(np.uint8), raw['validation'][0])
  np.testing.assert_array_equal(yv.numpy(), raw['validation'][1])


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


MNIST_FILES = ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte',
               't10k-labels-idx1-ubyte']
CIFAR_FILES = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch', 'batches.meta']
IMAGENET_FILES = [f'train_data_batch_{i}.npz' for i in range(1, 11)] + ['val_data.npz']


@pytest.mark.parametrize('split', ['train', 'eval'])
@pytest.mark.parametrize('module,files', [(mnist, MNIST_FILES), (cifar10, CIFAR_FILES),
                                          (imagenet64, IMAGENET_FILES)])
def test_a_missing_folder_lists_every_missing_file_of_both_splits(tmp_path, module, files, split):
  """Whichever split is read first (the eval split, by training's held-out loss), the error lists the training and
  the held-out files, so one download fixes the run."""
  with pytest.raises(datasets.DatasetNotFoundError) as err:
    datasets.get_dataset(_config(module, tmp_path / 'nowhere'), split)
  assert err.value.files == files and all(f in str(err.value) for f in files)


def test_only_the_missing_files_are_listed(tmp_path):
  """A folder with the training files but no held-out ones: training reads, the eval split names only its files."""
  write_mnist(tmp_path)
  for name in MNIST_FILES[2:]:
    (tmp_path / 'MNIST' / 'raw' / f'{name}.gz').unlink()
  config = _config(mnist, tmp_path)
  assert len(datasets.get_dataset(config, 'train')) == 5
  with pytest.raises(datasets.DatasetNotFoundError) as err:
    datasets.get_dataset(config, 'eval')
  assert err.value.files == MNIST_FILES[2:] and 'train-images' not in str(err.value)


def test_a_missing_data_set_is_one_line_on_the_command_line(tmp_path):
  """--mode=train on CIFAR-10 with an empty data.root: one 'error:' line naming all seven files."""
  import os
  import subprocess
  import sys
  from conftest import HANG_GUARD_S, ROOT
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/cifar10.py', f'--workdir={tmp_path / "w"}',
         '--mode=train', f'--config.data.root={tmp_path / "nowhere"}']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
  assert errors[0].startswith('error: DatasetNotFoundError: ') and all(f in errors[0] for f in CIFAR_FILES)


def test_celeba_missing_images(tmp_path):
  write_celeba(tmp_path)
  for f in (tmp_path / 'img_align_celeba').iterdir():
    f.unlink()
  with pytest.raises(datasets.DatasetNotFoundError, match='img_align_celeba'):
    datasets.get_dataset(_config(celeba, tmp_path), 'train')


def test_image_folder_crops_the_centre_square_and_resizes(tmp_path):
  """data.dataset='IMAGEFOLDER' (the 256x256 diffusers models' data): any image under root/<split>/, any depth and
  size; the centre square of the shorter side, resized. A 40x20 image green in its central 20x20, red outside."""
  from PIL import Image
  from configs.ddpm import celebahq256_diffusers
  img = np.zeros((20, 40, 3), np.uint8)
  img[..., 0] = 255
  img[:, 10:30] = (0, 255, 0)
  (tmp_path / 'train' / 'a').mkdir(parents=True)
  (tmp_path / 'test').mkdir()
  Image.fromarray(img).save(tmp_path / 'train' / 'a' / '2.png')
  Image.fromarray(np.full((30, 30, 3), 128, np.uint8)).save(tmp_path / 'train' / '1.jpg', quality=100)
  Image.fromarray(img).save(tmp_path / 'test' / 'x.png')
  (tmp_path / 'train' / 'notes.txt').write_text('not an image')
  config = celebahq256_diffusers.get_config()
  config.data.root, config.data.image_size = str(tmp_path), 16
  ds = datasets.get_dataset(config, 'train')
  assert len(ds) == 2 and len(datasets.get_dataset(config, 'eval')) == 1
  x, y = ds[1]  # sorted paths: train/1.jpg, train/a/2.png
  assert x.shape == (3, 16, 16) and y.item() == 0
  green = torch.tensor([0., 1., 0.])[:, None, None]
  assert (x - green).abs().max() < 0.05  # only the green centre square survives the crop
  config.data.root = str(tmp_path / 'empty')
  with pytest.raises(datasets.DatasetNotFoundError, match='train'):
    datasets.get_dataset(config, 'train')
