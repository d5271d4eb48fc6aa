"""FID reference statistics and the Table-1 sweep (--mode=fid_stats, --mode=eval).

The sweep's cells are (method, n, start) with start = vanilla (N(0, I) at T-1) or gls at each t_c of
config.eval.t_starts (only where n <= t_c + 1). Every cell uses the same per-sample seeds, so vanilla and
gls start from the same standard-normal draw z (gls maps z through its covariance factor).
Outputs in <workdir>/eval/: results.json (every cell; the resume record), results.md / results.csv
(Table-1 shape, best t_c per cell), results_all.csv, fid_vs_tc_{method}.png, grid_{method}_n{n}.png,
samples/{cell}.npz.
"""
import csv
import json
import logging
import os
import time

import numpy as np
import torch

import datasets
import dist_util
import evaluation
import run_lib
import sde_lib
from configs.validation import validate_config
from moments import RunningMoments

COLUMNS = [('ddpm', 'gls'), ('ddpm', 'normal'), ('ddim', 'gls'), ('ddim', 'normal'), ('pndm', 'gls'),
           ('pndm', 'normal')]
COLUMN_NAMES = {'ddpm': 'DDPM', 'ddim': 'DDIM', 'pndm': 'PNDM'}


def fid_stats_path(config):
  return evaluation.stats_path(config.sampling.stats_dir, config.data.dataset, config.data.image_size)


def fid_stats(config, workdir=None):
  """--mode=fid_stats: Inception statistics of the whole training split (one pass, no flips), plus the
  late-start pixel moments from the same pass when they are not there yet."""
  from samplers import initialisers
  validate_config(config)
  device, d = run_lib.get_device(config), config.data
  inception = evaluation.load_inception(config.eval.inception_path, device)
  moments_path = config.sampling.moments_file or initialisers.moments_path(config.sampling.stats_dir, d.dataset,
                                                                           d.image_size)
  pixels = None if os.path.exists(moments_path) else RunningMoments(d.num_channels * d.image_size ** 2)
  inverse = datasets.get_data_inverse_scaler(config)

  def images():
    for x in run_lib.data_batches(config, batch_size=config.eval.batch_size, desc='fid_stats'):
      if pixels is not None:
        pixels.update(x.reshape(len(x), -1))
      yield inverse(x)

  mu, sigma, n, feats = evaluation.feature_moments(images(), inception, device=device, progress=False)
  path = fid_stats_path(config)
  evaluation.save_stats(path, mu, sigma, n, d.dataset, d.image_size, evaluation.NETWORK, feats=feats)
  logging.info('wrote FID statistics of %d training images to %s', n, path)
  if pixels is not None:
    initialisers.save_moments(moments_path, {'mean': pixels.mean(), 'cov': pixels.cov(), 'count': pixels.n},
                              d.dataset, d.image_size, d.num_channels)
    logging.info('wrote late-start moments to %s', moments_path)
  return path


def sweep_cells(config):
  """The cells of the sweep: dicts with method, num_steps, init, t_start and a unique key."""
  T, e = config.model.num_scales, config.eval
  cells = []
  for method in e.methods:
    for n in e.num_steps:
      starts = [('normal', T - 1)] + [('gls', t) for t in e.t_starts if n <= t + 1]
      for init, t_start in starts:
        cells.append(dict(method=method, num_steps=n, init=init, t_start=t_start, grid=e.grid,
                          key=f'{method}_n{n}_{init}_tc{t_start}_{e.grid}'))
  return cells


