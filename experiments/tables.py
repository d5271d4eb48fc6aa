"""Table-1 outputs of the eval sweep: results.md / results.csv (the paper's layout: best t_c per column),
results_all.csv (every cell), FID-vs-t_c plots and vanilla-vs-gls sample grids."""
import os

import numpy as np
import torch

import io_util
from samplers import SAMPLERS

COLUMN_NAMES = {'ddpm': 'DDPM', 'ddim': 'DDIM', 'pndm': 'PNDM', 'dpmpp_2m': 'DPM-Solver++', 'unipc': 'UniPC'}
ALL_KEYS = ['method', 'num_steps', 'init', 't_start', 'grid', 'nfe', 'num_samples', 'checkpoint_step', 'fid',
            'kid', 'kid_std', 'seconds']


def best_cells(cells):
  """{(method, n, init): record}: vanilla as is, gls the t_c with the lowest FID."""
  best = {}
  for r in cells:
    k = (r['method'], r['num_steps'], r['init'])
    if k not in best or r['fid'] < best[k]['fid']:
      best[k] = r
  return best


def columns(cells):
  """[(method, init)] of the table, gls before vanilla, for the methods in ``cells`` in samplers.SAMPLERS order
  (the paper's Table 1 has DDPM, DDIM, PNDM; the modern solvers follow)."""
  present = {r['method'] for r in cells}
  return [(m, init) for m in SAMPLERS if m in present for init in ('gls', 'normal')]


def row_name(method, init):
  return ('gls-' if init == 'gls' else '') + COLUMN_NAMES[method]


def write_tables(config, cells, outdir, floor=None):
  """results.md / results.csv in the shape of the paper's Table 1, and results_all.csv; returns the markdown.

  floor: the record of real held-out images scored as a cell (eval_lib.floor_record), shown under the table: what
  real data scores against the same statistics at (about) the same count."""
  best, name = best_cells(cells), config.data.dataset
  cols = columns(cells)
  header = ['Dataset', 'n'] + [row_name(m, init) for m, init in cols]
  md_rows, csv_rows = [], []
  for n in sorted({r['num_steps'] for r in cells}, reverse=True):
    row = [name, str(n)]
    for method, init in cols:
      r = best.get((method, n, init))
      row.append('-' if r is None else f"{r['fid']:.2f} (t_c={r['t_start']}, NFE={r['nfe']})")
      if r is not None:
        csv_rows.append([name, n, row_name(method, init), f"{r['fid']:.4f}", f"{r['kid']:.5f}",
                         f"{r.get('kid_std', float('nan')):.5f}", r['t_start'], r['nfe'], r['num_samples'],
                         r['grid'], r.get('checkpoint_step', '')])
    md_rows.append(row)
  counts = sorted({r['num_samples'] for r in cells})
  steps = sorted({r.get('checkpoint_step', -1) for r in cells})
  t_cs = sorted({r['t_start'] for r in cells if r['init'] == 'gls'})
  note = (f'\nFID against the training-split statistics, {counts} samples per cell, checkpoint step {steps}; grid '
          f'"{cells[0]["grid"]}" (samplers/grids.py); vanilla = N(0, I) at t_c=T-1; gls = Gaussian late start, best '
          f't_c of {t_cs}. NFE = network calls. KID (with its standard error over subsets): results_all.csv.\n')
  if floor is not None:
    note += (f'Floor: real held-out images (the eval split, {floor["num_samples"]} images) score FID '
             f'{floor["fid"]:.2f}, KID {floor["kid"]:.4f} +- {floor["kid_std"]:.4f} against the same statistics.\n')
    csv_rows.append([name, '', 'real held-out (floor)', f"{floor['fid']:.4f}", f"{floor['kid']:.5f}",
                     f"{floor['kid_std']:.5f}", '', 0, floor['num_samples'], '', ''])
  table = io_util.markdown_table(header, md_rows) + note
  io_util.write_text(os.path.join(outdir, 'results.md'), table)
  io_util.write_csv(os.path.join(outdir, 'results.csv'), ['dataset', 'n', 'column', 'fid', 'kid', 'kid_std', 't_c',
                                                          'nfe', 'num_samples', 'grid', 'checkpoint_step'], csv_rows)
  io_util.write_csv(os.path.join(outdir, 'results_all.csv'), ALL_KEYS,
                    [[r.get(k, '') for k in ALL_KEYS] for r in cells])
  return table


def plot_fid_vs_tc(config, cells, outdir):
  """fid_vs_tc_{method}.png: FID against t_c, one line per n, the vanilla level dashed."""
  plt = io_util.pyplot()
  for method in sorted({r['method'] for r in cells}):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, n in enumerate(sorted({r['num_steps'] for r in cells if r['method'] == method})):
      mine = [r for r in cells if r['method'] == method and r['num_steps'] == n]
      gls = sorted((r['t_start'], r['fid']) for r in mine if r['init'] == 'gls')
      if gls:
        ax.plot(*zip(*gls), 'o-', color=f'C{i}', label=f'gls, n={n}')
      for r in mine:
        if r['init'] == 'normal':
          ax.axhline(r['fid'], color=f'C{i}', ls='--', lw=1, label=f'vanilla, n={n}')
    ax.set(xlabel='t_c (late-start time)', ylabel='FID', yscale='log',
           title=f'{config.data.dataset}: {COLUMN_NAMES[method]}')
    ax.legend(fontsize=7)
    io_util.save_figure(fig, os.path.join(outdir, f'fid_vs_tc_{method}.png'))


def save_comparison_grids(cells, outdir, count=64):
  """grid_{method}_n{n}.png: vanilla (left) against the best gls cell (right), same seeds."""
  import torchvision
  plt = io_util.pyplot()
  best = best_cells(cells)
  for (method, n, init), r in best.items():
    if init != 'gls' or (method, n, 'normal') not in best:
      continue
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, rec, title in ((axes[0], best[(method, n, 'normal')], 'vanilla'), (axes[1], r, f"gls t_c={r['t_start']}")):
      x = torch.from_numpy(np.load(os.path.join(outdir, rec['samples']))['samples'][:count])
      grid = torchvision.utils.make_grid(x, nrow=8, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
      ax.imshow(grid.squeeze(), cmap='gray' if grid.shape[-1] == 1 else None, interpolation='nearest')
      ax.set_title(f"{title}: FID {rec['fid']:.1f}", fontsize=9)
      ax.axis('off')
    fig.suptitle(f'{COLUMN_NAMES[method]}, n={n}', fontsize=10)
    io_util.save_figure(fig, os.path.join(outdir, f'grid_{method}_n{n}.png'))
