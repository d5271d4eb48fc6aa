"""torchrun on CPU (gloo): two processes train a tiny model and share sampling; results match one process."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import dist_util
from conftest import HANG_GUARD_S, ROOT

SAMPLE_SCRIPT = '''
import sys
import numpy as np
import torch
sys.path.insert(0, {root!r})
import dist_util, late_start, sampling, sde_lib
from configs.ddpm import digits
dist_util.init()
config = digits.get_config()
config.data.image_size = 4
schedule = sde_lib.DDPMSchedule()
eps_fn = lambda x, t: 0.1 * x  # any deterministic function works for the check
spec = sampling.RunSpec.from_config(config.sampling, method='ddpm', init='normal', timesteps=[999, 500, 0])
plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
images = sampling.generate(eps_fn, schedule, plan, 7, 2, 3, torch.device('cpu'), lambda x: (x + 1) / 2,
                           progress=False)
if dist_util.is_main():
  np.save(sys.argv[1], images)
'''


def _torchrun(nproc, args, tmp_path):
  # --standalone picks a free port itself; --master_port=0 makes the gloo rendezvous hang on torch 2.14.
  cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}'] + args
  env = dict(os.environ, OMP_NUM_THREADS='1')
  # The timeout only guards against a hang; a loaded machine must not fail the test.
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S, env=env)


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


@pytest.mark.slow
def test_torchrun_checkpoint_problem_is_reported_by_every_rank(tmp_path):
  """A workdir trained with the ssb U-Net, resumed under torchrun with model.variant=score_sde: every rank stops with
  the one-line CheckpointError and its variant hint in its own log (torchrun --log_dir), none trains on, no
  traceback, and the checkpoints are left as they were."""
  from configs.ddpm import digits
  import run_lib
  workdir = tmp_path / 'run'
  tiny = ['--config.model.nf=32', '--config.model.num_res_blocks=1', '--config.training.batch_size=16',
          '--config.training.n_iters=4', '--config.training.snapshot_freq=2',
          '--config.training.snapshot_freq_for_preemption=2', '--config.training.snapshot_sampling=False',
          '--config.training.eval_freq=2']
  config = digits.get_config()  # the same model as `tiny`, trained for 2 steps in this process
  config.model.nf, config.model.num_res_blocks, config.training.batch_size = 32, 1, 16
  config.training.n_iters = config.training.snapshot_freq = config.training.eval_freq = 2
  config.training.snapshot_freq_for_preemption, config.training.snapshot_sampling = 2, False
  run_lib.train(config, str(workdir))
  before = {p: open(p, 'rb').read() for p in glob.glob(str(workdir / 'checkpoints*' / '*.pth'))}
  logs = tmp_path / 'logs'
  proc = _torchrun(2, [f'--log_dir={logs}', '--redirects=3', 'main.py', '--config=configs/ddpm/digits.py',
                       f'--workdir={workdir}', '--mode=train', '--config.model.variant=score_sde'] + tiny, tmp_path)
  assert proc.returncode != 0, proc.stderr[-3000:]
  for rank in (0, 1):
    (path,) = glob.glob(str(logs / '**' / 'attempt_0' / str(rank) / 'stderr.log'), recursive=True)
    text = open(path).read()
    errors = [line for line in text.splitlines() if line.startswith('error: CheckpointError: ')]
    assert len(errors) == 1, f'rank {rank}: {text[-3000:]}'
    assert 'model.variant=ssb' in errors[0] and 'restart_unreadable' in errors[0]
    assert 'Traceback' not in text, f'rank {rank}: {text[-3000:]}'
  assert {p: open(p, 'rb').read() for p in before} == before and len(before) == 2
  assert not (workdir / '.lock_train').exists()


# ---------------------------------------------------------------------------------------- failures, resume, stats
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import losses  # noqa: E402
import run_lib  # noqa: E402
import sde_lib  # noqa: E402
import workdir as wd  # noqa: E402
from conftest import tiny_digits_config  # noqa: E402

# main.py's entry point with rank 1's training loss broken at one step: NaN, or an exception.
FAIL_SCRIPT = '''
import os, sys, time
sys.path.insert(0, {root!r})
import losses
kind, step = sys.argv[1], int(sys.argv[2])
real, calls = losses.ddpm_loss, [0]

def broken(*args, **kwargs):  # rank 1 computes training losses only, one per step
  loss = real(*args, **kwargs)
  if os.environ['RANK'] == '1':
    calls[0] += 1
    if calls[0] == step + 1:
      print(f'failing at {{time.time()!r}}', flush=True)
      if kind == 'nan':
        return loss * float('nan')
      raise RuntimeError(f'injected failure at step {{step}}')
  return loss

losses.ddpm_loss = broken
import main
from absl import app
sys.argv = ['main.py'] + sys.argv[3:]
app.run(main.main)
'''

# run_lib.train or eval_lib.fid_stats with conftest's tiny digits config (the same config as in-process).
RUN_SCRIPT = '''
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import tiny_digits_config
import eval_lib, run_lib
mode, tmp, workdir, overrides = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
config = tiny_digits_config(tmp, **overrides)
if mode == 'train':
  run_lib.train(config, workdir)
else:
  eval_lib.KID_ROWS = {kid_rows}
  eval_lib.fid_stats(config)
'''
KID_ROWS = 13  # cuts the kept KID rows inside a batch of rank 1


def _script(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text.format(root=ROOT, tests=os.path.join(ROOT, 'tests'), kid_rows=KID_ROWS))
  return str(path)


def _tiny(per_sample):
  """A model whose per-row output depends on x and t only (as the U-Net's: GroupNorm, no batch statistics)."""
  return lambda x, t: per_sample * x + 1e-3 * t.view(-1, 1, 1, 1)


def test_rows_of_a_global_batch_draw_the_global_batch_numbers():
  x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
  schedule, model = sde_lib.DDPMSchedule(), _tiny(0.3)
  whole = losses.ddpm_loss(model, schedule, x, torch.Generator().manual_seed(5))
  parts = [losses.ddpm_loss(model, schedule, x[r::2], torch.Generator().manual_seed(5), rows=(r, 2)) for r in (0, 1)]
  torch.testing.assert_close(sum(parts) / 2, whole, rtol=1e-6, atol=0)
  other = losses.ddpm_loss(model, schedule, x[1::2], torch.Generator().manual_seed(5))  # rank 1's rows, own draw
  assert abs(other - parts[1]) > 1e-3 * parts[1]
  flipped = run_lib._flip(x, torch.Generator().manual_seed(7), True)
  for r in (0, 1):
    np.testing.assert_array_equal(run_lib._flip(x[r::2], torch.Generator().manual_seed(7), True, (r, 2)),
                                  flipped[r::2])
  assert not torch.equal(flipped, x) and not torch.equal(flipped, x.flip(-1))


def test_single_process_reductions_and_exit():
  loss = torch.tensor(0.25, requires_grad=True)
  assert dist_util.mean_over_ranks(loss).item() == 0.25
  with pytest.raises(SystemExit, match='error: boom'):
    dist_util.exit_all('error: boom')


def _fail_cmd(script, kind, step, workdir):
  return [script, kind, str(step), '--config=configs/ddpm/digits.py', f'--workdir={workdir}', '--mode=train',
          '--config.model.nf=32', '--config.model.num_res_blocks=1', '--config.training.batch_size=16',
          '--config.training.n_iters=10', '--config.training.snapshot_freq=10',
          '--config.training.snapshot_freq_for_preemption=3', '--config.training.snapshot_sampling=False',
          '--config.training.eval_freq=100']


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['nan', 'error'])
def test_a_failure_on_one_rank_stops_every_rank_and_keeps_the_last_checkpoint(tmp_path, kind):
  """Rank 1's loss goes NaN (or raises) at step 7: torchrun returns non-zero with the reason, and the
  checkpoint of step 6 is there. The timeout only guards against a hang; the test never waits for it."""
  workdir, step = tmp_path / 'run', 7
  proc = _torchrun(2, _fail_cmd(_script(tmp_path, 'fail.py', FAIL_SCRIPT), kind, step, workdir), tmp_path)
  ended, out = time.time(), proc.stdout + proc.stderr
  assert proc.returncode != 0, out[-3000:]
  if kind == 'nan':  # the loss is averaged over the ranks: both stop in the same step, each with the reason
    assert out.count(f'FloatingPointError: training loss is nan at step {step}') == 2, out[-3000:]
  else:  # rank 1's traceback; rank 0 learns from gloo that its peer is gone
    assert f'RuntimeError: injected failure at step {step}' in out, out[-3000:]
  failed_at = float(re.search(r'failing at ([0-9.]+)', out).group(1))
  print(f'{kind}: torchrun stopped both ranks {ended - failed_at:.1f} s after the failure')
  ckpt = torch.load(workdir / 'checkpoints-meta' / 'checkpoint.pth', weights_only=True)
  assert ckpt['step'] == 6 and all(torch.isfinite(v).all() for v in ckpt['model'].values())


