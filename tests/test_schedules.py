"""experiments/schedules.py: the best vanilla and the best gls cell over grids, the KID gap and the winning grids."""
import csv

import pytest

from experiments import schedules

KEYS = ['method', 'num_steps', 'init', 't_start', 'tc_rule', 'grid', 'nfe', 'num_samples', 'precision', 'fid', 'kid',
        'kid_std']


def test_the_answer_picks_the_best_cells_over_grids(tmp_path):
  rows = [['ddim', 5, 'normal', 999, '', 'late_start', 5, 200, 'fp32', 40.0, 0.030, 0.002],
          ['ddim', 5, 'normal', 999, '', 'karras', 5, 200, 'fp32', 30.0, 0.020, 0.002],   # best vanilla
          ['ddim', 5, 'gls', 200, '', 'late_start', 5, 200, 'fp32', 25.0, 0.012, 0.001],
          ['ddim', 5, 'gls', 400, '', 'karras', 5, 200, 'fp32', 24.0, 0.010, 0.001],      # best gls
          ['ddim', 5, 'gls', 300, 'auto', 'karras', 5, 200, 'fp32', 1.0, 0.0, 0.001]]     # the rule's: left out
  path = tmp_path / 'r.csv'
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([KEYS] + rows)
  [(method, n, v, g, z, per_grid)] = schedules.answer_rows(schedules.read(str(path)))
  assert (method, n, v['grid'], g['grid'], g['t_start']) == ('ddim', 5, 'karras', 'karras', '400')
  assert z == pytest.approx((0.020 - 0.010) / (0.002 ** 2 + 0.001 ** 2) ** 0.5)
  assert per_grid == {'late_start': (40.0, 25.0), 'karras': (30.0, 24.0)}
  out = tmp_path / 'a.md'
  schedules.main(['--csv', str(path), '--out', str(out)])
  text = out.read_text()
  assert '| DDIM | 5 | karras, 30.00, 0.0200 +- 0.0020 | karras, 400, 24.00, 0.0100 +- 0.0010 | 4.5 |' in text
  assert 'resolvedly better (gap > 2) in 1 of 1' in text
