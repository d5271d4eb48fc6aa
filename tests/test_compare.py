"""experiments/compare.py: two runs of the same cells, matched by cell, with the FID difference and the KID gap."""
import csv

import pytest

from experiments import compare

KEYS = ['method', 'num_steps', 'init', 't_start', 'tc_rule', 'grid', 'nfe', 'num_samples', 'precision', 'fid', 'kid',
        'kid_std']


def _write(path, rows):
  with open(path, 'w', newline='') as f:
    csv.writer(f).writerows([KEYS] + rows)
  return str(path)


def test_cells_are_matched_and_the_gap_is_in_combined_standard_errors(tmp_path):
  a = _write(tmp_path / 'a.csv', [['ddim', 10, 'gls', 500, '', 'late_start', 10, 1000, 'fp32', 12.0, 0.005, 0.0003],
                                  ['ddim', 10, 'normal', 999, '', 'late_start', 10, 1000, 'fp32', 20.0, 0.010, 0.001],
                                  ['unipc', 3, 'normal', 999, '', 'late_start', 3, 1000, 'fp32', 90.0, 0.09, 0.003]])
  b = _write(tmp_path / 'b.csv', [['ddim', 10, 'normal', 999, '', 'late_start', 10, 1000, 'bf16', 21.0, 0.012, 0.001],
                                  ['ddim', 10, 'gls', 500, '', 'late_start', 10, 1000, 'bf16', 11.5, 0.0049, 0.0004],
                                  ['ddim', 10, 'gls', 600, '', 'late_start', 10, 1000, 'bf16', 11.0, 0.004, 0.0004]])
  out = tmp_path / 'c.md'
  compare.main(['--a', a, '--b', b, '--a_name', 'fp32', '--b_name', 'bf16', '--out', str(out)])
  text = out.read_text()
  assert '| DDIM | 10 | - | 20.00 | 21.00 | -1.00 | 0.0100 +- 0.0010 | 0.0120 +- 0.0010 | -1.4 |' in text
  assert '| gls-DDIM | 10 | 500 | 12.00 | 11.50 | +0.50 |' in text and text.index('| DDIM |') < text.index('gls-DDIM')
  assert '2 cells in both; |KID gap| <= 2 in 2 of them' in text and 'largest |FID difference| 1.00' in text
  assert 'fp32 not in bf16: unipc_3_normal_999_late_start' in text and '600' not in text.split('|')[-1]
  matched, _ = compare.pairs(compare.schedules.read(a), compare.schedules.read(b))
  assert compare.tables.kid_gap(*matched[0]) == pytest.approx((0.010 - 0.012) / (2 * 0.001 ** 2) ** 0.5)
