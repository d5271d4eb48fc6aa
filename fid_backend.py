"""Fast CPU backends for the FID Inception features (docs/fid.md; timings in BENCHMARKS.md).

pytorch-fid's InceptionV3 (built by ``evaluation.load_inception``) stays the source of truth: its graph, with the
resize to 299x299 and the [0,1] -> [-1,1] map inside, is exported to ONNX once per weights hash, cached under
``inception_weights.cache_dir()`` and run in fp32 by onnxruntime. On 2 CPU cores that is about 2x
pytorch-fid's own pipeline (BENCHMARKS.md, "FID features"). Every load checks the exported graph against the torch
network on a probe batch, so a stale, corrupt or mis-exported file is rebuilt (or the torch path is used).

Backends: 'torch' (the pytorch-fid module itself; batched fp32 with TF32 off on CUDA), 'onnxruntime', and
'auto' = onnxruntime on CPU, torch on CUDA. A missing or failing fast backend falls back to torch with a one-line
warning. OpenVINO, as fast as onnxruntime here, is not offered: after OpenVINO 2026.4 fails to read a corrupt
cached graph, the next Python signal handler that runs in the process (torch's DataLoader installs one for SIGCHLD)
kills it with SIGSEGV, raised by the kernel while delivering the signal (its CPU plugin calls sigaltstack)
(BENCHMARKS.md, "FID features"; tests/test_evaluation.py::test_fast_backend_leaves_signal_handlers_working).
"""
import copy
import io
import logging
import os
import warnings

import numpy as np
import torch

import io_util
from errors import one_line

BACKENDS = ('auto', 'torch', 'onnxruntime')
FAST_BACKENDS = ('onnxruntime',)
ONNX_FORMAT = 'v1-opset17'  # bump when the export (inputs, opset, preprocessing) changes: new cache file
PROBE_RTOL = 1e-4  # max |fast - torch| / max |torch| on the probe batch; fp32 exports agree to ~5e-6


class FastBackendError(RuntimeError):
  """The fast backend could not be built or disagrees with the torch network."""


def onnx_cache_path(cache_dir: str, weights_hash: str) -> str:
  """The exported graph's file for these weights: ``{cache_dir}/fid_inception_{hash[:16]}_{ONNX_FORMAT}.onnx``."""
  return os.path.join(cache_dir, f'fid_inception_{weights_hash[:16]}_{ONNX_FORMAT}.onnx')


def _import(backend):
  """The backend's module, or None (with the reason) when it is not installed or broken."""
  try:
    import onnxruntime
    return onnxruntime, ''
  except ImportError as err:  # also a module set to None in sys.modules, as the tests do
    return None, str(err).splitlines()[0] if str(err) else 'not installed'


def resolve(backend: str, device) -> str:
  """'auto' | 'torch' | 'onnxruntime' -> the backend to use on ``device`` (fast ones are CPU-only).

  A fast backend that is requested (or picked by 'auto') but not importable gives 'torch' with one warning line.
  """
  if backend not in BACKENDS:
    raise ValueError(f'config.eval.fid_backend must be one of {BACKENDS}, got {backend!r}')
  if torch.device(device).type != 'cpu':
    if backend in FAST_BACKENDS:
      raise ValueError(f'fid_backend={backend!r} runs on CPU only; use "auto" or "torch" on {device}')
    return 'torch'
  if backend == 'torch':
    return 'torch'
  wanted = FAST_BACKENDS if backend == 'auto' else (backend,)
  reasons = []
  for name in wanted:
    module, why = _import(name)
    if module is not None:
      return name
    reasons.append(f'{name}: {why}')
  logging.warning('FID features: no fast CPU backend (%s); using the torch path, about 2x slower '
                  '(pip install onnxruntime)', '; '.join(reasons))
  return 'torch'


