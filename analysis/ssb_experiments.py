"""The symmetry-breaking analyses on trained image models (--mode=potentials|late_start_curve|predicted_tc|
diversity). Outputs go to <workdir>/analysis/."""
import json
import logging
import os

import numpy as np
import torch

import datasets
import eval_lib
import evaluation
import run_lib
import sde_lib
from analysis import symmetry


def _setup(config, workdir):
  device = run_lib.get_device(config)
  eps_fn, step = run_lib.load_ema_model(config, workdir, device)
  outdir = os.path.join(workdir, 'analysis')
  os.makedirs(outdir, exist_ok=True)
  return device, eps_fn, sde_lib.DDPMSchedule.from_config(config), outdir


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def potentials(config, workdir):
  """Generative potential along x(a) = cos(a) x1 + sin(a) x2 between two DDIM trajectories, at several t.

  The potential is -integral of the model's reverse-SDE drift beta (x/2 + score) along the path (SPEC sec. 9);
  x1, x2 are the two trajectories' states at t. Writes potentials.png and potentials.csv.
  """
  from samplers import get_sampler
  from samplers.initialisers import StandardNormal
  device, eps_fn, schedule, outdir = _setup(config, workdir)
  a = config.analysis
  T = schedule.T
  shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
  gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
  x_init = StandardNormal(shape, T - 1).sample(2, gens).to(device)
  timesteps = sorted(set(np.linspace(0, T - 1, a.potential_steps).astype(int).tolist()) |
                     set(a.potential_times), reverse=True)
  _, traj = get_sampler('ddim')(eps_fn, schedule, x_init, timesteps, return_trajectory=True)
  angles = np.linspace(-np.pi / 4, 3 * np.pi / 4, 61)
  rows, plt = [], _plt()
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
  fig.tight_layout()
  fig.savefig(os.path.join(outdir, 'potentials.png'), dpi=120)
  plt.close(fig)
  eval_lib._write_csv(os.path.join(outdir, 'potentials.csv'), ['t', 'a', 'u'], rows)
  logging.info('wrote %s', os.path.join(outdir, 'potentials.png'))
  return rows


def late_start_curve(config, workdir):
  """FID/KID of the full ancestral sampler started at t (from N(0, I), and from the Gaussian late start),
  against t. Skipping the linear early phase should cost nothing until t nears the critical time.

  Needs the FID reference stats (--mode=fid_stats). Resumable (analysis/late_start.json); writes
  late_start_curve.png / .csv.
  """
  device, eps_fn, schedule, outdir = _setup(config, workdir)
  a, d = config.analysis, config.data
  ref = evaluation.load_stats(eval_lib.fid_stats_path(config), d.dataset, d.image_size)
  inception = evaluation.load_inception(config.eval.inception_path, device)
  moments = run_lib.late_start_moments(config) if 'gls' in a.late_start_inits else None
  path = os.path.join(outdir, 'late_start.json')
  results, initialisers = eval_lib._load_results(path), {}
  for init in a.late_start_inits:
    for t in a.late_start_ts:
      key = f'{init}_t{t}'
      if key in results:
        continue
      timesteps = run_lib.sample_timesteps(config, 'ddpm', t + 1, t, 'late_start')  # every step t..0
      images = run_lib.generate(eps_fn, schedule, 'ddpm', timesteps,
                                run_lib.build_initialiser(config, schedule, t, init, moments, initialisers),
                                a.late_start_samples,
                                config.eval.batch_size, config.seed, device, datasets.get_data_inverse_scaler(config),
                                desc=key)
      results[key] = dict(init=init, t=t, nfe=len(timesteps), num_samples=len(images),
                          **_fid_kid(images, inception, ref, config, device))
      eval_lib._save_json(results, path)
  rows = [results[f'{i}_t{t}'] for i in a.late_start_inits for t in a.late_start_ts]
  keys = ['init', 't', 'nfe', 'num_samples', 'fid', 'kid']
  eval_lib._write_csv(os.path.join(outdir, 'late_start_curve.csv'), keys, [[r[k] for k in keys] for r in rows])
  plt = _plt()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for init in a.late_start_inits:
    pts = sorted((r['t'], r['fid']) for r in rows if r['init'] == init)
    ax.plot(*zip(*pts), 'o-', label='N(0, I) at t' if init == 'normal' else 'Gaussian late start at t')
  ax.set(xlabel='start time t (full ancestral sampler from t to 0)', ylabel='FID', yscale='log',
         title=f'{d.dataset}: late start, {a.late_start_samples} samples')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(outdir, 'late_start_curve.png'), dpi=120)
  plt.close(fig)
  return rows


def _fid_kid(images, inception, ref, config, device):
  bs = config.eval.batch_size
  batches = (torch.from_numpy(images[i:i + bs]) for i in range(0, len(images), bs))
  mu, sigma, n, feats = evaluation.feature_moments(batches, inception, device=device, progress=False)
  kid, _ = evaluation.kid(feats, ref['feats'], subset_size=min(config.eval.kid_subset_size, len(feats),
                                                               len(ref['feats'])))
  return dict(fid=evaluation.fid_to_reference(mu, sigma, ref), kid=float(kid))


