"""The symmetry-breaking analyses on trained image models (--mode=potentials|late_start_curve|predicted_tc|
diversity). Outputs go to <workdir>/analysis/."""
import json
import logging
import os

import numpy as np
import torch

import datasets
import dist_util
import evaluation
import io_util
import sampling
from models import checkpoints
import late_start
import sde_lib
import workdir as wd
from analysis import symmetry
from errors import InputError
from experiments import plots, tables
from samplers.trajectory import Trajectory


def _setup(config, workdir):
  """(device, eps_fn, schedule, outdir); the output folder is checked before the model is loaded."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  device = dist_util.get_device(config)
  eps_fn, step = checkpoints.load_eps_fn(config, workdir, device)
  return device, eps_fn, sde_lib.DDPMSchedule.from_config(config), outdir, step


def potentials(config, workdir):
  """Generative potential along x(a) = cos(a) x1 + sin(a) x2 between two DDIM trajectories, at several t.

  The potential is -integral of the model's reverse-SDE drift beta (x/2 + score) along the path (docs/ssb.md,
  "Potentials of trained models"); x1, x2 are the two trajectories' states at t. Writes potentials.png and
  potentials.csv.
  """
  device, eps_fn, schedule, outdir, _ = _setup(config, workdir)
  a = config.analysis
  T = schedule.T
  # DDIM's trajectory must visit every analysed time: the late-start grid plus those times, from N(0, I) at T-1.
  timesteps = sorted(set(np.linspace(0, T - 1, a.potential_steps).astype(int).tolist()) |
                     set(a.potential_times), reverse=True)
  spec = sampling.RunSpec.from_config(config.sampling, method='ddim', init='normal', timesteps=timesteps)
  plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
  traj = Trajectory()
  sampling.generate(eps_fn, schedule, plan, 2, 2, config.seed, device, datasets.get_data_inverse_scaler(config),
                    progress=False, callback=traj)
  angles = np.linspace(-np.pi / 4, 3 * np.pi / 4, 61)
  rows, plt = [], io_util.pyplot()
  fig, axes = plt.subplots(1, len(a.potential_times), figsize=(2.4 * len(a.potential_times), 2.6), sharey=False)
  for ax, t in zip(np.atleast_1d(axes), a.potential_times):
    x = traj['x'][traj['t'].index(t)].to(device)
    u = symmetry.path_potential(symmetry.model_drift(eps_fn, schedule, t), x[0:1], x[1:2], angles)
    u = np.asarray(u) - np.min(u)
    rows += [(t, float(ang), float(val)) for ang, val in zip(angles, u)]
    ax.plot(angles / np.pi, u)
    ax.axvline(0, color='gray', lw=0.5)
    ax.axvline(0.5, color='gray', lw=0.5)
    ax.set(title=f't={t}, theta={np.sqrt(schedule.alpha_bar(t).item()):.2f}', xlabel='a / pi')
  np.atleast_1d(axes)[0].set_ylabel('u(a) - min u')
  io_util.save_figure(fig, os.path.join(outdir, 'potentials.png'))
  io_util.write_csv(os.path.join(outdir, 'potentials.csv'), ['t', 'a', 'u'], rows)
  logging.info('wrote %s', os.path.join(outdir, 'potentials.png'))
  return rows


def late_start_curve(config, workdir):
  """FID/KID of the full ancestral sampler started at t (from N(0, I), and from the Gaussian late start),
  against t. Skipping the linear early phase should cost nothing until t nears the critical time.

  Needs the FID reference stats (--mode=fid_stats). Resumable (analysis/late_start.json); writes
  late_start_curve.png / .csv.
  """
  device, eps_fn, schedule, outdir, step = _setup(config, workdir)
  a, d = config.analysis, config.data
  signature = dict(checkpoint_step=step, num_samples=a.late_start_samples, seed=config.seed)
  ref = evaluation.load_reference(config)
  inception = evaluation.load_inception(config.eval.inception_path, device,
                                         backend=config.eval.fid_backend)
  moments = late_start.late_start_moments(config) if 'gls' in a.late_start_inits else None
  path = os.path.join(outdir, 'late_start.json')
  results = io_util.load_json(path, {})
  make_initialiser = late_start.initialiser_factory(config, schedule, moments, {})  # one fit serves every t
  for init in a.late_start_inits:
    for t in a.late_start_ts:
      key = f'{init}_t{t}'
      if results.get(key, {}).get('signature') == signature:
        continue  # done with the same checkpoint, sample count and seed
      spec = sampling.RunSpec.from_config(config.sampling, method='ddpm', num_steps=t + 1, init=init, t_start=t,
                                          grid='late_start')  # every step t..0: the full ancestral chain
      plan = sampling.sampling_plan(spec, schedule, make_initialiser)
      images = sampling.generate(eps_fn, schedule, plan, a.late_start_samples, config.eval.batch_size, config.seed,
                                 device, datasets.get_data_inverse_scaler(config), desc=key)
      scores = evaluation.score_images(images, inception, ref, config, device)
      results[key] = dict(init=init, t=t, nfe=plan.nfe, signature=signature, **scores)
      io_util.save_json(results, path)
  rows = [results[f'{i}_t{t}'] for i in a.late_start_inits for t in a.late_start_ts]
  keys = ['init', 't', 'nfe', 'num_samples', 'fid', 'kid', 'kid_std']
  io_util.write_csv(os.path.join(outdir, 'late_start_curve.csv'), keys, [[r[k] for k in keys] for r in rows])
  plt = io_util.pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for init in a.late_start_inits:
    pts = sorted((r['t'], r['fid']) for r in rows if r['init'] == init)
    ax.plot(*zip(*pts), 'o-', label='N(0, I) at t' if init == 'normal' else 'Gaussian late start at t')
  ax.set(xlabel='start time t (full ancestral sampler from t to 0)', ylabel='FID', yscale='log',
         title=f'{d.dataset}: late start, {a.late_start_samples} samples')
  ax.legend()
  io_util.save_figure(fig, os.path.join(outdir, 'late_start_curve.png'))
  return rows


def predicted_tc(config, workdir):
  """The data-only t_c (the largest t at which the generative drift's Jacobian at the noised data mean gets a
  positive eigenvalue: the flow there stops contracting; docs/ssb.md), beside the FID-optimal t_c of the eval
  sweep where one exists. Writes analysis/predicted_tc.json."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  schedule = sde_lib.DDPMSchedule.from_config(config)
  images, _ = datasets.load_arrays(config, 'train')
  data = datasets.get_data_scaler(config)(images).reshape(len(images), -1).double().numpy()
  t_c = int(symmetry.predicted_tc(data, schedule))
  out = dict(dataset=config.data.dataset, num_train=len(data), predicted_tc=t_c,
             theta=float(np.sqrt(schedule.alpha_bar(t_c).item())))
  results = io_util.load_json(os.path.join(wd.eval_dir(workdir), 'results.json'), {})
  if results:
    best = tables.best_cells(list(results.values()))
    out['fid_optimal_tc'] = {f'{m}_n{n}': r['t_start'] for (m, n, init), r in sorted(best.items()) if init == 'gls'}
  io_util.save_json(out, os.path.join(outdir, 'predicted_tc.json'))
  print(json.dumps(out, indent=1))
  return out


