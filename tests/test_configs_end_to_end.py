"""Every paper config end to end at full size, on tiny synthetic data in the real on-disk formats (slow).

For mnist, cifar10, celeba, celeba64 and imagenet64: the config's own U-Net (nf 128; only batch sizes, sample
counts, steps and workers shrunk) trains 2 steps, writes a score_sde-layout checkpoint, computes the FID
reference statistics of the synthetic training split, and evaluates one vanilla and one gls DDIM cell.
At 64x64 the gls fit is rank 8 (sampling.gls_rank): the full-covariance fit at D = 12,288 takes minutes.
"""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import datasets
import main
import workdir as wd
from configs.ddpm import celeba, celeba64, cifar10, imagenet64, mnist
from conftest import write_celeba, write_cifar10, write_imagenet64, write_mnist
from models import utils as mutils

T_C = 500  # the gls cell's t_c: any value with num_steps <= t_c + 1

# name -> (config module, writer of a tiny data set (root -> {split: (images, labels)}), parameter count).
# Parameter counts: CIFAR-10's two are the published ones (the SSB and score_sde checkpoints); the convolutions
# do not depend on the resolution and attention at 16 is hit at exactly one level at 32 and at 64, so CelebA 32/64
# and ImageNet 64 have CIFAR-10's count; MNIST (1 channel, ch_mult (1, 2, 2), attention only in the middle) is
# what _expected_parameters counts. test_parameter_counts checks all of them against that count.
CONFIGS = {
    'mnist': (mnist, lambda root: write_mnist(root, n_train=12, n_test=4), 24_515_585),
    'cifar10': (cifar10, lambda root: write_cifar10(root, n_per_batch=2, n_test=4), 35_746_307),
    'celeba': (celeba, lambda root: write_celeba(root, n_train=12, n_val=4, n_test=2), 35_746_307),
    'celeba64': (celeba64, lambda root: write_celeba(root, n_train=12, n_val=4, n_test=2), 35_746_307),
    'imagenet64': (imagenet64, lambda root: write_imagenet64(root, n_per_batch=1, n_val=4), 35_746_307),
}
SCORE_SDE_CIFAR10 = 35_218_947


