"""models/diffusers_io.py: diffusers UNet2DModel folders in and out, against diffusers itself (random weights; no
download). The UNet2DModels are built with the google/ddpm-* architectures (Ho et al.'s CIFAR-10 model; the 256x256
family at reduced width here, at full size in a slow test)."""
import json
import os

import numpy as np
import pytest
import torch

import sample_lib
from configs.validation import ConfigError, validate_config
from errors import InputError
from models import diffusers_io as dio
from models import utils as mutils

diffusers = pytest.importorskip('diffusers')  # requirements-bench.txt: the peer these tests compare against

CIFAR = dict(sample_size=32, block_out_channels=(128, 256, 256, 256),
             down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
             up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'))
FAMILY_256 = dict(sample_size=256, block_out_channels=(128, 128, 256, 256, 512, 512),
                  down_block_types=('DownBlock2D',) * 4 + ('AttnDownBlock2D', 'DownBlock2D'),
                  up_block_types=('UpBlock2D', 'AttnUpBlock2D') + ('UpBlock2D',) * 4)


def _unet(arch, width=1.0, seed=0):
  """A UNet2DModel as the google/ddpm-* config.json describe it, random weights (std 0.05: every path matters)."""
  arch = dict(arch, block_out_channels=tuple(int(c * width) for c in arch['block_out_channels']))
  unet = diffusers.UNet2DModel(in_channels=3, out_channels=3, layers_per_block=2, attention_head_dim=None,
                               norm_num_groups=32 if width == 1 else 8, norm_eps=1e-6, act_fn='silu',
                               flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, dropout=0.0, **arch)
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in unet.parameters():
      p.copy_(0.05 * torch.randn(p.shape, generator=gen))
  return unet.eval()


def _config_for(folder):
  """A run config that describes the folder's model (what configs/ddpm/*_diffusers.py write by hand)."""
  from configs.ddpm import cifar10
  config = cifar10.get_config()
  for field, value in dio.model_fields(dio.read_unet_config(folder)).items():
    section, name = field.split('.')
    config[section][name] = value
  config.model.dropout = 0.0
  config.model.pretrained = str(folder)
  return config


def test_the_timestep_embeddings_agree():
  from models import layers
  t = torch.tensor([0.0, 1.0, 17.0, 500.0, 999.0])
  theirs = diffusers.models.embeddings.get_timestep_embedding(t, 128, flip_sin_to_cos=False, downscale_freq_shift=1)
  torch.testing.assert_close(layers.get_timestep_embedding(t, 128), theirs, rtol=0, atol=1e-4)  # |args| <= 999


@pytest.fixture(scope='module')
def cifar_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp('ddpm-cifar10-32')
  _unet(CIFAR).save_pretrained(str(folder))
  return folder


def _outputs_agree(unet, model, size, dtype, rtol):
  """Outputs at several t within rtol of the largest. Both embed t in float32, with the same formula in a different
  order of operations (1 ulp apart); in float64 diffusers is handed our embedding, so the comparison is of the
  converted weights and the layers alone (test_the_timestep_embeddings_agree checks the formula)."""
  unet, model = unet.to(dtype), model.to(dtype)
  if dtype == torch.float64:
    from models import layers
    width = unet.config.block_out_channels[0]
    unet.time_proj.forward = lambda t: layers.get_timestep_embedding(t, width)
  x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=dtype)
  for t in (0.0, 10.0, 500.0, 999.0):
    ts = torch.full((2,), t, dtype=dtype)
    with torch.no_grad():
      theirs, ours = unet(x, ts).sample, model(x, ts)
    assert (ours - theirs).abs().max() <= rtol * theirs.abs().max(), (t, (ours - theirs).abs().max())


def test_cifar10_model_loads_with_equal_outputs_in_float32_and_float64(cifar_folder):
  config = _config_for(cifar_folder)
  validate_config(config)  # the folder's config.json agrees with the config
  model = dio.load_into(mutils.create_model(config), str(cifar_folder), config).eval()
  assert mutils.count_parameters(model) == 35_746_307  # Ho et al.'s CIFAR-10 model, as google/ddpm-cifar10-32
  unet = diffusers.UNet2DModel.from_pretrained(str(cifar_folder)).eval()
  _outputs_agree(unet, model, 32, torch.float64, 1e-12)
  _outputs_agree(unet, model, 32, torch.float32, 1e-5)


