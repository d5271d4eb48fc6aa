"""The headline figure: best FID against network calls (NFE) per sampler, vanilla and with the Gaussian late start,
one panel per data set, read from committed results csv files (no numbers typed by hand).

  python -m experiments.frontier [--out assets/headline.png] [--panel 'DIGITS=assets/digits/results_mainjob_all.csv']
      [--reference 'MNIST5K=assets/mnist5k/study/study.csv@30000'] [--md assets/headline.md]

A panel's csv may end in '#GRID' to keep only that grid's cells (e.g. the schedules study's paper-grid cells,
'DIGITS, paper grid=assets/digits/schedules/results_all.csv#late_start').

Each panel reads one or more eval results_all.csv files (eval_lib: method, num_steps, init, t_start, nfe, fid, ...):
per (sampler, n, start) the best FID over t_c (the paper's Table-1 rule), drawn against its NFE; dashed = vanilla
(N(0, I) at T-1), solid = gls (best t_c). The thick grey lines are the frontier: the best vanilla and the best gls
cell at each NFE over every sampler (and grid). Cells of 50 or more steps are drawn as a horizontal reference line
(the many-step sampler the few-step cells try to match); a --reference study.csv (benchmarks/mnist_recipe_study.py)
adds its vanilla rows of 50+ steps at the given training step.
"""
import argparse
import csv
import os

import io_util
import samplers

REFERENCE_MIN_STEPS = 50
DEFAULT_PANELS = ('DIGITS=assets/digits/results_mainjob_all.csv',
                  'MNIST5K=assets/mnist5k/step30000/results_all.csv')
DEFAULT_REFERENCES = ('MNIST5K=assets/mnist5k/study/study.csv@30000',)


def _name(method):
  """The sampler's table name (samplers.SAMPLERS); a method no longer registered keeps its key."""
  return samplers.SAMPLERS[method].display if method in samplers.SAMPLERS else method


def read_cells(path):
  """Rows of an eval results_all.csv as dicts with method, n, init, t_start, grid, nfe, fid (numbers parsed)."""
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  return [dict(method=r['method'], n=int(r['num_steps']), init=r['init'], t_start=r['t_start'],
               grid=r.get('grid', 'late_start'), nfe=int(r['nfe']), fid=float(r['fid']),
               auto=r.get('tc_rule') == 'auto', precision=r.get('precision', 'unrecorded')) for r in rows]


def _cells_of(spec):
  """read_cells of 'path' or 'path#grid' (that grid's cells only)."""
  path, _, grid = spec.partition('#')
  return [c for c in read_cells(path) if not grid or c['grid'] == grid]


def read_study_reference(path, step):
  """The vanilla many-step rows (n >= REFERENCE_MIN_STEPS) of a recipe study.csv at training ``step``."""
  with open(path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if int(r['step']) == int(step) and int(r['n']) >= REFERENCE_MIN_STEPS]
  return [dict(method=r['sampler'], n=int(r['n']), init='normal', t_start='', grid='late_start', nfe=int(r['nfe']),
               fid=float(r['fid']), auto=False, precision=r['precision']) for r in rows]


def best_points(cells):
  """{(method, init): [(nfe, fid, n, t_start, grid)]} sorted by NFE: per (method, n, init) the lowest FID over t_c
  and grids (the auto rule's cells are not part of the sweep's best)."""
  best = {}
  for c in cells:
    if c['auto'] or c['n'] >= REFERENCE_MIN_STEPS:
      continue
    key = (c['method'], c['n'], c['init'])
    if key not in best or c['fid'] < best[key]['fid']:
      best[key] = c
  curves = {}
  for (method, _, init), c in best.items():
    curves.setdefault((method, init), []).append((c['nfe'], c['fid'], c['n'], c['t_start'], c['grid']))
  return {k: sorted(v) for k, v in curves.items()}


def frontier(curves, init):
  """[(nfe, fid, method)]: the lowest FID at each NFE over every sampler with start ``init``, kept only where it
  beats every cell of fewer NFE (a Pareto front)."""
  at = {}
  for (method, i), points in curves.items():
    for nfe, fid, *_ in points:
      if i == init and (nfe not in at or fid < at[nfe][0]):
        at[nfe] = (fid, method)
  front, best = [], float('inf')
  for nfe in sorted(at):
    if at[nfe][0] < best:
      best = at[nfe][0]
      front.append((nfe, *at[nfe]))
  return front


