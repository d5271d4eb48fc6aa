"""The MNIST training-recipe study: sample quality against training steps, per recipe (BENCHMARKS.md, "MNIST recipes").

  python benchmarks/mnist_recipe_study.py [--recipes A_lr1e-3_bs64,...] [--root workdirs/study] [--num_samples 1000]
      [--n_iters 20000] [--ddpm_full_at 12000] [--steps 2000,6000] [--fp32_at 4000] [--cells ddim:100,ddim:10,ddpm:10]
      [--eval_only] [--smoke]

For each recipe (RECIPES: overrides of configs/ddpm/mnist5k.py) it trains in ROOT/<recipe> (run_lib.train, resumable:
run the same command again after a stop), then scores the EMA weights of every snapshot checkpoint with
  * vanilla DDIM, 100 steps (late_start grid from t = 999), and the sweep's n = 10 cells: DDIM and fast DDPM;
  * the 1,000-step ancestral DDPM (the full chain), only at the steps in --ddpm_full_at (it costs 1,000 network
    calls per sample, ten times the 100-step DDIM);
the last scored checkpoint's (or --fp32_at's) n = 10 cells also with the network in fp32, to show what bf16 sampling
changes; each with --num_samples samples (the same per-sample seeds everywhere), FID and KID against the training-split
statistics (written first if missing). Rows already in ROOT/study.csv with the same (recipe, step, sampler, n,
num_samples) are kept, so the study resumes row by row. Writes ROOT/study.csv, ROOT/study.md and ROOT/study.png
(FID against training step, one line per recipe and sampler). The floor (real held-out images) is a row too.
--smoke: a few steps of a tiny digits model and 8 samples (a run check).
"""
import argparse
import csv
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import datasets  # noqa: E402
import dist_util  # noqa: E402
import eval_lib  # noqa: E402
import evaluation  # noqa: E402
import io_util  # noqa: E402
import late_start  # noqa: E402
import run_lib  # noqa: E402
import sampling  # noqa: E402
from models import checkpoints  # noqa: E402
import sde_lib  # noqa: E402
import workdir as wd  # noqa: E402
from configs import validation  # noqa: E402
from models import utils as mutils  # noqa: E402

# name -> overrides of configs/ddpm/mnist5k.py (the README table's 4,000-step fp32 model is A's recipe).
# Sampling runs under eval.precision='auto' (bf16 autocast where the CPU has native bf16: 3x faster here); the
# last checkpoint's n = 10 DDIM cell is also drawn in fp32, so the table shows what bf16 sampling changes.
COMMON = {'training.precision': 'auto', 'eval.precision': 'auto', 'training.n_iters': 30000,
          'training.snapshot_freq': 2000}
RECIPES = {
    'A_lr1e-3_bs64': dict(COMMON),
    'B_lr2e-4': dict(COMMON, **{'optim.lr': 2e-4}),
    'C_bs128_ema9995': dict(COMMON, **{'training.batch_size': 128, 'model.ema_rate': 0.9995}),
}
CELLS = [('ddim', 100), ('ddim', 10), ('ddpm', 10)]  # (sampler, n) at every checkpoint; + ('ddpm', 1000) on request
SMOKE_CELLS = [('ddim', 3)]
FIELDS = ['recipe', 'step', 'sampler', 'n', 'nfe', 'precision', 'num_samples', 'fid', 'kid', 'kid_std', 'seconds']


def recipe_config(name, smoke=False):
  if smoke:
    from configs.ddpm import digits as base
    overrides = {'data.num_train': 32, 'training.n_iters': 2, 'training.snapshot_freq': 2,
                 'training.snapshot_sampling': False,
                 'training.batch_size': 16, 'eval.num_samples': 8, 'eval.batch_size': 8, 'eval.kid_subset_size': 4}
  else:
    from configs.ddpm import mnist5k as base
    overrides = RECIPES[name]
  config = base.get_config()
  for field, value in overrides.items():
    section, key = field.split('.')
    config[section][key] = value
  validation.validate_config(config)
  return config