def test_export_reloads_in_diffusers_bit_identical_and_the_pipeline_generates(cifar_folder, tmp_path):
  config = _config_for(cifar_folder)
  model = dio.load_into(mutils.create_model(config), str(cifar_folder), config)
  out = dio.export(model, config, str(tmp_path / 'export'))
  unet = diffusers.UNet2DModel.from_pretrained(str(cifar_folder))
  back = diffusers.UNet2DModel.from_pretrained(os.path.join(out, 'unet'))
  assert unet.config.block_out_channels == back.config.block_out_channels
  for (k, a), (k2, b) in zip(unet.state_dict().items(), back.state_dict().items()):
    assert k == k2 and torch.equal(a, b), k
  pipe = diffusers.DDPMPipeline.from_pretrained(out)
  assert pipe.scheduler.config.beta_start == pytest.approx(1e-4) and pipe.scheduler.config.beta_end == 0.02
  pipe.scheduler.set_timesteps(2)
  image = pipe(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type='np').images
  assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


@pytest.mark.parametrize('width', [0.125])
def test_256_family_at_reduced_width(tmp_path, width):
  _unet(FAMILY_256, width).save_pretrained(str(tmp_path / 'unet'))
  config = _config_for(tmp_path)  # a pipeline-style folder: the UNet under unet/
  assert tuple(config.model.ch_mult) == (1, 1, 2, 2, 4, 4) and tuple(config.model.attn_resolutions) == (16,)
  model = dio.load_into(mutils.create_model(config), str(tmp_path), config).eval()
  unet = diffusers.UNet2DModel.from_pretrained(str(tmp_path / 'unet')).eval()
  out = dio.export(model, config, str(tmp_path / 'export'))  # and back out: diffusers reloads the same tensors
  back = diffusers.UNet2DModel.from_pretrained(os.path.join(out, 'unet'))
  theirs = diffusers.UNet2DModel.from_pretrained(str(tmp_path / 'unet')).state_dict()
  assert list(back.state_dict()) == list(theirs)
  assert all(torch.equal(back.state_dict()[k], v) for k, v in theirs.items())
  _outputs_agree(unet, model, 256, torch.float64, 1e-12)


@pytest.mark.slow
def test_256_family_full_size(tmp_path):
  _unet(FAMILY_256).save_pretrained(str(tmp_path))
  config = _config_for(tmp_path)
  model = dio.load_into(mutils.create_model(config), str(tmp_path), config).eval()
  unet = diffusers.UNet2DModel.from_pretrained(str(tmp_path)).eval()
  _outputs_agree(unet, model, 256, torch.float32, 1e-5)


def test_old_attention_names_load(cifar_folder, tmp_path):
  """diffusers < 0.15 wrote attention as query / key / value / proj_attn (the google/ddpm-* .bin files)."""
  state = diffusers.UNet2DModel.from_pretrained(str(cifar_folder)).state_dict()
  old = {k.replace('to_q', 'query').replace('to_k', 'key').replace('to_v', 'value').replace('to_out.0', 'proj_attn'):
         v for k, v in state.items()}
  (tmp_path / 'config.json').write_text((cifar_folder / 'config.json').read_text())
  torch.save(old, tmp_path / 'diffusion_pytorch_model.bin')
  config = _config_for(tmp_path)
  a = dio.load_into(mutils.create_model(config), str(tmp_path), config).state_dict()
  b = dio.load_into(mutils.create_model(config), str(cifar_folder), _config_for(cifar_folder)).state_dict()
  assert all(torch.equal(a[k], b[k]) for k in a)


def test_mismatches_and_damage_are_one_line_errors(cifar_folder, tmp_path):
  config = _config_for(cifar_folder)
  config.model.num_res_blocks = 1
  with pytest.raises(ConfigError, match=r'config\.model\.num_res_blocks=1 .* has 2'):
    validate_config(config)
  (tmp_path / 'scheduler').mkdir()
  (tmp_path / 'scheduler' / 'scheduler_config.json').write_text(json.dumps({'beta_schedule': 'squaredcos_cap_v2'}))
  for f in ('config.json', 'diffusion_pytorch_model.safetensors'):
    (tmp_path / f).write_bytes((cifar_folder / f).read_bytes())
  with pytest.raises(ConfigError, match='linear beta schedule'):
    validate_config(_config_for(tmp_path))
  cfg = json.loads((cifar_folder / 'config.json').read_text())
  (tmp_path / 'config.json').write_text(json.dumps(dict(cfg, flip_sin_to_cos=True)))
  with pytest.raises(ConfigError, match='flip_sin_to_cos'):
    dio.model_fields(dio.read_unet_config(str(tmp_path)))
  (tmp_path / 'config.json').write_text(json.dumps(cfg))
  (tmp_path / 'diffusion_pytorch_model.safetensors').write_bytes(b'not a safetensors file')
  with pytest.raises(InputError, match='does not load'):
    dio.load_state_dict(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='holds no diffusers UNet'):
    dio.unet_folder(str(tmp_path / 'nowhere'))