def export_onnx(net: torch.nn.Module, path: str):
  """Exports pytorch-fid's module (input (N,3,H,W) in [0,1], any N/H/W; output (N,2048,1,1)) to ONNX at ``path``.

  The module's own F.interpolate(299, bilinear, align_corners=False) and 2x-1 are part of the graph.
  """
  net = copy.deepcopy(net).cpu().float().to(memory_format=torch.contiguous_format).eval()
  buffer = io.BytesIO()
  with warnings.catch_warnings():  # the TorchScript-based exporter warns that it is the legacy one
    warnings.simplefilter('ignore')
    torch.onnx.export(_ListOut(net), (torch.rand(2, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                      input_names=['images'], output_names=['pool3'],
                      dynamic_axes={'images': {0: 'n', 2: 'h', 3: 'w'}, 'pool3': {0: 'n'}})
  data = buffer.getvalue()
  io_util.atomic_write(path, lambda f: f.write(data))


class _ListOut(torch.nn.Module):
  """pytorch-fid's module returns a list of blocks; ONNX export wants a tensor."""

  def __init__(self, net):
    super().__init__()
    self.net = net

  def forward(self, x):
    return self.net(x)[0]


def _session(backend, path, threads):
  """A callable float32 (N,3,H,W) numpy -> (N,2048,1,1) numpy running the ONNX file at ``path`` in fp32."""
  assert backend == 'onnxruntime', backend
  import onnxruntime as ort
  options = ort.SessionOptions()
  options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # NCHWc conv layouts: ~1.5x
  options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
  session = ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])
  return lambda x: session.run(None, {'images': x})[0]


class FastInception(torch.nn.Module):
  """pytorch-fid's network run by a fast CPU backend; called like it: (N,3,H,W) [0,1] -> [(N,2048,1,1)].

  ``net`` (the torch module) is kept: it gives state_dict(), parameters() and the device, and checks the export.
  """

  def __init__(self, net, backend, run):
    super().__init__()
    self.net, self.backend, self._run = net, backend, run

  def state_dict(self, *args, **kwargs):  # the torch network's keys, as with backend='torch'
    return self.net.state_dict(*args, **kwargs)

  def features(self, x) -> np.ndarray:
    """(n,3,H,W) float in [0,1] -> (n,2048) float64 numpy (resize and normalisation happen inside)."""
    x = np.ascontiguousarray(torch.as_tensor(x, dtype=torch.float32).detach().cpu().numpy())
    return self._run(x).reshape(len(x), -1).astype(np.float64)

  def forward(self, x):
    return [torch.from_numpy(self.features(x)).float().reshape(len(x), -1, 1, 1)]


def _probe_error(net, run) -> float:
  """max |run - net| / max |net| on a fixed 3-image batch (two sizes through the resize would cost twice)."""
  x = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
  with torch.inference_mode():
    ref = net.cpu()(x.contiguous())[0].reshape(3, -1).double().numpy()
  out = run(x.numpy()).reshape(3, -1).astype(np.float64)
  return float(np.abs(out - ref).max() / np.abs(ref).max())


def _checked_run(net, backend, path, threads, export):
  """The backend's runner on ``path`` (exported first if ``export``), checked against ``net`` on the probe."""
  if export:
    export_onnx(net, path)
  run = _session(backend, path, threads)
  err = _probe_error(net, run)
  if not err <= PROBE_RTOL:  # also catches NaN
    raise FastBackendError(f'it differs from the torch network by {err:.1e} (relative) on the probe batch')
  return run


def build(net, backend, cache_dir, weights_hash, threads=None) -> FastInception:
  """FastInception for ``net`` (on CPU) from the cached export, or from a fresh one when the cache is missing,
  unreadable or wrong; FastBackendError when a fresh export fails or disagrees with ``net`` too."""
  threads = threads or torch.get_num_threads()
  path = onnx_cache_path(cache_dir, weights_hash)
  if os.path.isfile(path):
    try:
      return FastInception(net, backend, _checked_run(net, backend, path, threads, export=False))
    except Exception as err:  # truncated/corrupt file, other exporter version, runtime failure
      logging.warning('cached ONNX Inception %s is unusable (%s): exporting it again', path, one_line(err))
  try:
    return FastInception(net, backend, _checked_run(net, backend, path, threads, export=True))
  except Exception as err:
    raise FastBackendError(f'{backend} on the exported Inception {path} failed ({one_line(err)})') from None


def wrap(net, backend, device, cache_dir, weights_hash_fn):
  """``net`` itself for the torch backend, else a FastInception; falls back to ``net`` with one warning line.

  weights_hash_fn: () -> the weights' SHA-256 (only called for a fast backend: hashing costs ~0.3 s).
  """
  backend = resolve(backend, device)
  if backend == 'torch':
    return net
  try:
    return build(net, backend, cache_dir, weights_hash_fn())
  except FastBackendError as err:
    logging.warning('FID features: %s; using the torch path', err)
    return net