def score_checkpoint(config, workdir, index, method, n, ctx, num_samples, precision):
  """FID/KID record of the EMA weights of checkpoint ``index`` sampled by (method, n) from N(0, I) at T-1, the
  network run in ``precision`` (resolved: fp32 or bf16)."""
  t0 = time.time()
  config = config.copy_and_resolve_references()
  config.sampling.checkpoint, config.eval.precision = index, precision
  eps_fn, step = checkpoints.load_eps_fn(config, workdir, ctx['device'])
  spec = sampling.RunSpec.from_config(config.sampling, method=method, num_steps=n, init='normal',
                                      t_start=config.model.num_scales - 1, grid='late_start')
  plan = sampling.sampling_plan(spec, ctx['schedule'], late_start.initialiser_factory(config, ctx['schedule']))
  images = sampling.generate(eps_fn, ctx['schedule'], plan, num_samples, config.eval.batch_size, config.seed,
                             ctx['device'], ctx['inverse'], desc=f'{method} n={n} step {step}')
  scores = evaluation.score_images(images, ctx['inception'], ctx['ref'], config, ctx['device'])
  return dict(step=step, sampler=method, n=n, nfe=plan.nfe, precision=precision, seconds=round(time.time() - t0, 1),
              **scores)


def run_recipe(name, root, rows, args):
  config = recipe_config(name, args.smoke)
  if args.n_iters:
    config.training.n_iters = args.n_iters
  if args.smoke:
    config.sampling.stats_dir = os.path.join(root, 'stats')
  config.eval.num_samples = min(args.num_samples, config.eval.num_samples) if args.smoke else args.num_samples
  workdir = os.path.join(root, name)
  if not args.eval_only:
    run_lib.train(config, workdir)
  if not os.path.exists(wd.fid_stats_path(config)):
    eval_lib.fid_stats(config, workdir)
  device = dist_util.get_device(config)
  ctx = dict(device=device, schedule=sde_lib.DDPMSchedule.from_config(config), ref=evaluation.load_reference(config),
             inverse=datasets.get_data_inverse_scaler(config),
             inception=evaluation.load_inception(config.eval.inception_path, device, backend=config.eval.fid_backend))
  n_samples = config.eval.num_samples
  done = {(r['recipe'], int(r['step']), r['sampler'], int(r['n']), r['precision'], int(r['num_samples']))
          for r in rows}
  if ('floor', 0, 'real', 0, '-', n_samples) not in done:
    floor = evaluation.floor_scores(config, ctx['inception'], ctx['ref'], ctx['device'])
    rows.append(dict(recipe='floor', step=0, sampler='real', n=0, nfe=0, precision='-', seconds=0, **floor))
    save(root, rows)
  precision = mutils.resolve_precision(device, config.eval.precision)
  full_at = {int(s) for s in args.ddpm_full_at}
  meta = wd.meta_checkpoint_path(workdir)
  snapshots = sorted((s, p) for s, p in wd.checkpoints(workdir) if s is not None and p != meta)
  if args.steps:
    snapshots = [(s_, p) for s_, p in snapshots if s_ in {int(v) for v in args.steps}]
  fp32_at = {int(v) for v in args.fp32_at} if args.fp32_at else {s_ for s_, _ in snapshots[-1:]}
  for step, path in snapshots:
    index = int(os.path.basename(path)[len('checkpoint_'):-len('.pth')])
    cells = [(m, n, precision) for m, n in (SMOKE_CELLS if args.smoke else args.cells)]
    cells += [('ddpm', config.model.num_scales, precision)] if step in full_at else []
    if step in fp32_at and precision != 'fp32':
      cells += [('ddim', 10, 'fp32'), ('ddpm', 10, 'fp32')]
    for method, n, prec in cells:
      if (name, step, method, n, prec, n_samples) in done:
        continue
      record = score_checkpoint(config, workdir, index, method, n, ctx, n_samples, prec)
      rows.append(dict(recipe=name, **record))
      save(root, rows)
      print(f"{name} step {record['step']} {method} n={n} {prec}: FID {record['fid']:.2f} KID {record['kid']:.4f} "
            f"+- {record['kid_std']:.4f} ({record['seconds']:.0f} s)", flush=True)