def test_sample_mode_runs_on_a_diffusers_folder_and_training_refuses_it(tmp_path):
  folder = tmp_path / 'tiny'
  arch = dict(sample_size=8, block_out_channels=(32, 64), down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
              up_block_types=('AttnUpBlock2D', 'UpBlock2D'))
  _unet(arch, width=1.0).save_pretrained(str(folder))
  config = _config_for(folder)
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 4, 4, 3
  config.sampling.method = 'ddim'
  path = sample_lib.sample(config, str(tmp_path / 'w'))
  with np.load(path) as f:
    assert f['samples'].shape == (4, 3, 8, 8) and int(f['step']) == 0
  import run_lib
  with pytest.raises(ConfigError, match='model.pretrained'):
    run_lib.train(config, str(tmp_path / 'w2'))


def _tiny_unet_and_model(tmp_path):
  """An 8x8 UNet2DModel (random weights) and our converted twin, with its run config."""
  arch = dict(sample_size=8, block_out_channels=(32, 64), down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
              up_block_types=('AttnUpBlock2D', 'UpBlock2D'))
  unet = _unet(arch)
  unet.save_pretrained(str(tmp_path / 'tiny'))
  config = _config_for(tmp_path / 'tiny')
  model = dio.load_into(mutils.create_model(config), str(tmp_path / 'tiny'), config).eval()
  return unet, model, config


def test_a_diffusers_ddim_loop_equals_our_ddim_on_the_same_model_noise_and_grid(tmp_path):
  import samplers
  import sde_lib
  unet, model, _ = _tiny_unet_and_model(tmp_path)
  scheduler = diffusers.DDIMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule='linear', clip_sample=False,
                                      set_alpha_to_one=True)
  scheduler.set_timesteps(10)
  noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
  x = noise
  with torch.no_grad():
    for t in scheduler.timesteps:
      x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
    eps_fn = lambda y, t: model(y, torch.full((y.shape[0],), float(t)))
    ours = samplers.ddim(eps_fn, sde_lib.DDPMSchedule(), noise, [int(t) for t in scheduler.timesteps])
  assert (ours - x).abs().max() <= 1e-5 * x.abs().max()


def test_the_late_start_in_a_diffusers_loop_equals_our_sampler(tmp_path):
  """samplers.diffusers_late_start.gls_sample with diffusers' DPM-Solver++ equals this code base's gls-DPM-Solver++
  run on the converted model, from the same moments, seeds and grid."""
  import late_start
  import sampling
  import sde_lib
  from samplers import diffusers_late_start, initialisers
  unet, model, config = _tiny_unet_and_model(tmp_path)
  d = 3 * 8 * 8
  a = torch.randn(d, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64) / 16
  moments = {'mean': 0.1 * torch.randn(d, generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy(),
             'cov': (a @ a.T + 0.05 * torch.eye(d, dtype=torch.float64)).numpy(), 'count': 100}
  path = str(tmp_path / 'moments.npz')
  initialisers.save_moments(path, moments, 'CIFAR10', 8, 3, 'fp')
  scheduler = diffusers.DPMSolverMultistepScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule='linear',
                                                    algorithm_type='dpmsolver++', solver_order=2)
  theirs = diffusers_late_start.gls_sample(unet, scheduler, path, t_c=400, num_steps=5, num_samples=4, seed=7)
  schedule = sde_lib.DDPMSchedule()
  spec = sampling.RunSpec.from_config(config.sampling, method='dpmpp_2m', num_steps=5, init='gls', t_start=400,
                                      grid='late_start')
  plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule, moments))
  eps_fn = lambda y, t: model(y, torch.full((y.shape[0],), float(t)))
  import rng
  with torch.no_grad():  # what sampling.generate does, without its clipping to [0, 1]
    x_init = plan.initialiser.sample(4, rng.per_sample_generators(7, range(4))).float()
    ours = plan.sampler(eps_fn, schedule, x_init, plan.timesteps, **plan.options)
  assert (ours - theirs).abs().max() <= 2e-5 * ours.abs().max()


