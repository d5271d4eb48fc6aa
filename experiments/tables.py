"""Table-1 outputs of the eval sweep: results.md / results.csv (the paper's layout: best t_c per column),
results_all.csv (every cell), FID-vs-t_c plots and vanilla-vs-gls sample grids."""
import os

import numpy as np
import torch

import io_util
import samplers
from samplers import SAMPLERS
ALL_KEYS = ['method', 'num_steps', 'init', 't_start', 'tc_rule', 'grid', 'nfe', 'num_samples', 'checkpoint_step',
            'precision', 'fid', 'kid', 'kid_std', 'seconds', 'in_plan', 'weights_sha256']


def precision(record):
  """The U-Net precision a cell was sampled in ('fp32' or 'bf16'; 'unrecorded' for a cell of an older version that
  the current plan did not reuse: eval_lib.evaluate fills it in for the cells it reuses)."""
  return record.get('precision', 'unrecorded')


def precisions(cells):
  """'fp32', 'bf16' or 'mixed (...)' for a table's note."""
  found = sorted({precision(r) for r in cells})
  return found[0] if len(found) == 1 else f'mixed ({", ".join(found)})'


def best_cells(cells):
  """{(method, n, init): record}: vanilla as is, gls the t_c with the lowest FID."""
  best = {}
  for r in cells:
    if is_auto(r):  # the rule's cell is compared with the sweep (write_auto_table), not part of its best
      continue
    k = (r['method'], r['num_steps'], r['init'])
    if k not in best or r['fid'] < best[k]['fid']:
      best[k] = r
  return best


def is_auto(record):
  return record.get('tc_rule') == 'auto'


def is_sweep_gls(record):
  """A gls cell of the t_c grid (not the auto rule's)."""
  return record['init'] == 'gls' and not is_auto(record)


def kid_gap(a, b):
  """(KID a - KID b) over the root sum of squares of their standard errors; nan when both are 0."""
  se = (a['kid_std'] ** 2 + b['kid_std'] ** 2) ** 0.5
  return (a['kid'] - b['kid']) / se if se > 0 else float('nan')


def columns(cells):
  """[(method, init)] of the table, gls before vanilla, for the methods in ``cells`` in samplers.SAMPLERS order
  (the paper's Table 1 has DDPM, DDIM, PNDM; the modern solvers follow)."""
  present = {r['method'] for r in cells}
  return [(m, init) for m in SAMPLERS if m in present for init in ('gls', 'normal')]


def row_name(method, init):
  return ('gls-' if init == 'gls' else '') + samplers.display_name(method)


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
                         r['grid'], r.get('checkpoint_step', ''), precision(r)])
    md_rows.append(row)
  counts = sorted({r['num_samples'] for r in cells})
  steps = sorted({r.get('checkpoint_step', -1) for r in cells})
  t_cs = sorted({r['t_start'] for r in cells if is_sweep_gls(r)})
  grid_list = list(dict.fromkeys(r['grid'] for r in cells))
  grid_names = ', '.join(f'"{g}"' for g in grid_list) + (' (the best of them per cell)' if len(grid_list) > 1 else '')
  note = (f'\nFID against the training-split statistics, {counts} samples per cell, checkpoint step {steps}; grid '
          f'{grid_names} (samplers/grids.py); vanilla = N(0, I) at t_c=T-1; gls = Gaussian late start, best '
          f't_c of {t_cs}. NFE = network calls. U-Net precision: {precisions(cells)}. KID (with its standard error '
          'over subsets): results_all.csv.\n')
  if floor is not None:
    note += (f'Floor: real held-out images (the eval split, {floor["num_samples"]} images) score FID '
             f'{floor["fid"]:.2f}, KID {floor["kid"]:.4f} +- {floor["kid_std"]:.4f} against the same statistics.\n')
    csv_rows.append([name, '', 'real held-out (floor)', f"{floor['fid']:.4f}", f"{floor['kid']:.5f}",
                     f"{floor['kid_std']:.5f}", '', 0, floor['num_samples'], '', '', ''])
  table = io_util.markdown_table(header, md_rows) + note
  io_util.write_text(os.path.join(outdir, 'results.md'), table)
  io_util.write_csv(os.path.join(outdir, 'results.csv'), ['dataset', 'n', 'column', 'fid', 'kid', 'kid_std', 't_c',
                                                          'nfe', 'num_samples', 'grid', 'checkpoint_step',
                                                          'precision'], csv_rows)
  return table


