"""Every benchmark script runs at toy size (--smoke) so that the benchmarks cannot rot (BENCHMARKS.md).

Each script runs as a subprocess from tmp_path (nothing is written to the repository). The peer comparisons
need diffusers (requirements-bench.txt); they are skipped without it. The peer scripts check themselves: the
sampler pairs must agree in float64 and the two U-Nets must have the same parameter sizes, else they exit 1.
"""
import os
import subprocess
import sys

import pytest

from conftest import HANG_GUARD_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmarks')

# script -> (needs diffusers, a line the smoke output must contain or None)
SMOKE = {
    'auto_tc_variants.py': (False, 'within 2 SE / scored / cells: kl '),
    'bench_fast_paths.py': (False, None),
    'bench_fid.py': (False, None),
    'bench_gls_fit.py': (False, None),
    'bench_low_rank_fit.py': (False, '| 4 | 8 |'),
    'bench_model.py': (False, '| DDPM CIFAR-10 (ssb) |'),
    'bench_samplers.py': (False, '(b) gls D=48'),
    'bench_train.py': (False, '3 steps after a 2-step warm-up'),
    'calibrate_threshold.py': (False, 'optimal threshold over seeds [0]'),
    'bench_solver_order.py': (False, '| UniPC (bh2) |'),
    'mnist_recipe_study.py': (False, '| floor | 0 | real |'),
    'bench_train_flops.py': (False, '| train step bf16 |'),
    'bench_peer_samplers.py': (True, '| PLMS | PNDMScheduler(skip_prk_steps=True) |'),
    'bench_peer_unet.py': (True, 'same per-tensor sizes: True'),
    'bench_karras_rounding.py': (True, '| 5 | 999, 843, 593, 142, 0 |'),
    'bench_pndm_steps.py': (False, '| vanilla (from 999) | 10 | F-PNDM |'),
    'bench_gaussian_opt.py': (False, '| ddim | 3 | vanilla |'),
    'config_reads.py': (False, '| sampling | 3 | 1 |'),
}
# Scripts without a --smoke flag yet (not run here); a new script must be added to one of the two lists.
NO_SMOKE_YET = ()


def test_every_benchmark_is_listed():
  scripts = {f for f in os.listdir(BENCH) if f.endswith('.py')}
  unlisted = scripts - set(SMOKE) - set(NO_SMOKE_YET)
  assert not unlisted, f'add {sorted(unlisted)} to SMOKE (with a --smoke flag) or NO_SMOKE_YET'
  for name in SMOKE:
    with open(os.path.join(BENCH, name)) as f:
      assert "'--smoke'" in f.read(), f'{name} has no --smoke flag'


@pytest.mark.slow
@pytest.mark.parametrize('script', sorted(SMOKE))
def test_benchmark_smoke(script, tmp_path):
  needs_diffusers, expected = SMOKE[script]
  if needs_diffusers:
    pytest.importorskip('diffusers')
  env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONDONTWRITEBYTECODE='1')
  proc = subprocess.run([sys.executable, os.path.join(BENCH, script), '--smoke'], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=HANG_GUARD_S)
  assert proc.returncode == 0, f'{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}'
  assert expected is None or expected in proc.stdout, proc.stdout
  assert os.listdir(tmp_path) == []


def test_recipe_study_tables_resume_from_their_csv(tmp_path):
  """Rows read back from study.csv are strings; writing the tables again after a resume must still work."""
  sys.path.insert(0, BENCH)
  import mnist_recipe_study as study
  row = dict(recipe='floor', step=0, sampler='real', n=0, nfe=0, precision='-', num_samples=8, fid=8.06, kid=1e-4,
             kid_std=3e-4, seconds=0)
  study.save(str(tmp_path), [row])
  rows = study.load_rows(str(tmp_path))
  study.save(str(tmp_path), rows)
  assert '| floor | 0 | real | 0 | 0 | - | 8 | 8.0600 |' in (tmp_path / 'study.md').read_text()


def test_recipe_study_cells_parse_and_refuse_unknown_samplers():
  sys.path.insert(0, BENCH)
  import argparse
  import mnist_recipe_study as study
  parser = argparse.ArgumentParser()
  assert study.parse_cells(parser, 'ddim:10,ddpm:1000') == [('ddim', 10), ('ddpm', 1000)]
  for bad in ('pndm:10', 'ddim:0', 'ddim'):
    with pytest.raises(SystemExit):
      study.parse_cells(parser, bad)