@pytest.mark.slow
def test_eval_runs_end_to_end_on_a_diffusers_cifar10_folder(cifar_folder, tmp_path, monkeypatch):
  """--mode=all on Ho et al.'s architecture from a saved random UNet2DModel, CIFAR-10 in its real on-disk format
  (written tiny): no training, statistics, a vanilla and a gls cell, the table; the cells record the weights."""
  import eval_lib
  from conftest import write_cifar10
  monkeypatch.setenv('SSB_CACHE_DIR', str(tmp_path / 'cache'))
  write_cifar10(tmp_path / 'data', n_per_batch=4, n_test=8)
  config = _config_for(cifar_folder)
  config.data.root, config.sampling.stats_dir = str(tmp_path / 'data'), str(tmp_path / 'stats')
  config.training.num_workers = 0
  config.eval.methods, config.eval.num_steps, config.eval.t_starts = ('ddim',), (3,), (400,)
  config.eval.num_samples = config.eval.batch_size = config.eval.kid_subset_size = 4
  validate_config(config)
  results = eval_lib.main_job(config, str(tmp_path / 'w'))
  assert len(results) == 2 and all(np.isfinite(r['fid']) and r['checkpoint_step'] == 0 for r in results.values())
  assert all(len(r['signature']['weights_sha256']) == 64 for r in results.values())
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')  # nothing was trained


@pytest.mark.slow
def test_eval_runs_end_to_end_at_256_with_a_rank_r_late_start(tmp_path, monkeypatch):
  """The 256x256 architecture (1/8 width) from a saved random UNet2DModel, its data as an image folder, the late
  start fitted at rank r from the images (the 288 GiB covariance is never formed)."""
  import eval_lib
  from PIL import Image
  from configs.ddpm import celebahq256_diffusers
  monkeypatch.setenv('SSB_CACHE_DIR', str(tmp_path / 'cache'))
  _unet(FAMILY_256, 0.125).save_pretrained(str(tmp_path / 'model' / 'unet'))
  for split, n in (('train', 8), ('test', 4)):
    (tmp_path / 'data' / split).mkdir(parents=True)
    for i in range(n):
      pixels = np.random.default_rng(i).integers(0, 256, (300, 280, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(tmp_path / 'data' / split / f'{i:05d}.png')
  config = celebahq256_diffusers.get_config()
  for field, value in dio.model_fields(dio.read_unet_config(str(tmp_path / 'model'))).items():
    section, name = field.split('.')
    config[section][name] = value
  config.model.pretrained, config.data.root = str(tmp_path / 'model'), str(tmp_path / 'data')
  config.sampling.stats_dir, config.sampling.gls_rank, config.training.num_workers = str(tmp_path / 'stats'), 4, 0
  config.eval.methods, config.eval.num_steps, config.eval.t_starts = ('ddim',), (3,), (600,)
  config.eval.num_samples = config.eval.batch_size = config.eval.kid_subset_size = 4
  validate_config(config)
  results = eval_lib.main_job(config, str(tmp_path / 'w'))
  assert sorted(r['init'] for r in results.values()) == ['gls', 'normal']
  assert all(np.isfinite(r['fid']) for r in results.values())
  assert os.path.exists(tmp_path / 'stats' / 'imagefolder_256_moments_r4.npz')


def test_a_folder_with_non_finite_weights_is_refused_before_sampling(tmp_path):
  """NaN weights would sample all-NaN images with exit 0; they are refused like a diverged workdir checkpoint."""
  import shutil
  import subprocess
  import sys
  from safetensors.torch import load_file, save_file
  from conftest import HANG_GUARD_S, ROOT
  folder = tmp_path / 'nan_model'
  shutil.copytree(os.path.join(ROOT, 'assets', 'models', 'digits'), folder)
  weights = folder / 'unet' / 'diffusion_pytorch_model.safetensors'
  state = load_file(str(weights))
  state['conv_out.weight'] = torch.full_like(state['conv_out.weight'], float('nan'))
  save_file(state, str(weights), metadata={'format': 'pt'})
  out = tmp_path / 's.npz'
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={tmp_path / "w"}', '--mode=sample',
         f'--config.model.pretrained={folder}', '--config.sampling.num_samples=4', f'--sample_out={out}']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
  lines = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
  assert proc.returncode != 0 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert 'non-finite' in lines[0] and 'conv_out.weight' in lines[0] and not out.exists()
