"""Tests for models/: U-Net variants vs golden fixtures, EMA, checkpoint I/O (docs/model.md)."""
import json
import os

import pytest
import torch

from configs.ddpm import cifar10
from models import utils as mutils
from models.ema import ExponentialMovingAverage

FIXTURES = {'ssb': 'ssb_ddpm', 'score_sde': 'score_sde_ddpm'}
# score_sde's sigmas = np.exp(linspace(...)) in float64: numpy's exp is within 1 ulp of the true value but its SIMD
# kernels differ by CPU (48 of the 1,000 entries are 1 ulp apart between AVX512 and AVX2-only hosts), so the
# fixture's buffer is matched to 4 ulp (relative 4 * 2**-52 = 8.9e-16), not bit for bit.
SIGMAS_RTOL = 4 * torch.finfo(torch.float64).eps


def small_config(variant):
  """The fixtures' small model (see the fixture READMEs)."""
  config = cifar10.get_config()
  config.data.image_size = 16
  config.model.variant = variant
  config.model.nf = 32
  config.model.ch_mult = (1, 2)
  config.model.num_res_blocks = 2
  config.model.attn_resolutions = (8,)
  config.model.dropout = 0.0
  return config


def small_model_config(variant='ssb'):
  config = small_config(variant)
  config.data.image_size = 8
  config.model.ch_mult = (1, 1)
  config.model.num_res_blocks = 1
  config.model.attn_resolutions = (4,)
  return config


@pytest.fixture(autouse=True)
def _one_thread():
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


@pytest.mark.parametrize('variant', ['ssb', 'score_sde'])
def test_cifar10_keys_shapes_and_param_count(variant, fixtures_dir):
  ref = json.load(open(os.path.join(fixtures_dir, FIXTURES[variant], 'cifar10_state_dict_keys.json')))
  config = cifar10.get_config()
  config.model.variant = variant
  with torch.device('meta'):  # keys and shapes only
    model = mutils.create_model(config)
  got = [['module.' + k, list(v.shape)] for k, v in model.state_dict().items()]
  assert got == ref['state_dict']
  assert mutils.count_parameters(model) == ref['total_params']
  assert ('sigmas' in model.state_dict()) == (variant == 'score_sde')