def _scalars(workdir, tag):
  """{step: value} of one TensorBoard scalar over all event files of a run (a resumed run adds a file)."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  events = EventAccumulator(wd.tensorboard_dir(workdir), size_guidance={'scalars': 0})
  events.Reload()
  return {e.step: e.value for e in events.Scalars(tag)}


RESUME = {'training.log_freq': 1, 'training.snapshot_freq': 4, 'training.snapshot_freq_for_preemption': 4,
          'training.snapshot_sampling': True, 'training.eval_freq': 100, 'data.random_flip': True}


@pytest.mark.slow
def test_resuming_with_two_processes_continues_the_one_process_run(tmp_path):
  """1 process to step k, then 2 (gloo) to 2k: the same global batches, t, eps and flips as one process to 2k,
  so the losses and weights agree up to float reduction order (DDP averages the two half-batch gradients)."""
  k, ref, run = 4, str(tmp_path / 'ref'), str(tmp_path / 'run')
  run_lib.train(tiny_digits_config(tmp_path, **RESUME, **{'training.n_iters': 2 * k}), ref)
  run_lib.train(tiny_digits_config(tmp_path, **RESUME, **{'training.n_iters': k}), run)
  args = ['train', str(tmp_path), run, json.dumps(dict(RESUME, **{'training.n_iters': 2 * k}))]
  proc = _torchrun(2, [_script(tmp_path, 'run.py', RUN_SCRIPT)] + args, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [step for step, _ in wd.checkpoints(run)] == [2 * k, 2 * k, k]  # meta, checkpoint_2, checkpoint_1
  assert os.path.exists(wd.snapshot_grid_path(run, 2 * k))  # sampled by both ranks, written by rank 0
  for tag in ('train/loss', 'train/grad_norm'):
    expected, got = _scalars(ref, tag), _scalars(run, tag)
    assert sorted(got) == sorted(expected) == list(range(1, 2 * k + 1))
    print(tag, 'max relative difference', max(abs(got[s] / expected[s] - 1) for s in got))
    np.testing.assert_allclose([got[s] for s in expected], list(expected.values()), rtol=1e-4)
  a, b = (torch.load(wd.checkpoint_path(d, 2), weights_only=True) for d in (ref, run))
  diff = max((a['model'][n] - b['model'][n]).abs().max().item() for n in a['model'])
  print('max |weight difference| after', 2 * k, 'steps:', diff)
  assert a['step'] == b['step'] == 2 * k and diff < 1e-5


@pytest.mark.slow
def test_fid_stats_and_moments_sharded_over_two_processes_equal_one_process(tmp_path, monkeypatch):
  import eval_lib
  monkeypatch.setenv('SSB_CACHE_DIR', str(tmp_path / 'cache'))  # the ONNX export is made once, then shared
  monkeypatch.setattr(eval_lib, 'KID_ROWS', KID_ROWS)
  overrides = {'data.num_train': 37, 'eval.batch_size': 8}  # 5 batches: rank 0 takes 3, rank 1 two (one short)
  one, two = tiny_digits_config(tmp_path / 'one', **overrides), tiny_digits_config(tmp_path / 'two', **overrides)
  eval_lib.fid_stats(one)
  args = ['stats', str(tmp_path / 'two'), '', json.dumps(overrides)]
  proc = _torchrun(2, [_script(tmp_path, 'run.py', RUN_SCRIPT)] + args, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  a, b = np.load(wd.fid_stats_path(one)), np.load(wd.fid_stats_path(two))
  assert a['count'] == b['count'] == 37 and a['feats'].shape == b['feats'].shape == (KID_ROWS, 2048)
  for name in ('feats', 'mu', 'sigma'):  # Inception features: float32 convs, thread counts differ
    print(name, 'max |difference|', np.abs(a[name] - b[name]).max())
    np.testing.assert_allclose(b[name], a[name], rtol=1e-6, atol=1e-6)
  a, b = np.load(wd.moments_path(one)), np.load(wd.moments_path(two))
  assert a['count'] == b['count'] == 37
  for name in ('mean', 'cov'):  # the same float32 pixels summed in float64, in another order
    np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-10)


EXIT_SCRIPT = '''
import sys
sys.path.insert(0, {root!r})
import dist_util
import torch.distributed as dist
dist_util.init()
if dist_util.rank() == 1:
  dist_util.exit_all('error: rank 1 cannot go on', wait_s=1.0)
dist.barrier()  # rank 0 waits in a collective that rank 1 never joins
'''


@pytest.mark.slow
def test_exit_all_on_one_rank_does_not_wait_for_a_blocked_rank(tmp_path):
  """A rank that exits with an error while the others sit in a collective: it waits wait_s for them (through
  the store, not a collective), exits, and torchrun stops the rest; the gloo timeout (30 min) never comes in."""
  proc = _torchrun(2, [_script(tmp_path, 'exit.py', EXIT_SCRIPT)], tmp_path)
  assert proc.returncode != 0
  assert 'error: rank 1 cannot go on' in proc.stderr
