"""Tests for analysis/memorization.py: RP / memorization / kNN-ratio scores and feature nets (docs/gen.md)."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis import memorization as M


def _images(n, seed):
  return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_best_match_chunked_against_the_full_similarity_matrix():
  a, b = torch.randn(5, 7, dtype=torch.float64), torch.randn(11, 7, dtype=torch.float64)
  sims = torch.nn.functional.cosine_similarity(a[:, None], b[None], dim=2)  # (5, 11), independent of the module
  # best_match uses the features as given (dot product): the cosine only for L2-normalised rows
  best, idx = M.best_match(a, b, chunk_size=3)
  dots = a @ b.T
  torch.testing.assert_close(best, dots.max(1).values)
  assert idx.tolist() == dots.argmax(1).tolist()
  unit_a, unit_b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
  best_unit, idx_unit = M.best_match(unit_a, unit_b, chunk_size=3)
  torch.testing.assert_close(best_unit, sims.max(1).values)
  assert idx_unit.tolist() == sims.argmax(1).tolist()
  with pytest.raises(ValueError, match=r'\(5, 7\).*\(4, 6\)'):
    M.best_match(a, torch.zeros(4, 6))


def test_memorization_and_reproducibility_scores():
  net = M.load_feature_net('pixels')
  train = _images(20, 0)
  novel = _images(6, 1)
  samples = torch.cat([train[[4, 9]], novel])  # 2 copies, 6 novel images
  out = M.memorization_score(net(samples), net(train), threshold=0.985)
  assert out['mem'] == pytest.approx(2 / 8) and out['gen'] == pytest.approx(6 / 8)
  assert out['nn_index'][:2].tolist() == [4, 9]
  assert out['best_sim'][0] == pytest.approx(1.0) and out['best_sim'].shape == (8,)
  # RP: pairs matched by index; 3 of 4 pairs equal
  a = net(train[:4])
  b = net(torch.cat([train[:3], novel[:1]]))
  assert M.reproducibility_score(a, b, 0.985) == pytest.approx(0.75)
  with pytest.raises(ValueError, match='same number of samples'):
    M.reproducibility_score(a, b[:3], 0.6)


def test_knn_ratio():
  train = _images(30, 2)
  near_copy = train[[0, 7]] + 0.001
  samples = torch.cat([near_copy, _images(3, 3)])
  out = M.knn_ratio_memorization(samples, train, chunk_size=4)
  assert out['nn_index'][:2].tolist() == [0, 7]
  assert (out['ratios'][:2] < 0.05).all() and (out['ratios'][2:] > 1 / 3).all()
  assert out['mem'] == pytest.approx(2 / 5)
  ref = torch.cdist(samples.reshape(5, -1).double(), train.reshape(30, -1).double()).sort(1).values
  np.testing.assert_allclose(out['ratios'], (ref[:, 0] / ref[:, 1]).numpy())
  with pytest.raises(ValueError, match=r'\(5, 1, 8, 8\).*\(30, 1, 7, 7\)'):
    M.knn_ratio_memorization(samples, torch.zeros(30, 1, 7, 7))


def test_pixel_features_centring():
  imgs = _images(4, 4)
  f = M.load_feature_net('pixels')(imgs.numpy())  # numpy accepted
  assert f.shape == (4, 64) and f.dtype == torch.float32
  torch.testing.assert_close(f.norm(dim=1), torch.ones(4))
  torch.testing.assert_close(f.sum(1), torch.zeros(4), atol=1e-5, rtol=0)  # per-image centred
  # brightness/contrast changes leave the per-image-centred cosine at 1
  torch.testing.assert_close(M.load_feature_net('pixels')(0.5 * imgs + 0.2), f, atol=1e-5, rtol=0)
  ref = M.load_feature_net('pixels', reference=imgs)
  centred = (imgs - imgs.mean(0)).reshape(4, -1)  # training-mean centring
  torch.testing.assert_close(ref(imgs), centred / centred.norm(dim=1, keepdim=True))
  with pytest.raises(ValueError, match='reference mean image'):
    ref(torch.zeros(2, 1, 4, 4))


class _FakeSSCD(nn.Module):
  def forward(self, x):
    if x.shape[-1] != 320 or x.shape[1] != 3:
      raise RuntimeError('expected (N, 3, 320, 320)')
    return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1) * 3.0


def test_sscd_path_and_errors(tmp_path):
  path = tmp_path / 'fake_sscd.pt'
  torch.jit.script(_FakeSSCD()).save(str(path))
  imgs = _images(3, 5)
  raw = M.load_feature_net(str(path))(imgs)  # grey 8x8 -> RGB 320x320 inside; default: raw outputs
  assert raw.shape == (3, 12)
  ref = _FakeSSCD()(torch.nn.functional.interpolate(
      (imgs.expand(-1, 3, -1, -1) - torch.tensor(M.IMAGENET_MEAN).view(1, 3, 1, 1))
      / torch.tensor(M.IMAGENET_STD).view(1, 3, 1, 1), size=(320, 320), mode='bilinear', align_corners=False))
  torch.testing.assert_close(raw, ref)  # = the model's output, not re-normalised
  assert (raw.norm(dim=1) - 1).abs().min() > 0.1
  unit = M.load_feature_net(str(path), sscd_normalize=True)(imgs)
  torch.testing.assert_close(unit.norm(dim=1), torch.ones(3))
  torch.testing.assert_close(unit, raw / raw.norm(dim=1, keepdim=True))
  # the scores take the raw dot product of raw SSCD features (the GEN reference), the cosine of normalised ones
  dots = raw.double() @ raw.double().T
  sq_norms = dots.diagonal()
  assert sq_norms.min() > 1.5  # so a threshold of 1.5 separates raw dot products from cosines
  assert M.reproducibility_score(raw, raw, threshold=1.5) == 1.0
  assert M.reproducibility_score(unit, unit, threshold=1.5) == 0.0
  out = M.memorization_score(raw[:1], raw, threshold=float(dots[0].max()) - 1e-9)
  assert out['best_sim'][0] == pytest.approx(float(dots[0].max())) and out['mem'] == 1.0
  assert M.memorization_score(unit[:1], unit, threshold=0.999)['best_sim'][0] == pytest.approx(1.0)
  with pytest.raises(FileNotFoundError, match='SSCD TorchScript.*sscd_disc_large'):
    M.load_feature_net(str(tmp_path / 'missing.pt'))
  with pytest.raises(FileNotFoundError, match='SSCD'):
    M.load_feature_net('sscd')
  with pytest.raises(ValueError, match='unknown feature net'):
    M.load_feature_net('resnet')
  assert M.default_threshold(str(path)) == 0.6 and M.default_threshold('pixels') == M.DEFAULT_THRESHOLDS['pixels']


def test_calibrate_threshold_separable_and_overlapping():
  out = M.calibrate_threshold([0.9, 0.95, 0.99], [0.1, 0.5, 0.8])
  assert 0.8 < out['threshold'] < 0.9 and out['balanced_accuracy'] == 1.0
  out = M.calibrate_threshold([0.9, 0.6], [0.1, 0.7])
  assert out['balanced_accuracy'] == 0.75
  with pytest.raises(ValueError, match='positives and negatives'):
    M.calibrate_threshold([], [0.1])


def test_digits_calibration_reproduces_default():
  out = M.calibrate_digits_threshold(seed=0)
  assert abs(out['threshold'] - M.DEFAULT_THRESHOLDS['pixels']) < 0.01
  assert out['balanced_accuracy'] > 0.99
  pos, neg = out['pos_sims'], out['neg_sims']
  thr = M.DEFAULT_THRESHOLDS['pixels']
  assert (pos > thr).mean() > 0.99 and (neg <= thr).mean() > 0.97