def _load_results(path):
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def _save_json(obj, path):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def run_cell(config, cell, ctx):
  """Samples one cell, saves its samples and returns its FID/KID record against the reference stats."""
  from samplers import nfe
  t0 = time.time()
  schedule, e = ctx['schedule'], config.eval
  timesteps = run_lib.sample_timesteps(config, cell['method'], cell['num_steps'], cell['t_start'], cell['grid'])
  init = run_lib.build_initialiser(config, schedule, cell['t_start'], cell['init'], ctx['moments'],
                                   cache=ctx['initialisers'])  # one eigendecomposition serves every t_c
  options = run_lib.sampler_options(cell['method'], config.sampling)
  images = run_lib.generate(ctx['eps_fn'], schedule, cell['method'], timesteps, init, e.num_samples, e.batch_size,
                            config.seed, ctx['device'], ctx['inverse'], options, desc=cell['key'])
  if not dist_util.is_main():  # under torchrun the ranks share the sampling; rank 0 scores and writes
    return None
  path = os.path.join(ctx['outdir'], 'samples', cell['key'] + '.npz')
  run_lib.save_npz_atomic(path, samples=images, timesteps=np.asarray(timesteps))
  batches = (torch.from_numpy(images[i:i + e.batch_size]) for i in range(0, len(images), e.batch_size))
  mu, sigma, n, feats = evaluation.feature_moments(batches, ctx['inception'], device=ctx['device'], progress=False)
  ref = ctx['ref']
  fid = evaluation.fid_to_reference(mu, sigma, ref)  # reference sqrt computed once per sweep
  kid_mean, kid_std = evaluation.kid(feats, ref['feats'], subset_size=min(e.kid_subset_size, len(feats),
                                                                         len(ref['feats'])))
  return dict(cell, nfe=nfe(cell['method'], len(timesteps), **options), timesteps=[int(t) for t in timesteps],
              num_samples=int(n), fid=float(fid), kid=float(kid_mean), kid_std=float(kid_std),
              samples=os.path.relpath(path, ctx['outdir']), seconds=round(time.time() - t0, 1))


def _context(config, workdir):
  """Everything the cells share: model, reference stats, Inception, late-start moments."""
  device = run_lib.get_device(config)
  d = config.data
  ref = evaluation.load_stats(fid_stats_path(config), d.dataset, d.image_size)  # missing/mismatch: clear error
  needs_gls = any(c['init'] == 'gls' for c in sweep_cells(config))
  moments = run_lib.late_start_moments(config) if needs_gls and config.sampling.gls_fit == 'exact' else None
  eps_fn, step = run_lib.load_ema_model(config, workdir, device)
  return dict(device=device, ref=ref, moments=moments, eps_fn=eps_fn, step=step, initialisers={},
              schedule=sde_lib.DDPMSchedule.from_config(config), inverse=datasets.get_data_inverse_scaler(config),
              inception=evaluation.load_inception(config.eval.inception_path, device) if dist_util.is_main() else None,
              outdir=os.path.join(workdir, 'eval'))


def evaluate(config, workdir):
  """--mode=eval: runs every cell not yet in eval/results.json, then writes the tables, plots and grids."""
  validate_config(config)
  dist_util.init()
  for cell in sweep_cells(config):  # bad grids fail before any sampling
    run_lib.sample_timesteps(config, cell['method'], cell['num_steps'], cell['t_start'], cell['grid'])
  ctx = _context(config, workdir)
  os.makedirs(ctx['outdir'], exist_ok=True)
  results_path = os.path.join(ctx['outdir'], 'results.json')
  results = _load_results(results_path)
  todo = [c for c in sweep_cells(config) if c['key'] not in results]
  logging.info('eval: %d cells, %d already done (resuming), %d samples each', len(results) + len(todo),
               len(results), config.eval.num_samples)
  for i, cell in enumerate(todo):
    record = run_cell(config, cell, ctx)
    if not dist_util.is_main():
      continue
    results[cell['key']] = record
    _save_json(results, results_path)  # after every cell, so a killed sweep resumes here
    r = results[cell['key']]
    logging.info('[%d/%d] %s: FID %.2f KID %.4f (%.0fs)', i + 1, len(todo), cell['key'], r['fid'], r['kid'],
                 r['seconds'])
  if not dist_util.is_main():
    return None
  cells = [results[c['key']] for c in sweep_cells(config)]
  table = write_tables(config, cells, ctx['outdir'])
  plot_fid_vs_tc(config, cells, ctx['outdir'])
  save_comparison_grids(config, cells, ctx['outdir'])
  print(table)
  return results