def _expected_parameters(config):
  """Parameter count of the DDPM U-Net of docs/model.md, summed layer by layer from its shapes (an oracle
  independent of torch's numel): conv3x3 9io + o, Dense / NIN io + o, GroupNorm 2c."""
  m, channels = config.model, config.data.num_channels
  nf, mult, temb = m.nf, tuple(m.ch_mult), 4 * m.nf
  conv, lin, gn = (lambda i, o: 9 * i * o + o), (lambda i, o: i * o + o), (lambda c: 2 * c)
  res = lambda i, o: gn(i) + conv(i, o) + lin(temb, o) + gn(o) + conv(o, o) + (lin(i, o) if i != o else 0)  # noqa
  attn = lambda c: gn(c) + 4 * lin(c, c)  # noqa: E731
  has_attn = [config.data.image_size // 2 ** i in m.attn_resolutions for i in range(len(mult))]
  total, ch, skips = lin(nf, temb) + lin(temb, temb) + conv(channels, nf), nf, [nf]
  for i in range(len(mult)):
    for _ in range(m.num_res_blocks):
      total, ch = total + res(ch, nf * mult[i]) + (attn(nf * mult[i]) if has_attn[i] else 0), nf * mult[i]
      skips.append(ch)
    if i < len(mult) - 1:
      total += conv(ch, ch)
      skips.append(ch)
  total += 2 * res(ch, ch) + attn(ch)
  for i in reversed(range(len(mult))):
    for _ in range(m.num_res_blocks + 1):
      total, ch = total + res(ch + skips.pop(), nf * mult[i]), nf * mult[i]
      total += attn(ch) if has_attn[i] and m.variant == 'ssb' else 0
    total += attn(ch) if has_attn[i] and m.variant == 'score_sde' else 0
    total += conv(ch, ch) if i else 0
  return total + gn(ch) + conv(ch, channels)


def test_parameter_counts():
  """The layer-by-layer count reproduces CIFAR-10's published counts and gives each config's number above."""
  config = cifar10.get_config()
  assert _expected_parameters(config) == CONFIGS['cifar10'][2] == 35_746_307
  config.model.variant = 'score_sde'
  assert _expected_parameters(config) == SCORE_SDE_CIFAR10
  for name, (module, _, count) in CONFIGS.items():
    assert _expected_parameters(module.get_config()) == count, name


@pytest.mark.slow
def test_cifar10_score_sde_variant_builds_at_full_size():
  config = cifar10.get_config()
  config.model.variant = 'score_sde'
  model = mutils.create_model(config)
  assert mutils.count_parameters(model) == SCORE_SDE_CIFAR10
  assert model.sigmas.dtype == torch.float64 and model.sigmas.shape == (1000,)
  assert next(iter(model.state_dict())) == 'sigmas'  # the first key, as in score_sde's checkpoints


@pytest.fixture(scope='module')
def inception_cache(tmp_path_factory):
  """One cache of the converted FID Inception weights for the module (each test would otherwise rebuild it)."""
  return str(tmp_path_factory.mktemp('ssb_cache'))


@pytest.fixture
def scratch(tmp_path):
  """tmp_path, emptied after the test: each run writes ~1.2 GB of checkpoints (and 1.2 GB of late-start moments
  at 64x64) that pytest would otherwise keep for three sessions."""
  yield tmp_path
  for child in tmp_path.iterdir():
    if child.is_dir():
      shutil.rmtree(child, ignore_errors=True)
    else:
      child.unlink()


def _small_run_config(module, tmp_path):
  """The config with its full-size model; only the data root, the stats folder and run lengths changed."""
  config = module.get_config()
  config.data.root = str(tmp_path / 'data')
  config.sampling.stats_dir = str(tmp_path / 'stats')
  t = config.training
  t.n_iters, t.batch_size, t.num_workers = 2, 2, 0
  t.log_freq = t.eval_freq = t.snapshot_freq = t.snapshot_freq_for_preemption = 2
  t.snapshot_num_samples, t.snapshot_num_steps = 2, 1
  config.eval.batch_size = 16
  config.eval.methods, config.eval.num_steps, config.eval.t_starts = ('ddim',), (2,), (T_C,)
  config.eval.num_samples = config.eval.kid_subset_size = 4
  if config.data.image_size == 64:  # the full-covariance fit at D = 12,288 takes minutes and ~7 GB
    config.sampling.gls_rank = 8
  return config


def _check_data(config, written):
  """The loader returns exactly the written images and labels (the JPEG formats only the counts)."""
  for split, held_out in (('train', 'train'), ('eval', config.data.eval_split)):
    images, labels = written[held_out]
    x, y = datasets.load_arrays(config, split)
    assert x.shape == (len(labels), config.data.num_channels, config.data.image_size, config.data.image_size)
    assert torch.equal(y, torch.from_numpy(labels))
    if images is not None:
      assert torch.equal(x, torch.from_numpy(images).float() / 255.)


def _check_checkpoint(config, workdir, count):
  """Both files in score_sde's layout at step 2, the model and EMA of `count` parameters, the snapshot grid."""
  for path in (wd.checkpoint_path(workdir, 1), wd.meta_checkpoint_path(workdir)):
    ckpt = torch.load(path, map_location='cpu', weights_only=True, mmap=True)  # reads only what is checked
    assert set(ckpt) == {'optimizer', 'model', 'ema', 'step'} and ckpt['step'] == 2
    assert all(k.startswith('module.all_modules.') for k in ckpt['model'])  # ssb: no sigmas buffer
    assert sum(v.numel() for v in ckpt['model'].values()) == count
    shadow = ckpt['ema']['shadow_params']
    assert sum(p.numel() for p in shadow) == count and ckpt['ema']['num_updates'] == 2
    assert all(bool(torch.isfinite(p).all()) for p in shadow)
    assert len(ckpt['optimizer']['state']) == len(shadow)  # Adam moments for every parameter
  assert os.path.isfile(wd.snapshot_grid_path(workdir, 2))


@pytest.mark.slow
@pytest.mark.parametrize('name', list(CONFIGS))
def test_config_end_to_end(name, scratch, monkeypatch, inception_cache):
  monkeypatch.setenv('SSB_CACHE_DIR', inception_cache)
  module, write, count = CONFIGS[name]
  config = _small_run_config(module, scratch)
  written = write(config.data.root)
  _check_data(config, written)
  workdir = str(scratch / 'run')

  main.run_mode('train', config, workdir)
  _check_checkpoint(config, workdir, count)

  main.run_mode('fid_stats', config, workdir)
  n_train = len(written['train'][1])
  with np.load(wd.fid_stats_path(config)) as stats:
    assert stats['mu'].shape == (2048,) and int(stats['count']) == n_train
  dim = config.data.num_channels * config.data.image_size ** 2
  with np.load(wd.moments_path(config)) as moments:  # reads only the members asked for
    assert moments['mean'].shape == (dim,) and int(moments['count']) == n_train

  main.run_mode('eval', config, workdir)
  out = wd.eval_dir(workdir)
  with open(os.path.join(out, 'results.json')) as f:
    results = json.load(f)
  assert sorted(results) == [f'ddim_n2_gls_tc{T_C}_late_start', 'ddim_n2_normal_tc999_late_start']
  for r in results.values():
    assert r['num_samples'] == 4 and r['checkpoint_step'] == 2 and math.isfinite(r['fid']) and r['fid'] > 0
    samples = np.load(os.path.join(out, r['samples']))['samples']
    assert samples.shape == (4, config.data.num_channels, config.data.image_size, config.data.image_size)
  assert results[f'ddim_n2_gls_tc{T_C}_late_start']['signature']['gls_rank'] == config.sampling.gls_rank
  for fname in ('results.md', 'results.csv', 'fid_vs_tc_ddim.png', 'grid_ddim_n2.png'):
    assert os.path.isfile(os.path.join(out, fname)), fname
