"""U-Net fast paths (config.training/eval.precision and .compile, model.channels_last, training.tf32).

Each path is checked against the eager fp32 network it replaces, trains, and reads and writes the same
checkpoints. torch.compile on CPU builds C++ kernels (minutes on a loaded 2-core machine): those tests are `slow`.
"""
import math

import pytest
import torch

import run_lib
from models import checkpoints
import sde_lib
import workdir as wd
from configs import validation
from errors import InputError
from conftest import tiny_digits_config
from models import utils as mutils
from models.ema import ExponentialMovingAverage

# bf16 keeps 8 significand bits (unit roundoff 2^-9 ~ 2e-3 per rounding). Over the tiny U-Net's ~20 autocast
# layers the measured relative error |eps_bf16 - eps_fp32| / |eps_fp32| is 5.3e-3 (5.5e-3 to 8.1e-3 for the
# CIFAR-10 config, benchmarks/bench_fast_paths.py); 3e-2 leaves 4-6x margin for other seeds and CPUs, and is
# still far below what a wrong path gives (a missing layer or unscaled input is O(1)).
BF16_REL_TOL = 3e-2
FP32_ATOL = 1e-5  # compiled / channels_last fp32 against eager fp32: reordered sums only
ALL_FAST = {'training.compile': True, 'model.channels_last': True, 'training.precision': 'bf16'}


def _random_model(config):
  """The tiny U-Net with O(1) random weights (the init zeroes the last conv, which would hide differences)."""
  torch.manual_seed(0)
  model = mutils.create_model(config)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) / (math.sqrt(p[0].numel()) if p.dim() > 1 else 10.))
  return model


def _inputs(config, batch=16):
  gen = torch.Generator().manual_seed(1)
  size = config.data.image_size
  x = torch.randn(batch, config.data.num_channels, size, size, generator=gen)
  return x, torch.randint(0, config.model.num_scales, (batch,), generator=gen).float()


def _conv_weight(model):
  return next(p for p in model.parameters() if p.dim() == 4)


def _rel(a, b):
  return float((a - b).norm() / b.norm())


def test_default_eps_fn_is_the_plain_network_bitwise(tiny_config):
  model = _random_model(tiny_config)
  x, t = _inputs(tiny_config)
  with torch.no_grad():
    expected = model.eval()(x, t)
  assert torch.equal(mutils.ema_eps_fn(model)(x, t), expected)


def test_channels_last_equals_eager_fp32(tiny_config):
  model = _random_model(tiny_config)
  x, t = _inputs(tiny_config)
  ref = mutils.ema_eps_fn(model)(x, t)
  fast = mutils.ema_eps_fn(model, channels_last=True)
  out = fast(x, t)
  assert _conv_weight(fast.model).is_contiguous(memory_format=torch.channels_last)
  assert out.dtype == torch.float32 and out.is_contiguous()
  assert (out - ref).abs().max() <= FP32_ATOL


@pytest.mark.slow
def test_compiled_fp32_equals_eager_fp32(tiny_config):
  model = _random_model(tiny_config)
  x, t = _inputs(tiny_config)
  ref = mutils.ema_eps_fn(model)(x, t)
  compiled = mutils.ema_eps_fn(model, compile=True)
  out = compiled(x, t)
  assert not isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)  # .model stays plain
  assert out.dtype == torch.float32
  assert (out - ref).abs().max() <= FP32_ATOL


@pytest.mark.parametrize('channels_last', [False, True])
def test_bf16_autocast_is_within_the_stated_tolerance(tiny_config, channels_last):
  model = _random_model(tiny_config)
  x, t = _inputs(tiny_config)
  ref = mutils.ema_eps_fn(model)(x, t)
  out = mutils.ema_eps_fn(model, precision='bf16', channels_last=channels_last)(x, t)
  assert out.dtype == torch.float32 and out.is_contiguous()
  assert 0 < _rel(out, ref) < BF16_REL_TOL  # > 0: autocast really ran in bf16


def _fixed_batch_losses(config, steps=15):
  """Training losses of ``steps`` _train_step calls on one repeated digits batch (lr 2e-3, no warm-up)."""
  import datasets
  config.optim.lr, config.optim.warmup = 2e-3, 0
  ds = datasets.get_dataset(config, 'train')
  x = datasets.get_data_scaler(config)(torch.stack([ds[i][0] for i in range(config.training.batch_size)]))
  model, ema, optimizer = run_lib.build_state(config, 'cpu')
  step_model = run_lib._step_model(model, config.training.compile)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  return [run_lib._train_step(config, step_model, ema, optimizer, schedule, x, s)[0] for s in range(steps)]


FLAG_SETS = {
    'fp32': {},
    'bf16': {'training.precision': 'bf16'},
    'channels_last': {'model.channels_last': True},
    'compile': pytest.param({'training.compile': True}, marks=pytest.mark.slow),
    'all': pytest.param(ALL_FAST, marks=pytest.mark.slow),
}


@pytest.mark.parametrize('flags', list(FLAG_SETS.values()), ids=list(FLAG_SETS))
def test_training_with_each_flag_gives_a_finite_decreasing_loss(tmp_path, flags):
  losses = _fixed_batch_losses(tiny_digits_config(tmp_path, **flags))
  assert all(math.isfinite(v) for v in losses)
  assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses  # fp32 eager: 0.30 (0.97 -> 0.18 in 15 steps)


def test_channels_last_training_follows_fp32_training(tmp_path):
  ref = _fixed_batch_losses(tiny_digits_config(tmp_path))
  fast = _fixed_batch_losses(tiny_digits_config(tmp_path, **{'model.channels_last': True}))
  assert max(abs(a - b) / b for a, b in zip(fast, ref)) < 1e-4