def write_all_cells(cells, plan_keys, outdir):
  """results_all.csv: every finished cell of the model (``cells``, the current plan's and earlier plans'), in_plan
  saying which are in the current plan (``plan_keys``), so no finished cell disappears when a grid changes."""
  order = {k: i for i, k in enumerate(plan_keys)}
  cells = sorted(cells, key=lambda r: (r['key'] not in order, order.get(r['key'], 0), r['key']))
  derived = {'precision': precision, 'in_plan': lambda r: r['key'] in order,
             'weights_sha256': lambda r: r.get('signature', {}).get('weights_sha256', '')}
  rows = [[derived[k](r) if k in derived else r.get(k, '') for k in ALL_KEYS] for r in cells]
  io_util.write_csv(os.path.join(outdir, 'results_all.csv'), ALL_KEYS, rows)


def plot_fid_vs_tc(config, cells, outdir):
  """fid_vs_tc_{method}.png: FID against t_c, one line per n, the vanilla level dashed."""
  plt = io_util.pyplot()
  for method in sorted({r['method'] for r in cells}):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    grid_list = list(dict.fromkeys(r['grid'] for r in cells))
    for i, n in enumerate(sorted({r['num_steps'] for r in cells if r['method'] == method})):
      mine = [r for r in cells if r['method'] == method and r['num_steps'] == n]
      for j, grid in enumerate(grid_list):  # one line per grid; the grid is named when there are several
        gls = sorted((r['t_start'], r['fid']) for r in mine if is_sweep_gls(r) and r['grid'] == grid)
        if gls:
          ax.plot(*zip(*gls), 'os^vD'[j % 5] + '-', color=f'C{i}',
                  label=f'gls, n={n}' + (f', {grid}' if len(grid_list) > 1 else ''))
      for r in filter(is_auto, mine):
        ax.plot(r['t_start'], r['fid'], '*', ms=12, mfc='none', color=f'C{i}', label=f'auto t_c, n={n}')
      for r in mine:
        if r['init'] == 'normal':
          ax.axhline(r['fid'], color=f'C{i}', ls='--', lw=1,
                     label=f'vanilla, n={n}' + (f", {r['grid']}" if len(grid_list) > 1 else ''))
    ax.set(xlabel='t_c (late-start time)', ylabel='FID', yscale='log',
           title=f'{config.data.dataset}: {samplers.display_name(method)}')
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
    fig.suptitle(f'{samplers.display_name(method)}, n={n}', fontsize=10)
    io_util.save_figure(fig, os.path.join(outdir, f'grid_{method}_n{n}.png'))


AUTO_KEYS = ['method', 'n', 'auto_t_c', 'auto_fid', 'auto_kid', 'auto_kid_std', 'best_t_c', 'best_fid', 'best_kid',
             'best_kid_std', 'kid_gap_se', 'worst_t_c', 'worst_fid', 'worst_kid', 'vanilla_fid', 'vanilla_kid',
             'auto_seconds', 'sweep_seconds', 'cost_ratio', 'choice_network_calls', 'precision']


def auto_rows(cells):
  """One row per (method, n) with an auto cell: the auto t_c against the sweep's best and worst t_c (by KID), the
  KID gap in combined standard errors, and the cost of auto (its cell, choice included) against the sweep's cells."""
  rows = []
  for a in filter(is_auto, cells):
    mine = [r for r in cells if (r['method'], r['num_steps']) == (a['method'], a['num_steps']) and not is_auto(r)]
    sweep = [r for r in mine if r['init'] == 'gls']
    if not sweep:
      continue
    best, worst = min(sweep, key=lambda r: r['kid']), max(sweep, key=lambda r: r['kid'])
    vanilla = next((r for r in mine if r['init'] == 'normal'), {})
    auto_s = a['seconds']  # sampling and scoring the cell, and the choice (the network part in the first cell only)
    sweep_s = sum(r['seconds'] for r in sweep)
    rows.append(dict(method=a['method'], n=a['num_steps'], auto_t_c=a['t_start'], auto_fid=a['fid'],
                     auto_kid=a['kid'], auto_kid_std=a['kid_std'], best_t_c=best['t_start'], best_fid=best['fid'],
                     best_kid=best['kid'], best_kid_std=best['kid_std'],
                     kid_gap_se=kid_gap(a, best),
                     worst_t_c=worst['t_start'], worst_fid=worst['fid'], worst_kid=worst['kid'],
                     vanilla_fid=vanilla.get('fid', float('nan')), vanilla_kid=vanilla.get('kid', float('nan')),
                     auto_seconds=auto_s, sweep_seconds=sweep_s, cost_ratio=auto_s / sweep_s if sweep_s else float('nan'),
                     choice_network_calls=a['auto_tc']['network_calls'], precision=precision(a)))
  return rows


