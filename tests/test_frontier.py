"""experiments/frontier.py: the headline figure's numbers come from the csv files (best over t_c, Pareto frontier,
many-step references), and the committed assets/headline.md is what the script makes of the committed csv files."""
import csv
import os

from conftest import ROOT
from experiments import frontier

KEYS = ['method', 'num_steps', 'init', 't_start', 'tc_rule', 'grid', 'nfe', 'fid', 'precision']


def _write(path, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(KEYS)
    writer.writerows(rows)
  return str(path)


def test_best_over_t_c_and_the_frontier(tmp_path):
  path = _write(tmp_path / 'a.csv', [
      ['ddim', 3, 'normal', 999, '', 'late_start', 3, 80.0, 'fp32'],
      ['ddim', 3, 'gls', 200, '', 'late_start', 3, 30.0, 'fp32'],
      ['ddim', 3, 'gls', 400, '', 'karras', 3, 25.0, 'fp32'],   # best over t_c and grids
      ['ddim', 3, 'gls', 300, 'auto', 'late_start', 3, 1.0, 'fp32'],  # the auto rule: not part of the sweep's best
      ['pndm', 3, 'gls', 200, '', 'late_start', 12, 40.0, 'fp32'],  # more NFE and worse: off the frontier
      ['ddim', 5, 'gls', 200, '', 'late_start', 5, 22.0, 'fp32'],
      ['ddim', 100, 'normal', 999, '', 'late_start', 100, 20.0, 'fp32'],  # a reference line
  ])
  cells = frontier.read_cells(path)
  curves = frontier.best_points(cells)
  assert [p[:2] for p in curves[('ddim', 'gls')]] == [(3, 25.0), (5, 22.0)]
  assert curves[('ddim', 'gls')][0][4] == 'karras'
  assert frontier.frontier(curves, 'gls') == [(3, 25.0, 'ddim'), (5, 22.0, 'ddim')]
  assert frontier.frontier(curves, 'normal') == [(3, 80.0, 'ddim')]
  assert frontier.references(cells) == [('DDIM, 100 steps', 20.0)]
  [(_, paper)] = frontier.load_panels([f'paper grid={path}#late_start'], [])  # one grid of the file
  assert {c['grid'] for c in paper} == {'late_start'} and len(paper) == len(cells) - 1


def test_the_command_writes_the_figure_and_table(tmp_path):
  path = _write(tmp_path / 'a.csv', [['unipc', 3, 'normal', 999, '', 'late_start', 3, 50.0, 'bf16'],
                                     ['unipc', 3, 'gls', 200, '', 'late_start', 3, 20.0, 'bf16']])
  out, md = tmp_path / 'f.png', tmp_path / 'f.md'
  frontier.main(['--panel', f'X={path}', '--out', str(out), '--md', str(md)])
  assert out.stat().st_size > 1000
  text = md.read_text()
  assert '| X | gls | 3 | 20.00 | UniPC |' in text and 'U-Net precision: X: bf16' in text


def test_the_committed_table_is_what_the_script_makes_of_the_committed_csv_files(tmp_path):
  cwd = os.getcwd()
  try:
    os.chdir(ROOT)
    frontier.main(['--out', str(tmp_path / 'h.png'), '--md', str(tmp_path / 'h.md')])
  finally:
    os.chdir(cwd)
  assert (tmp_path / 'h.md').read_text() == open(os.path.join(ROOT, 'assets', 'headline.md')).read()