def _train(tmp_path, name, n_iters, flags):
  config = tiny_digits_config(tmp_path, **{'training.n_iters': n_iters, 'training.snapshot_freq': 2,
                                           'training.snapshot_freq_for_preemption': 2, 'training.log_freq': 1,
                                           'training.snapshot_sampling': False}, **flags)
  model, ema = run_lib.train(config, str(tmp_path / name))
  return config, model, ema


CROSS = {
    'bf16+channels_last': {'model.channels_last': True, 'training.precision': 'bf16'},
    'compile+bf16+channels_last': pytest.param(ALL_FAST, marks=pytest.mark.slow),
}


@pytest.mark.parametrize('flags', list(CROSS.values()), ids=list(CROSS))
def test_checkpoints_written_with_fast_paths_load_plain_and_resume(tmp_path, flags):
  _, model, _ = _train(tmp_path, 'run', 2, flags)
  path = wd.checkpoint_path(str(tmp_path / 'run'), 1)
  keys = list(torch.load(path, weights_only=True)['model'])
  assert all(k.startswith('module.') and '_orig_mod' not in k for k in keys)
  plain_config = tiny_digits_config(tmp_path)
  plain, ema, optimizer = run_lib.build_state(plain_config, 'cpu')
  assert mutils.load_checkpoint(path, plain, ema, optimizer) == 2
  for key, value in plain.state_dict().items():
    assert torch.equal(value, model.state_dict()[key]), key
  _, resumed, _ = _train(tmp_path, 'run', 4, {})  # plain fp32 eager continues the fast run
  assert mutils.load_checkpoint(wd.checkpoint_path(str(tmp_path / 'run'), 2), plain) == 4
  assert all(torch.isfinite(p).all() for p in resumed.parameters())


@pytest.mark.parametrize('flags', list(CROSS.values()), ids=list(CROSS))
def test_plain_checkpoints_resume_with_fast_paths(tmp_path, flags):
  _train(tmp_path, 'run', 2, {})
  config, model, ema = _train(tmp_path, 'run', 4, flags)
  assert _conv_weight(model).is_contiguous(memory_format=torch.channels_last)
  params = [p for p in model.parameters() if p.requires_grad]
  assert all(s.stride() == p.stride() for s, p in zip(ema.shadow_params, params))  # layouts matched on resume
  plain = mutils.create_model(tiny_digits_config(tmp_path))
  assert mutils.load_checkpoint(wd.checkpoint_path(str(tmp_path / 'run'), 2), plain) == 4
  # the eval fast paths on the trained run: bf16 + channels_last eps against the plain fp32 one
  x, t = _inputs(config)
  config.eval.precision = 'bf16'
  eps_fast, step = checkpoints.load_eps_fn(config, str(tmp_path / 'run'), 'cpu')
  ema_plain = ExponentialMovingAverage(plain.parameters(), decay=0.999)
  mutils.load_checkpoint(wd.checkpoint_path(str(tmp_path / 'run'), 2), plain, ema_plain)
  ref = mutils.ema_eps_fn(plain, ema_plain)(x, t)
  assert step == 4 and 0 < _rel(eps_fast(x, t), ref) < BF16_REL_TOL


def test_tf32_is_on_only_inside_training_and_restored(tf32_switches):
  tf32_switches(matmul=False, cudnn=False, cuda_available=True)
  with pytest.raises(RuntimeError):
    with run_lib._tf32(True):
      assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
      raise RuntimeError('a failing step')
  assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
  with run_lib._tf32(False):
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


@pytest.mark.parametrize('field,value', [('training.precision', 'fp16'), ('eval.precision', 'BF16'),
                                         ('training.compile', 'yes'), ('model.channels_last', 1),
                                         ('training.tf32', 'False')])
def test_bad_fast_path_values_are_refused(tiny_config, field, value):
  section, name = field.split('.')
  with tiny_config.ignore_type():
    tiny_config[section][name] = value
  with pytest.raises(validation.ConfigError, match=field):
    validation.validate_config(tiny_config)


def test_fast_paths_are_valid_and_unknown_precision_fails_early(tiny_config):
  for field, value in ALL_FAST.items():
    section, name = field.split('.')
    tiny_config[section][name] = value
  tiny_config.eval.precision = 'bf16'
  validation.validate_config(tiny_config)
  with pytest.raises(InputError, match='precision'):
    mutils.ema_eps_fn(_random_model(tiny_config), precision='fp16')


def test_auto_precision_is_bf16_exactly_where_the_device_has_native_bf16(tiny_config, monkeypatch):
  """'auto' resolves per device: bf16 on a CPU with AVX512_BF16 / AMX (or a bf16 GPU), fp32 elsewhere."""
  for native in (True, False):
    monkeypatch.setattr(mutils, 'native_bf16', lambda device, native=native: native)
    assert mutils.resolve_precision('cpu', 'auto') == ('bf16' if native else 'fp32')
    assert mutils.resolve_precision('cpu', 'fp32') == 'fp32' and mutils.resolve_precision('cpu', 'bf16') == 'bf16'
    assert isinstance(mutils.autocast('cpu', 'auto'), torch.autocast) == native
  tiny_config.training.precision = tiny_config.eval.precision = 'auto'
  validation.validate_config(tiny_config)
  has = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
  monkeypatch.undo()
  assert mutils.native_bf16('cpu') == has and mutils.native_bf16('meta') is False