def save(root, rows):
  rows.sort(key=lambda r: (r['recipe'], int(r['step']), r['sampler'], int(r['n'])))
  io_util.write_csv(os.path.join(root, 'study.csv'), FIELDS, [[r[k] for k in FIELDS] for r in rows])
  md = io_util.markdown_table(FIELDS, [[f'{float(r[k]):.4f}' if k in ('fid', 'kid', 'kid_std') else str(r[k])
                                         for k in FIELDS] for r in rows])
  io_util.write_text(os.path.join(root, 'study.md'), md)
  plot(root, rows)


def plot(root, rows):
  plt = io_util.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  curves = sorted({(r['recipe'], r['sampler'], int(r['n']), r['precision']) for r in rows if r['recipe'] != 'floor'})
  for i, (recipe, sampler, n, prec) in enumerate(curves):
    pts = sorted((int(r['step']), float(r['fid'])) for r in rows
                 if (r['recipe'], r['sampler'], int(r['n']), r['precision']) == (recipe, sampler, n, prec))
    ax.plot(*zip(*pts), 'o-' if len(pts) > 1 else 'o', label=f'{recipe}: {sampler} n={n} ({prec})',
            color=f'C{i % 10}')
  for r in rows:
    if r['recipe'] == 'floor':
      ax.axhline(float(r['fid']), color='k', ls=':', lw=1, label=f"real held-out ({r['num_samples']})")
  ax.set(xlabel='training step', ylabel='FID (training-split statistics)', yscale='log', title='MNIST5K recipes')
  ax.legend(fontsize=7)
  io_util.save_figure(fig, os.path.join(root, 'study.png'))


def load_rows(root):
  path = os.path.join(root, 'study.csv')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(csv.DictReader(f))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--recipes', default='A_lr1e-3_bs64', help=f'comma-separated names from {sorted(RECIPES)}')
  parser.add_argument('--root', default=os.path.join('workdirs', 'study'))
  parser.add_argument('--num_samples', type=int, default=1000)
  parser.add_argument('--ddpm_full_at', default='12000', help='comma-separated steps that also get 1,000-step DDPM')
  parser.add_argument('--steps', default='', help='comma-separated checkpoint steps to score (default: every one)')
  parser.add_argument('--fp32_at', default='', help='steps whose n = 10 cells are also sampled in fp32 (default: '
                      'the last scored checkpoint)')
  parser.add_argument('--n_iters', type=int, default=0,
                      help='train to this step instead of the recipe\'s (30,000, about 3 h here); a later run with a '
                           'larger value continues from the last checkpoint')
  parser.add_argument('--cells', default=','.join(f'{m}:{n}' for m, n in CELLS),
                      help='comma-separated sampler:n cells scored at every checkpoint (e.g. ddim:10,ddpm:10 to '
                           'follow the n = 10 order cheaply)')
  parser.add_argument('--eval_only', action='store_true', help='score the checkpoints there, train no further')
  parser.add_argument('--smoke', action='store_true', help='a tiny digits model, 8 samples (a run check)')
  args = parser.parse_args()
  args.ddpm_full_at = [s for s in args.ddpm_full_at.split(',') if s]
  args.steps = [s for s in args.steps.split(',') if s]
  args.fp32_at = [s for s in args.fp32_at.split(',') if s]
  args.cells = parse_cells(parser, args.cells)
  names = ['smoke'] if args.smoke else [r for r in args.recipes.split(',') if r]
  unknown = [r for r in names if r not in RECIPES and not args.smoke]
  if unknown:
    parser.error(f'unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}')
  if args.smoke:  # everything (runs, statistics, tables) in a temporary folder that is removed afterwards
    with tempfile.TemporaryDirectory() as tmp:
      args.root = tmp
      study(names, args)
    return
  study(names, args)


def parse_cells(parser, text):
  cells = []
  for item in (c for c in text.split(',') if c):
    method, _, n = item.partition(':')
    if method not in ('ddim', 'ddpm') or not n.isdigit() or int(n) < 1:
      parser.error(f'--cells: {item!r} is not sampler:n with sampler ddim or ddpm and n >= 1')
    cells.append((method, int(n)))
  return cells


def study(names, args):
  os.makedirs(args.root, exist_ok=True)
  rows = load_rows(args.root)
  for name in names:
    run_recipe(name, args.root, rows, args)
  print(open(os.path.join(args.root, 'study.md')).read())


if __name__ == '__main__':
  main()
