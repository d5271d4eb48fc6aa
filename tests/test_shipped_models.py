"""The trained models shipped in assets/models/ (diffusers DDPMPipeline folders): their records agree with their
weights, diffusers itself loads them, a diffusers DDIM loop equals this code base's DDIM on the same noise and grid,
and --config.model.pretrained samples them from the command line."""
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import io_util
from models import checkpoints
import sde_lib
from conftest import HANG_GUARD_S, ROOT
from samplers import get_sampler

MODELS = os.path.join(ROOT, 'assets', 'models')
SHIPPED = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(MODELS, '*', 'model_index.json')))


def _config(name):
  """configs/ddpm/<name>.py pointed at the shipped folder."""
  config = importlib.import_module(f'configs.ddpm.{name}').get_config()
  config.model.pretrained = os.path.join(MODELS, name)
  config.eval.precision = 'fp32'
  return config


def test_the_digits_model_is_shipped():
  assert 'digits' in SHIPPED, f'assets/models/digits is missing (found {SHIPPED})'


@pytest.mark.parametrize('name', SHIPPED)
def test_the_records_name_the_weights_sha256(name):
  folder = os.path.join(MODELS, name)
  digest = io_util.file_sha256(os.path.join(folder, 'unet', 'diffusion_pytorch_model.safetensors'))
  info = json.load(open(os.path.join(folder, 'export_info.json')))
  card = open(os.path.join(folder, 'README.md')).read()
  assert info['weights_sha256'] == digest and f'sha256 {digest}' in card
  assert re.search(rf"{info['checkpoint_step']:,} steps", card)


@pytest.mark.parametrize('name', SHIPPED)
def test_the_card_names_the_training_command_and_the_tables_that_exist(name):
  card = open(os.path.join(MODELS, name, 'README.md')).read()
  provenance = card.split('## Provenance', 1)[-1]
  assert f'--config=configs/ddpm/{name}.py' in provenance and '--mode=export_diffusers' in provenance
  paths = re.findall(r'`(assets/[^`]+)`', provenance)
  assert paths and [p for p in paths if not os.path.exists(os.path.join(ROOT, p))] == []


@pytest.mark.parametrize('name', SHIPPED)
def test_diffusers_loads_it_and_its_ddim_loop_equals_ours(name):
  """UNet2DModel / DDPMPipeline.from_pretrained load the folder; diffusers' DDIMScheduler loop (eta 0, no clipping,
  alpha_bar(-1) = 1) and samplers.ddim on the model loaded through model.pretrained agree to float32 round-off."""
  diffusers = pytest.importorskip('diffusers')
  folder = os.path.join(MODELS, name)
  unet = diffusers.UNet2DModel.from_pretrained(os.path.join(folder, 'unet')).eval()
  pipe = diffusers.DDPMPipeline.from_pretrained(folder)
  assert isinstance(pipe.unet, diffusers.UNet2DModel)
  scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, set_alpha_to_one=True)
  scheduler.set_timesteps(10)
  config = _config(name)
  shape = (4, config.data.num_channels, config.data.image_size, config.data.image_size)
  noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
  x = noise
  with torch.no_grad():
    for t in scheduler.timesteps:
      x = scheduler.step(unet(x, t).sample, t, x, eta=0.0).prev_sample
  model, step = checkpoints.load_ema_module(config, '/nonexistent', 'cpu')
  assert step == 0
  with torch.no_grad():
    eps_fn = lambda y, t: model(y, torch.full((y.shape[0],), float(t)))
    ours = get_sampler('ddim')(eps_fn, sde_lib.DDPMSchedule.from_config(config), noise,
                            [int(t) for t in scheduler.timesteps])
  assert torch.isfinite(x).all() and x.abs().max() > 0.1
  assert (ours - x).abs().max() <= 2e-5 * x.abs().max(), (ours - x).abs().max()


@pytest.mark.parametrize('name', SHIPPED)
def test_the_command_line_samples_it(name, tmp_path):
  out = tmp_path / 'samples.npz'
  cmd = [sys.executable, 'main.py', f'--config=configs/ddpm/{name}.py', f'--workdir={tmp_path / "w"}', '--mode=sample',
         f'--config.model.pretrained={os.path.join(MODELS, name)}', '--config.sampling.num_samples=4',
         '--config.sampling.method=ddim', '--config.sampling.num_steps=3', f'--sample_out={out}']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out) as f:
    samples = f['samples']
  assert samples.shape[0] == 4 and np.isfinite(samples).all() and samples.std() > 0.05


def _eval_shipped_digits(workdir, env=None, batch_size=16):
  """--mode=all on the shipped digits model at small size (32 training images for the statistics, 16 samples per
  cell) in float32; returns (results.json, the gls cell's samples)."""
  stats = os.path.join(workdir, 'stats')
  cmd = [sys.executable, 'main.py', '--config=configs/ddpm/digits.py', f'--workdir={workdir}', '--mode=all',
         f'--config.model.pretrained={os.path.join(MODELS, "digits")}', '--config.data.num_train=32',
         f'--config.sampling.stats_dir={stats}', '--config.eval.methods=("ddim","dpmpp_2m")', '--config.eval.num_steps=(5,)',
         '--config.eval.t_starts=(200,)', '--config.eval.num_samples=16', f'--config.eval.batch_size={batch_size}',
         '--config.eval.kid_subset_size=16', '--config.eval.precision=fp32']
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S,
                        env=dict(os.environ, OMP_NUM_THREADS='1', **(env or {})))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, 'eval', 'results.json')))
  samples = np.load(os.path.join(workdir, 'eval', results['ddim_n5_gls_tc200_late_start']['samples']))['samples']
  return results, samples


def test_the_reproduction_gives_the_same_fid_on_another_cpu_path(tmp_path):
  """The reproduction machinery at small size: float32 sampling of a shipped model, run once as this host runs it
  and once forced onto the AVX2 kernels of torch and numpy (another host's arithmetic) with another batch size:
  the samples agree to float32 round-off and every FID to 2 decimals, and the cells record precision and sha256."""
  first, x = _eval_shipped_digits(str(tmp_path / 'a'))
  avx2 = {'ATEN_CPU_CAPABILITY': 'avx2', 'NPY_DISABLE_CPU_FEATURES': 'X86_V4 AVX512_ICL AVX512_SPR'}
  second, y = _eval_shipped_digits(str(tmp_path / 'b'), env=avx2, batch_size=5)
  assert np.abs(x - y).max() <= 1e-4
  assert sorted(first) == sorted(second)
  digest = json.load(open(os.path.join(MODELS, 'digits', 'export_info.json')))['weights_sha256']
  for key, record in first.items():
    assert round(record['fid'], 2) == round(second[key]['fid'], 2), key
    assert record['precision'] == 'fp32' and record['signature']['weights_sha256'] == digest