def predicted_tc(config, workdir):
  """The data-only t_c (where the central fixed point of the empirical-score dynamics loses stability),
  beside the FID-optimal t_c of the eval sweep where one exists. Writes analysis/predicted_tc.json."""
  schedule = sde_lib.DDPMSchedule.from_config(config)
  images, _ = datasets.load_arrays(config, 'train')
  data = datasets.get_data_scaler(config)(images).reshape(len(images), -1).double().numpy()
  t_c = int(symmetry.predicted_tc(data, schedule))
  out = dict(dataset=config.data.dataset, num_train=len(data), predicted_tc=t_c,
             theta=float(np.sqrt(schedule.alpha_bar(t_c).item())))
  results = eval_lib._load_results(os.path.join(workdir, 'eval', 'results.json'))
  if results:
    best = eval_lib.best_cells(list(results.values()))
    out['fid_optimal_tc'] = {f'{m}_n{n}': r['t_start'] for (m, n, init), r in sorted(best.items()) if init == 'gls'}
  os.makedirs(os.path.join(workdir, 'analysis'), exist_ok=True)
  eval_lib._save_json(out, os.path.join(workdir, 'analysis', 'predicted_tc.json'))
  print(json.dumps(out, indent=1))
  return out


def _classifier(config, outdir):
  """The plug-in classifier (config.analysis.classifier_path) or one trained here on the training split."""
  from analysis import classifier as clf
  if config.analysis.classifier_path:
    return clf.load_classifier(config.analysis.classifier_path), None
  path = os.path.join(outdir, 'classifier.pt')
  if os.path.exists(path):
    model = clf.load_classifier(path)
    with open(path + '.json') as f:
      return model, json.load(f)['test_accuracy']
  x, y = datasets.load_arrays(config, 'train')
  x_test, y_test = datasets.load_arrays(config, 'eval')
  model, acc = clf.train_classifier(x, y, x_test, y_test, epochs=config.analysis.classifier_epochs, seed=config.seed)
  clf.save_classifier(model, path)
  eval_lib._save_json({'test_accuracy': acc, 'train_size': len(x), 'test_size': len(x_test)}, path + '.json')
  return model, acc


def _diversity_samples(config, workdir):
  """{'vanilla': images, 'gls (t_c=...)': images} from the eval sweep's cells (or drawn now if absent)."""
  a = config.analysis
  results = eval_lib._load_results(os.path.join(workdir, 'eval', 'results.json'))
  best = eval_lib.best_cells(list(results.values())) if results else {}
  picks = {k: best.get((a.diversity_method, a.diversity_num_steps, k)) for k in ('normal', 'gls')}
  if all(picks.values()):
    load = lambda r: np.load(os.path.join(workdir, 'eval', r['samples']))['samples']
    return {'vanilla': load(picks['normal']), f"gls (t_c={picks['gls']['t_start']})": load(picks['gls'])}
  device, eps_fn, schedule, _ = _setup(config, workdir)
  out = {}
  for init, t_start in (('normal', schedule.T - 1), ('gls', config.sampling.t_start)):
    steps = run_lib.sample_timesteps(config, a.diversity_method, a.diversity_num_steps, t_start)
    out['vanilla' if init == 'normal' else f'gls (t_c={t_start})'] = run_lib.generate(
        eps_fn, schedule, a.diversity_method, steps, run_lib.build_initialiser(config, schedule, t_start, init),
        config.eval.num_samples, config.eval.batch_size, config.seed, device,
        datasets.get_data_inverse_scaler(config), run_lib.sampler_options(a.diversity_method, config.sampling))
  return out


def diversity(config, workdir):
  """Class composition (and its entropy) of vanilla vs gls samples under a classifier; the paper's CelebA
  race-composition study, generalised. Writes analysis/diversity.png and diversity.json."""
  from analysis import classifier as clf
  outdir = os.path.join(workdir, 'analysis')
  os.makedirs(outdir, exist_ok=True)
  model, acc = _classifier(config, outdir)
  samples = _diversity_samples(config, workdir)
  _, labels = datasets.load_arrays(config, 'train')
  num_classes = int(labels.max()) + 1
  comps = {name: clf.class_composition(model, torch.from_numpy(x), num_classes, config.eval.batch_size)
           for name, x in samples.items()}
  clf.plot_composition(comps, os.path.join(outdir, 'diversity.png'))
  out = {'classifier_test_accuracy': acc, 'method': config.analysis.diversity_method,
         'num_steps': config.analysis.diversity_num_steps,
         'compositions': {k: {m: np.asarray(v).tolist() if hasattr(v, '__len__') else v for m, v in c.items()}
                          for k, c in comps.items()}}
  eval_lib._save_json(out, os.path.join(outdir, 'diversity.json'))
  for name, c in comps.items():
    print(f"{name}: entropy {c['entropy']:.3f} nats (normalised {c['normalised_entropy']:.3f}), "
          f"fractions {np.round(np.asarray(c['fractions']), 3).tolist()}")
  return out