def references(cells):
  """[(label, fid)] of the cells with REFERENCE_MIN_STEPS or more steps (vanilla)."""
  return [(f"{_name(c['method'])}, {c['n']} steps", c['fid']) for c in cells
          if c['n'] >= REFERENCE_MIN_STEPS and c['init'] == 'normal']


def plot(panels, out):
  """One panel per (title, cells): per-sampler curves, the two frontiers and the reference lines."""
  plt = io_util.pyplot()
  from matplotlib import ticker
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
  for ax, (title, cells) in zip(axes[0], panels):
    curves = best_points(cells)
    for i, method in enumerate(samplers.SAMPLERS):  # one colour per sampler in every panel
      for init, style in (('normal', '--o'), ('gls', '-s')):
        pts = curves.get((method, init))
        if pts:
          label = f"{'gls-' if init == 'gls' else ''}{_name(method)}"
          ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=f'C{i}', ms=4, lw=1, label=label)
    for init, name in (('normal', 'best vanilla'), ('gls', 'best gls')):
      front = frontier(curves, init)
      ax.plot([p[0] for p in front], [p[1] for p in front], color='0.5', alpha=0.45, lw=5,
              ls='--' if init == 'normal' else '-', label=name, zorder=0)
    for j, (label, fid) in enumerate(references(cells)):
      ax.axhline(fid, color='k', ls=(0, (1, 1 + 2 * j)), lw=1, label=f'{label}: {fid:.2f}')
    precision = ', '.join(sorted({c['precision'] for c in cells}))
    ax.set(xscale='log', yscale='log', xlabel='network calls (NFE)', ylabel='FID (best t_c; log scale)',
           title=f'{title} (U-Net {precision})')
    nfes = sorted({p[0] for pts in curves.values() for p in pts})
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter('%g'))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.legend(fontsize=6, ncol=2, loc='best', framealpha=0.7)
  io_util.save_figure(fig, out)
  return out


def markdown(panels):
  """The figure's numbers as a markdown table: per panel and start, the frontier points."""
  rows = []
  for title, cells in panels:
    curves = best_points(cells)
    for init in ('normal', 'gls'):
      for nfe, fid, method in frontier(curves, init):
        rows.append([title, 'vanilla' if init == 'normal' else 'gls', nfe, f'{fid:.2f}', _name(method)])
    for label, fid in references(cells):
      rows.append([title, 'reference', label, f'{fid:.2f}', ''])
  precisions = '; '.join(f"{t}: {', '.join(sorted({c['precision'] for c in cells}))}" for t, cells in panels)
  return (io_util.markdown_table(['data', 'start', 'NFE', 'best FID', 'sampler'], rows)
          + f'\nBest FID over t_c (and grids) per sampler and n; the frontier keeps a point only where it beats every '
          f'cell of fewer NFE. U-Net precision: {precisions}.\n')


def load_panels(panel_args, reference_args):
  """[(title, cells)] from 'TITLE=a.csv,b.csv' panels and 'TITLE=study.csv@STEP' references."""
  panels = {}
  for arg in panel_args:
    title, paths = arg.split('=', 1)
    panels[title] = [c for p in paths.split(',') for c in _cells_of(p)]
  for arg in reference_args:
    title, spec = arg.split('=', 1)
    path, step = spec.rsplit('@', 1)
    if title in panels:
      panels[title] += read_study_reference(path, step)
  return list(panels.items())


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--panel', action='append', help=f'TITLE=csv[,csv] (default: {DEFAULT_PANELS})')
  parser.add_argument('--reference', action='append', help=f'TITLE=study.csv@STEP (default: {DEFAULT_REFERENCES})')
  parser.add_argument('--no_references', action='store_true', help='no study.csv references (only the csv files)')
  parser.add_argument('--out', default='assets/headline.png')
  parser.add_argument('--md', default='assets/headline.md', help='the frontier points as a markdown table')
  args = parser.parse_args(argv)
  for path in [p.partition('#')[0] for a in (args.panel or DEFAULT_PANELS) for p in a.split('=', 1)[1].split(',')]:
    if not os.path.isfile(path):
      parser.error(f'{path} not found: run from the repository root or pass --panel')
  references = [] if args.no_references else args.reference or DEFAULT_REFERENCES
  panels = load_panels(args.panel or DEFAULT_PANELS, references)
  plot(panels, args.out)
  table = markdown(panels)
  io_util.write_text(args.md, table)
  print(table)
  print(f'wrote {args.out} and {args.md}')


if __name__ == '__main__':
  main()