def _classifier(config, outdir):
  """The plug-in classifier (config.analysis.classifier_path) or one trained here on the training split."""
  from analysis import classifier as clf
  if config.analysis.classifier_path:
    return clf.load_classifier(config.analysis.classifier_path), None
  path = os.path.join(outdir, 'classifier.pt')
  if os.path.exists(path) and os.path.exists(path + '.json'):
    return clf.load_classifier(path), io_util.load_json(path + '.json')['test_accuracy']
  x, y = datasets.load_arrays(config, 'train')
  x_test, y_test = datasets.load_arrays(config, 'eval')
  model, acc = clf.train_classifier(x, y, x_test, y_test, epochs=config.analysis.classifier_epochs, seed=config.seed)
  clf.save_classifier(model, path)
  io_util.save_json({'test_accuracy': acc, 'train_size': len(x), 'test_size': len(x_test)}, path + '.json')
  return model, acc


def _best_gls_tc(workdir, method, n, default):
  """The sweep's FID-best t_c for (method, n) when eval/results.json has it, else ``default``."""
  results = io_util.load_json(os.path.join(wd.eval_dir(workdir), 'results.json'), {})
  best = tables.best_cells(list(results.values())).get((method, n, 'gls')) if results else None
  if best:
    return best['t_start'], 'eval sweep'
  if default == 'auto':
    raise InputError(f'--mode=diversity needs a t_c for {method} n={n}: run --mode=eval first (its best t_c is used) '
                     "or set a number in --config.sampling.t_start ('auto' is chosen in sample and eval mode only)")
  return default, 'sampling.t_start'


