"""torchrun on CPU (gloo): two processes train a tiny model and share sampling; results match one process."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dist_util
from conftest import ROOT

SAMPLE_SCRIPT = '''
import sys
import numpy as np
import torch
sys.path.insert(0, {root!r})
import dist_util, sampling, sde_lib
from configs.ddpm import digits
dist_util.init()
config = digits.get_config()
config.data.image_size = 4
schedule = sde_lib.DDPMSchedule()
eps_fn = lambda x, t: 0.1 * x  # any deterministic function works for the check
plan = sampling.sampling_plan(config, schedule, 'ddpm', init='normal', timesteps=[999, 500, 0])
images = sampling.generate(eps_fn, schedule, plan, 7, 2, 3, torch.device('cpu'), lambda x: (x + 1) / 2,
                           progress=False)
if dist_util.is_main():
  np.save(sys.argv[1], images)
'''


def _torchrun(nproc, args, tmp_path):
  # --standalone picks a free port itself; --master_port=0 makes the gloo rendezvous hang on torch 2.14.
  cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}'] + args
  env = dict(os.environ, OMP_NUM_THREADS='1')
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)


def test_single_process_is_a_no_op():
  assert dist_util.world_size() == 1 and dist_util.is_main()
  assert dist_util.shard(range(5)) == [0, 1, 2, 3, 4]
  x = np.arange(6).reshape(3, 2)
  assert dist_util.gather_ordered(x, [0, 1, 2], 3) is x
  model = torch.nn.Linear(2, 2)
  assert dist_util.wrap_model(model) is model and dist_util.unwrap(model) is model


@pytest.mark.slow
def test_torchrun_sampling_is_independent_of_process_count(tmp_path):
  script = tmp_path / 'sample.py'
  script.write_text(SAMPLE_SCRIPT.format(root=ROOT))
  outs = []
  for nproc in (1, 2):
    out = tmp_path / f'out{nproc}.npy'
    proc = _torchrun(nproc, [str(script), str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs.append(np.load(out))
  assert outs[0].shape == (7, 1, 4, 4)
  np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.slow
def test_torchrun_training_writes_a_loadable_checkpoint(tmp_path):
  workdir = tmp_path / 'run'
  args = ['main.py', '--config=configs/ddpm/digits.py', f'--workdir={workdir}', '--mode=train',
          '--config.model.nf=32', '--config.model.num_res_blocks=1', '--config.training.batch_size=16',
          '--config.training.n_iters=4', '--config.training.snapshot_freq=4',
          '--config.training.snapshot_freq_for_preemption=2', '--config.training.snapshot_sampling=False',
          '--config.training.eval_freq=2']
  proc = _torchrun(2, args, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  ckpt = torch.load(workdir / 'checkpoints' / 'checkpoint_1.pth', weights_only=True)
  assert ckpt['step'] == 4
  assert all(k.startswith('module.') and not k.startswith('module.module.') for k in ckpt['model'])