def write_auto_table(config, cells, outdir):
  """results_auto.md / results_auto.csv: the auto t_c against the sweep (docs/late_start.md, "Choosing t_c
  without a sweep"); returns the markdown, or '' when the sweep has no auto cell."""
  rows = auto_rows(cells)
  if not rows:
    return ''
  header = ['sampler', 'n', 'auto t_c: FID / KID', 'sweep best t_c: FID / KID', 'gap (SE)', 'sweep worst t_c: FID',
            'vanilla FID', 'cost auto / sweep']
  md = [[samplers.display_name(r['method']), str(r['n']),
         f"{r['auto_t_c']}: {r['auto_fid']:.2f} / {r['auto_kid']:.4f} +- {r['auto_kid_std']:.4f}",
         f"{r['best_t_c']}: {r['best_fid']:.2f} / {r['best_kid']:.4f} +- {r['best_kid_std']:.4f}",
         f"{r['kid_gap_se']:.1f}", f"{r['worst_t_c']}: {r['worst_fid']:.2f}", f"{r['vanilla_fid']:.2f}",
         f"{r['auto_seconds']:.0f} s / {r['sweep_seconds']:.0f} s = {r['cost_ratio']:.2f}"] for r in rows]
  within = sum(r['kid_gap_se'] <= 2 for r in rows)
  cheap = sum(r['cost_ratio'] <= 1 / 3 for r in rows)
  t_cs = sorted({r['t_start'] for r in cells if is_sweep_gls(r)})
  calls = sum(r['choice_network_calls'] for r in rows)
  note = (f'\n{config.data.dataset}: auto t_c (samplers/auto_tc.py) against the sweep over t_c in {t_cs}; best and '
          'worst by KID. gap = (KID auto - KID best) / combined standard error. Cost: the auto cell (choice + '
          'sampling + scoring) against the sweep\'s gls cells; the choices made '
          f'{calls} network calls in all (the first auto cell makes them, the others reuse them). '
          f'Within 2 SE of the best in {within} of {len(rows)} cells; at most a third of the cost in {cheap} of '
          f'{len(rows)}. U-Net precision: {precisions(cells)}.\n')
  table = io_util.markdown_table(header, md) + note
  io_util.write_text(os.path.join(outdir, 'results_auto.md'), table)
  io_util.write_csv(os.path.join(outdir, 'results_auto.csv'), AUTO_KEYS, [[r[k] for k in AUTO_KEYS] for r in rows])
  return table


def write_gain_table(config, cells, outdir):
  """results_gain.md: per (sampler, n), vanilla against the sweep's best gls cell (by FID, as Table 1): FID and
  KID of both, the KID gap in combined standard errors (positive = gls better) and the FID change; returns it."""
  best = best_cells(cells)
  rows = []
  for method, init in columns(cells):
    if init != 'gls':
      continue
    for n in sorted({r['num_steps'] for r in cells}):
      g, v = best.get((method, n, 'gls')), best.get((method, n, 'normal'))
      if g is None or v is None:
        continue
      rows.append([samplers.display_name(method), str(n), f"{v['fid']:.2f}", f"{v['kid']:.4f} +- {v['kid_std']:.4f}",
                   f"{g['fid']:.2f} (t_c={g['t_start']})", f"{g['kid']:.4f} +- {g['kid_std']:.4f}",
                   f"{kid_gap(v, g):.1f}", f"{100 * (g['fid'] / v['fid'] - 1):+.0f}%"])
  if not rows:
    return ''
  header = ['sampler', 'n', 'vanilla FID', 'vanilla KID', 'best gls FID', 'gls KID', 'KID gap (SE)', 'FID change']
  table = io_util.markdown_table(header, rows) + (
      f'\n{config.data.dataset}: KID gap = (vanilla KID - gls KID) / root sum of squares of their standard errors; '
      f'positive = the late start scores better. U-Net precision: {precisions(cells)}.\n')
  io_util.write_text(os.path.join(outdir, 'results_gain.md'), table)
  return table