def best_cells(cells):
  """{(method, n, init): record}: vanilla as is, gls the t_c with the lowest FID."""
  best = {}
  for r in cells:
    k = (r['method'], r['num_steps'], r['init'])
    if k not in best or r['fid'] < best[k]['fid']:
      best[k] = r
  return best


def write_tables(config, cells, outdir):
  """results.md / results.csv in the shape of the paper's Table 1, and results_all.csv; returns the markdown."""
  best, name = best_cells(cells), config.data.dataset
  header = ['Dataset', 'n'] + [('gls-' if init == 'gls' else '') + COLUMN_NAMES[m] for m, init in COLUMNS]
  md_rows, csv_rows = [], []
  for n in sorted({r['num_steps'] for r in cells}, reverse=True):
    row = [name, str(n)]
    for method, init in COLUMNS:
      r = best.get((method, n, init))
      row.append('-' if r is None else f"{r['fid']:.2f} (t_c={r['t_start']}, NFE={r['nfe']})")
      if r is not None:
        csv_rows.append([name, n, row_name(method, init), f"{r['fid']:.4f}", f"{r['kid']:.5f}", r['t_start'],
                         r['nfe'], r['num_samples'], r['grid']])
    md_rows.append(row)
  counts = sorted({r['num_samples'] for r in cells})
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)] + ['| ' + ' | '.join(r) + ' |'
                                                                             for r in md_rows]
  t_cs = sorted({r['t_start'] for r in cells if r['init'] == 'gls'})
  note = (f'\nFID against the training-split statistics, {counts} samples per cell; grid "{cells[0]["grid"]}" '
          f'(samplers/grids.py); vanilla = N(0, I) at t_c=T-1; gls = Gaussian late start, best t_c of {t_cs}. '
          'NFE = network calls.\n')
  table = '\n'.join(lines) + '\n' + note
  with open(os.path.join(outdir, 'results.md'), 'w') as f:
    f.write(table)
  _write_csv(os.path.join(outdir, 'results.csv'), ['dataset', 'n', 'column', 'fid', 'kid', 't_c', 'nfe',
                                                    'num_samples', 'grid'], csv_rows)
  keys = ['method', 'num_steps', 'init', 't_start', 'grid', 'nfe', 'num_samples', 'fid', 'kid', 'kid_std', 'seconds']
  _write_csv(os.path.join(outdir, 'results_all.csv'), keys, [[r[k] for k in keys] for r in cells])
  return table


def row_name(method, init):
  return ('gls-' if init == 'gls' else '') + COLUMN_NAMES[method]


def _write_csv(path, header, rows):
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def plot_fid_vs_tc(config, cells, outdir):
  """fid_vs_tc_{method}.png: FID against t_c, one line per n, the vanilla level dashed."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  for method in sorted({r['method'] for r in cells}):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, n in enumerate(sorted({r['num_steps'] for r in cells if r['method'] == method})):
      gls = sorted((r['t_start'], r['fid']) for r in cells if r['method'] == method and r['num_steps'] == n
                   and r['init'] == 'gls')
      color = f'C{i}'
      if gls:
        ax.plot(*zip(*gls), 'o-', color=color, label=f'gls, n={n}')
      for r in cells:
        if r['method'] == method and r['num_steps'] == n and r['init'] == 'normal':
          ax.axhline(r['fid'], color=color, ls='--', lw=1, label=f'vanilla, n={n}')
    ax.set(xlabel='t_c (late-start time)', ylabel='FID', yscale='log',
           title=f'{config.data.dataset}: {COLUMN_NAMES[method]}')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f'fid_vs_tc_{method}.png'), dpi=120)
    plt.close(fig)


def save_comparison_grids(config, cells, outdir, count=64):
  """grid_{method}_n{n}.png: vanilla (left) against the best gls cell (right), same seeds."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import torchvision
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
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f'grid_{method}_n{n}.png'), dpi=120)
    plt.close(fig)