def _diversity_cell(config, ctx, method, n, t_c):
  """Class counts of the vanilla and gls arms of one (method, n): the same seeds, diversity_num_samples each."""
  from analysis import classifier as clf
  from analysis import diversity as div
  a, counts = config.analysis, {}
  for init, t_start in (('normal', ctx['schedule'].T - 1), ('gls', t_c)):
    spec = sampling.RunSpec.from_config(config.sampling, method=method, num_steps=n, init=init, t_start=t_start,
                                        grid='late_start')
    plan = sampling.sampling_plan(spec, ctx['schedule'], late_start.initialiser_factory(
        config, ctx['schedule'], ctx['moments'], ctx['cache']))
    images = sampling.generate(ctx['eps_fn'], ctx['schedule'], plan, a.diversity_num_samples,
                               config.sampling.batch_size, config.seed, ctx['device'],
                               datasets.get_data_inverse_scaler(config), desc=f'{method} n={n} {init}')
    comp = clf.class_composition(ctx['classifier'], torch.from_numpy(images), len(ctx['reference']),
                                 config.eval.batch_size)
    counts[init] = np.asarray(comp['counts'])
  arms = {arm: div.composition_stats(counts[init], ctx['reference'], seed=config.seed)
          for arm, init in (('vanilla', 'normal'), (f'gls (t_c={t_c})', 'gls'))}
  return dict(method=method, num_steps=n, t_c=t_c, arms=arms,
              test=div.compare_compositions(counts['normal'], counts['gls']))


def diversity(config, workdir):
  """Class composition of vanilla against gls samples under a classifier, for every (method, n) of
  analysis.diversity_methods x analysis.diversity_steps, with intervals and a chi-square test (the SSB paper's
  diversity claim; its CelebA study, generalised). gls uses the eval sweep's best t_c when there is one.
  Resumable per (method, n). Writes analysis/diversity.{json,csv,md} and diversity_{method}_n{n}.png."""
  device, eps_fn, schedule, outdir, step = _setup(config, workdir)
  a = config.analysis
  model, acc = _classifier(config, outdir)
  _, labels = datasets.load_arrays(config, 'train')
  reference = np.bincount(labels.numpy(), minlength=int(labels.max()) + 1) / len(labels)
  ctx = dict(device=device, eps_fn=eps_fn, schedule=schedule, classifier=model, reference=reference, cache={},
             moments=late_start.late_start_moments(config))
  path = os.path.join(outdir, 'diversity.json')
  signature = dict(checkpoint_step=step, num_samples=a.diversity_num_samples, seed=config.seed)
  saved = io_util.load_json(path, {})
  cells = saved.get('cells', {}) if saved.get('signature') == signature else {}
  for method in a.diversity_methods:
    for n in a.diversity_steps:
      t_c, source = _best_gls_tc(workdir, method, n, config.sampling.t_start)
      key = f'{method}_n{n}_tc{t_c}'
      if key not in cells:
        cells[key] = dict(_diversity_cell(config, ctx, method, n, t_c), t_c_source=source)
        io_util.save_json(dict(signature=signature, classifier_test_accuracy=acc,
                               reference_fractions=reference.tolist(), cells=cells), path)
      for arm in cells[key]['arms'].values():
        arm['reference_fractions'] = reference.tolist()
      plots.plot_compositions(cells[key]['arms'], os.path.join(outdir, f'diversity_{method}_n{n}.png'),
                            title=f'{config.data.dataset}: {method.upper()}, n={n}')
  table = _diversity_table(cells, outdir, a.diversity_num_samples, acc)
  print(table)
  return cells


def _diversity_table(cells, outdir, num_samples, accuracy):
  """diversity.csv and diversity.md: entropy and KL to the training classes per arm with 95% intervals."""
  header = ['sampler', 'n', 't_c', 'entropy vanilla', 'entropy gls', 'KL vanilla', 'KL gls', 'chi2 p-value']
  fmt = lambda v, ci: f'{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]'
  rows = []
  for c in cells.values():
    van, gls = (c['arms'][k] for k in sorted(c['arms'], key=lambda k: k != 'vanilla'))
    rows.append([c['method'], c['num_steps'], c['t_c'], fmt(van['entropy'], van['entropy_ci']),
                 fmt(gls['entropy'], gls['entropy_ci']), fmt(van['kl_to_reference'], van['kl_ci']),
                 fmt(gls['kl_to_reference'], gls['kl_ci']), f"{c['test']['p_value']:.3g}"])
  io_util.write_csv(os.path.join(outdir, 'diversity.csv'), header, rows)
  note = (f'\n{num_samples} samples per arm (same seeds); classifier test accuracy {float(accuracy):.3f}; '
          '95% bootstrap intervals; chi-square test of equal class distributions between the two arms.\n')
  table = io_util.markdown_table(header, rows) + note
  io_util.write_text(os.path.join(outdir, 'diversity.md'), table)
  return table