@pytest.mark.parametrize('variant', ['ssb', 'score_sde'])
@pytest.mark.parametrize('via_ema', [False, True])
def test_fixture_checkpoint_reproduces_outputs(variant, via_ema, fixtures_dir):
  folder = os.path.join(fixtures_dir, FIXTURES[variant])
  model = mutils.create_model(small_config(variant))
  ema = ExponentialMovingAverage(model.parameters(), decay=0.9999)
  step = mutils.load_checkpoint(os.path.join(folder, 'checkpoint_small.pth'), model, ema=ema)
  assert step == 7
  if via_ema:
    fresh = mutils.create_model(small_config(variant))
    eps_fn = mutils.ema_eps_fn(fresh, ema)  # fresh (random) weights, EMA shadow copied in
  else:
    eps_fn = mutils.ema_eps_fn(model)
  io = torch.load(os.path.join(folder, 'io_small.pt'))
  out = eps_fn(io['x'], io['t'])
  assert out.shape == io['out'].shape
  torch.testing.assert_close(out, io['out'], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('variant', ['ssb', 'score_sde'])
def test_init_reproduces_reference_weights_bit_exactly(variant, fixtures_dir):
  """The READMEs' recipe (seed 0, build, seed 1, perturb) regenerates the fixture weights: same RNG order, so every
  parameter is bit-exact. A computed buffer (score_sde's float64 ``sigmas``, numpy's exp) is not drawn from the RNG
  and depends on the host's SIMD exp: it is compared to SIGMAS_RTOL instead."""
  torch.manual_seed(0)
  model = mutils.create_model(small_config(variant))
  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p += 0.02 * torch.randn_like(p)
  ckpt = torch.load(os.path.join(fixtures_dir, FIXTURES[variant], 'checkpoint_small.pth'))
  state = model.state_dict()
  assert ['module.' + k for k in state] == list(ckpt['model'])
  params = {name for name, _ in model.named_parameters()}
  assert set(state) - params == ({'sigmas'} if variant == 'score_sde' else set())  # the only buffer
  for k, v in state.items():
    if k in params:
      assert torch.equal(v, ckpt['model']['module.' + k]), k
    else:
      torch.testing.assert_close(v, ckpt['model']['module.' + k], rtol=SIGMAS_RTOL, atol=0, msg=k)


def test_zero_init_output_layers():
  model = mutils.create_model(small_model_config())
  assert model.all_modules[-1].weight.abs().max() < 1e-4  # conv_out init scale 1e-10 (docs/model.md)
  assert model.all_modules[3].Conv_1.weight.abs().max() < 1e-4
  assert model.all_modules[3].Conv_0.weight.abs().max() > 1e-2


def test_score_sde_sigmas_buffer_matches_checkpoint(fixtures_dir):
  model = mutils.create_model(small_config('score_sde'))
  ckpt = torch.load(os.path.join(fixtures_dir, 'score_sde_ddpm', 'checkpoint_small.pth'))
  assert model.sigmas.dtype == torch.float64
  torch.testing.assert_close(model.sigmas, ckpt['model']['module.sigmas'], rtol=SIGMAS_RTOL, atol=0)


def test_ema_eps_fn_broadcasts_t_and_is_a_snapshot():
  torch.manual_seed(0)
  model = mutils.create_model(small_model_config())
  for p in model.parameters():
    p.data += 0.02 * torch.randn_like(p)
  eps_fn = mutils.ema_eps_fn(model)
  x = torch.randn(2, 3, 8, 8)
  ref = eps_fn(x, torch.tensor([5., 5.]))
  torch.testing.assert_close(eps_fn(x, 5), ref)
  torch.testing.assert_close(eps_fn(x, torch.tensor(5.)), ref)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(1.0)
  torch.testing.assert_close(eps_fn(x, 5.), ref)  # later changes to model do not leak in
  with pytest.raises(ValueError, match='shape'):
    eps_fn(x, torch.zeros(3))
  with pytest.raises(ValueError, match='t \\(B,\\)'):
    model(x, torch.zeros(3))


def test_save_load_round_trip_is_exact_and_in_reference_layout(tmp_path):
  torch.manual_seed(0)
  model = mutils.create_model(small_model_config('score_sde'))
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
  ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
  loss = model(torch.randn(2, 3, 8, 8), torch.tensor([1., 500.])).square().mean()
  loss.backward()
  optimizer.step()
  ema.update(model.parameters())
  path = str(tmp_path / 'ckpt' / 'checkpoint_3.pth')
  mutils.save_checkpoint(path, model, ema, optimizer, 3)
  assert os.listdir(tmp_path / 'ckpt') == ['checkpoint_3.pth']  # no temp file left behind
  raw = torch.load(path, weights_only=True)
  assert set(raw) == {'optimizer', 'model', 'ema', 'step'} and raw['step'] == 3
  assert all(k.startswith('module.') for k in raw['model'])
  assert 'module.sigmas' in raw['model']
  assert set(raw['ema']) == {'decay', 'num_updates', 'shadow_params'}

  torch.manual_seed(1)
  model2 = mutils.create_model(small_model_config('score_sde'))
  optimizer2 = torch.optim.Adam(model2.parameters(), lr=2e-4)
  ema2 = ExponentialMovingAverage(model2.parameters(), decay=0.5)
  assert mutils.load_checkpoint(path, model2, ema2, optimizer2) == 3
  for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
    assert torch.equal(a, b), k
  for a, b in zip(ema.shadow_params, ema2.shadow_params):
    assert torch.equal(a, b)
  assert ema2.decay == 0.999 and ema2.num_updates == 1
  assert optimizer2.state_dict()['state'][0]['step'] == 1

  mutils.save_checkpoint(path, model, ema, None, 4)  # overwrite; optimizer None -> {}
  assert torch.load(path, weights_only=True)['optimizer'] == {}


def test_load_without_module_prefix_and_sigmas(tmp_path):
  torch.manual_seed(0)
  src = mutils.create_model(small_model_config('score_sde'))
  path = str(tmp_path / 'c.pth')
  state = {k: v for k, v in src.state_dict().items() if k != 'sigmas'}
  torch.save({'model': state, 'step': 9}, path)
  dst = mutils.create_model(small_model_config('score_sde'))
  assert mutils.load_checkpoint(path, dst) == 9
  for k, v in src.state_dict().items():
    assert torch.equal(dst.state_dict()[k], v), k
  assert dst.sigmas.shape == (1000,)  # kept its own


def test_ssb_model_ignores_checkpoint_sigmas(tmp_path):
  model = mutils.create_model(small_model_config('ssb'))
  state = {'module.' + k: v for k, v in model.state_dict().items()}
  state['module.sigmas'] = torch.ones(1000, dtype=torch.float64)
  path = str(tmp_path / 'c.pth')
  torch.save({'model': state, 'step': 2}, path)
  assert mutils.load_checkpoint(path, mutils.create_model(small_model_config('ssb'))) == 2


def test_num_groups_sets_every_group_norm_and_keeps_the_checkpoint_format():
  config = small_model_config()
  default = mutils.create_model(config)
  config.model.num_groups = 8
  model = mutils.create_model(config)
  norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
  assert norms and {m.num_groups for m in norms} == {8}
  assert {m.num_groups for m in default.modules() if isinstance(m, torch.nn.GroupNorm)} == {32}
  assert {k: v.shape for k, v in model.state_dict().items()} == \
      {k: v.shape for k, v in default.state_dict().items()}
  with torch.no_grad():  # O(1) weights everywhere (the last conv starts near zero), shared by both nets
    for p in default.parameters():
      p.normal_(0.0, 0.2)
  model.load_state_dict(default.state_dict())  # same weights, other normalisation: outputs differ
  x, t = torch.randn(2, 3, 8, 8), torch.tensor([10., 900.])
  assert not torch.allclose(model(x, t), default(x, t))


def test_wrong_variant_names_the_fix(fixtures_dir):
  path = os.path.join(fixtures_dir, 'ssb_ddpm', 'checkpoint_small.pth')
  with pytest.raises(mutils.CheckpointError, match='variant=ssb'):
    mutils.load_checkpoint(path, mutils.create_model(small_config('score_sde')))
  path = os.path.join(fixtures_dir, 'score_sde_ddpm', 'checkpoint_small.pth')
  with pytest.raises(mutils.CheckpointError, match='variant=score_sde'):
    mutils.load_checkpoint(path, mutils.create_model(small_config('ssb')))


def test_bad_files_raise_checkpoint_error(tmp_path, fixtures_dir):
  model = mutils.create_model(small_model_config())
  missing = str(tmp_path / 'nope.pth')
  with pytest.raises(mutils.CheckpointError, match='nope.pth'):
    mutils.load_checkpoint(missing, model)
  data = open(os.path.join(fixtures_dir, 'ssb_ddpm', 'checkpoint_small.pth'), 'rb').read()
  truncated = tmp_path / 'trunc.pth'
  truncated.write_bytes(data[: len(data) // 2])
  with pytest.raises(mutils.CheckpointError, match='not a checkpoint \\(damaged or not a torch file\\)'):
    mutils.load_checkpoint(str(truncated), model)
  foreign = str(tmp_path / 'foreign.pth')
  torch.save({'weights': torch.zeros(3)}, foreign)
  with pytest.raises(mutils.CheckpointError, match='layout'):
    mutils.load_checkpoint(foreign, model)
  other = str(tmp_path / 'other.pth')
  torch.save({'model': {'module.foo': torch.zeros(1)}}, other)
  with pytest.raises(mutils.CheckpointError, match='module|foo'):
    mutils.load_checkpoint(other, model)


# torch's refusal text advises this (the file would run its code); a CheckpointError never passes it on
TORCH_ADVICE = ('weights_only` set to `False`', 'Re-running', 'add_safe_globals', 'arbitrary code')


def _one_line_refusal(path, *words):
  """Loads ``path``; returns the one-line CheckpointError that names it, the words and none of torch's advice."""
  with pytest.raises(mutils.CheckpointError) as err:
    mutils.load_checkpoint(str(path), mutils.create_model(small_model_config()))
  msg = str(err.value)
  assert '\n' not in msg and str(path) in msg and all(w in msg for w in words), msg
  assert not any(a in msg for a in TORCH_ADVICE), msg
  return msg


@pytest.mark.parametrize('kind', ['random_bytes', 'truncated', 'text'])
def test_a_damaged_file_is_not_a_checkpoint(tmp_path, fixtures_dir, kind):
  """Random bytes, a truncated checkpoint or a text file: 'not a checkpoint (damaged or not a torch file)', never
  'holds objects other than tensors' (the cause torch's unpickler error suggested for random bytes)."""
  path = tmp_path / 'checkpoint_1.pth'
  data = open(os.path.join(fixtures_dir, 'ssb_ddpm', 'checkpoint_small.pth'), 'rb').read()
  path.write_bytes({'random_bytes': os.urandom(4096), 'truncated': data[:len(data) // 3],
                    'text': b'a damaged file'}[kind])
  msg = _one_line_refusal(path, 'not a checkpoint (damaged or not a torch file)', 'delete it')
  assert 'other than tensors' not in msg


class _Payload:
  """Unpickling it would create the folder ``path``: the code a hostile checkpoint runs."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return os.mkdir, (self.path,)


class _Custom:
  """A plain class instance: a global the weights-only unpickler does not know."""


@pytest.mark.parametrize('payload', ['code', 'class'])
def test_a_pickle_with_code_or_classes_is_refused_without_running_it(tmp_path, payload):
  marker = tmp_path / 'the payload ran'
  path = tmp_path / 'checkpoint_1.pth'
  torch.save({'model': {}, 'extra': _Payload(str(marker)) if payload == 'code' else _Custom()}, path)
  global_name = 'posix.mkdir' if payload == 'code' else f'{__name__}._Custom'
  _one_line_refusal(path, f'holds objects other than tensors ({global_name})',
                    'refused (never loaded with weights_only=False)')
  assert not marker.exists()


def test_a_pickle_with_code_is_one_line_on_the_command_line(tmp_path):
  """--mode=sample in a workdir whose only checkpoint runs code when unpickled: one 'error:' line, no traceback,
  none of torch's advice, and the code never runs."""
  import subprocess
  import sys
  from conftest import HANG_GUARD_S, ROOT
  marker = tmp_path / 'the payload ran'
  workdir = tmp_path / 'w'
  (workdir / 'checkpoints').mkdir(parents=True)
  torch.save({'model': {}, 'ema': _Payload(str(marker))}, workdir / 'checkpoints' / 'checkpoint_1.pth')
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={workdir}', '--mode=sample']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith('error: CheckpointError: ') and 'holds objects other than tensors' in lines[0]
  assert not any(a in lines[0] for a in TORCH_ADVICE) and not marker.exists(), lines[0]


@pytest.mark.parametrize('part', ['model', 'ema'])
def test_checkpoint_with_non_finite_weights_is_unreadable_and_skipped(tmp_path, part):
  """A checkpoint damaged inside (a weight overwritten while the file still unpickles) is refused like a truncated
  one, and the newest-checkpoint search falls back to the older file instead of sampling NaNs."""
  from models import checkpoints
  import workdir as wd
  model = mutils.create_model(small_model_config())
  ema = ExponentialMovingAverage(model.parameters(), decay=0.9)
  workdir = str(tmp_path)
  os.makedirs(wd.checkpoint_dir(workdir))
  for index in (1, 2):
    mutils.save_checkpoint(wd.checkpoint_path(workdir, index), model, ema, None, step=index)
  damaged = wd.checkpoint_path(workdir, 2)
  ckpt = torch.load(damaged, weights_only=False)
  tensor = next(iter(ckpt['model'].values())) if part == 'model' else ckpt['ema']['shadow_params'][3]
  tensor.view(-1)[0] = float('nan')
  torch.save(ckpt, damaged)
  with pytest.raises(mutils.CheckpointError, match='non-finite'):
    mutils.load_checkpoint(damaged, model, ema)
  fresh = mutils.create_model(small_model_config())
  assert checkpoints.restore_checkpoint(workdir, fresh, ExponentialMovingAverage(fresh.parameters(), 0.9)) == 1
  assert all(bool(torch.isfinite(p).all()) for p in fresh.parameters())


def test_ema_update_matches_formula():
  p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
  ema = ExponentialMovingAverage([p], decay=0.9)
  with torch.no_grad():
    p.copy_(torch.tensor([3.0, 0.0]))
  ema.update([p])  # n=1: decay_eff = min(0.9, 2/11)
  d = 2 / 11
  expected = torch.tensor([1.0, -2.0]) - (1 - d) * (torch.tensor([1.0, -2.0]) - p.detach())
  torch.testing.assert_close(ema.shadow_params[0], expected)
  for _ in range(200):
    ema.update([p])  # decay_eff reaches the 0.9 cap
  assert ema.num_updates == 201
  shadow = ema.shadow_params[0].clone()
  with torch.no_grad():
    p.copy_(torch.tensor([5.0, 5.0]))
  ema.update([p])
  torch.testing.assert_close(ema.shadow_params[0], shadow - 0.1 * (shadow - p.detach()))
  ema.store([p])
  ema.copy_to([p])
  torch.testing.assert_close(p.detach(), ema.shadow_params[0])
  ema.restore([p])
  torch.testing.assert_close(p.detach(), torch.tensor([5.0, 5.0]))
  state = ema.state_dict()
  assert set(state) == {'decay', 'num_updates', 'shadow_params'} and state['num_updates'] == 202


@pytest.mark.parametrize('field, value, name', [
    ('model.name', 'ncsnpp', 'model.name'),
    ('model.variant', 'ho', 'model.variant'),
    ('model.nonlinearity', 'tanh', 'model.nonlinearity'),
    ('model.normalization', 'BatchNorm', 'model.normalization'),
    ('data.image_size', 30, 'image_size'),
    ('model.nf', 40, 'model.nf'),
])
def test_invalid_config_raises_with_field_name(field, value, name):
  config = cifar10.get_config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=name.replace('.', r'\.')):
    mutils.create_model(config)


@pytest.mark.gpu
def test_fixture_on_cuda_without_tf32(fixtures_dir):
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  for variant, folder in FIXTURES.items():
    model = mutils.create_model(small_config(variant)).cuda()
    ema = ExponentialMovingAverage(model.parameters(), decay=0.9999)
    mutils.load_checkpoint(os.path.join(fixtures_dir, folder, 'checkpoint_small.pth'), model, ema,
                           map_location='cuda')
    io = torch.load(os.path.join(fixtures_dir, folder, 'io_small.pt'))
    out = mutils.ema_eps_fn(model, ema)(io['x'].cuda(), io['t'].cuda())
    torch.testing.assert_close(out.cpu(), io['out'], atol=1e-5, rtol=1e-5)
