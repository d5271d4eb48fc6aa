"""The GEN-paper experiments on trained models (SPEC section 10): --mode=memorization and --mode=jacobian_rank.

Outputs go to <workdir>/analysis/.
* memorization: trains the configured model on the first n training images for n in ``analysis.mem_sizes``
  (one sub-run per n under <workdir>/memorization/n{n}, each resumable), then draws samples from the SAME
  per-sample seeds with the model and with the exact optimal denoiser of its n training images, and reports
  the generalization score, the kNN-ratio memorization and the reproducibility (RP) score model-vs-optimal.
* jacobian_rank: the effective rank of the x0-prediction's Jacobian along DDIM trajectories, for the trained
  model and for the exact denoiser (the MoLRG closed form, or the optimal empirical denoiser otherwise).
"""
import copy
import json
import logging
import os
import time

import numpy as np
import torch

import datasets
import eval_lib
import run_lib
import sde_lib
from analysis import denoiser as denoiser_lib
from analysis import jacobian as jacobian_lib
from analysis import memorization as mem_lib


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _sub_config(config, num_train):
  """The config of the n-image sub-run: the same model, trained on the first n images."""
  cfg = copy.deepcopy(config)
  a = config.analysis
  cfg.data.num_train = int(num_train)
  cfg.training.batch_size = min(config.training.batch_size, int(num_train))
  cfg.training.n_iters = int(a.mem_n_iters)
  cfg.training.snapshot_freq = int(a.mem_n_iters)
  cfg.training.snapshot_freq_for_preemption = max(1, int(a.mem_n_iters) // 4)
  cfg.training.eval_freq = max(1, int(a.mem_n_iters) // 4)
  return cfg


def _ddim_samples(eps_fn, config, schedule, device, num_samples, num_steps):
  """DDIM (eta 0) samples in [0, 1] from the fixed per-sample seeds 0..num_samples-1 of config.seed."""
  from samplers.initialisers import StandardNormal
  T = schedule.T
  shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
  timesteps = run_lib.sample_timesteps(config, 'ddim', num_steps, T - 1, grid='uniform')
  return run_lib.generate(eps_fn, schedule, 'ddim', timesteps, StandardNormal(shape, T - 1), num_samples,
                          config.sampling.batch_size, config.seed, device,
                          datasets.get_data_inverse_scaler(config), progress=False)


def _scores(model_imgs, optimal_imgs, train_imgs, feature_net, threshold):
  """Generalization / memorization scores of both sample sets and RP(model, optimal); images (N,C,H,W) in [0,1]."""
  train_feats = feature_net(train_imgs)
  model_feats, optimal_feats = feature_net(model_imgs), feature_net(optimal_imgs)
  mem_model = mem_lib.memorization_score(model_feats, train_feats, threshold)
  mem_optimal = mem_lib.memorization_score(optimal_feats, train_feats, threshold)
  knn = mem_lib.knn_ratio_memorization(model_imgs, train_imgs)
  return {
      'gen_score': float(mem_model['gen']),
      'mem_score': float(mem_model['mem']),
      'knn_mem': float(knn['mem']),
      'optimal_mem_score': float(mem_optimal['mem']),
      'rp_model_vs_optimal': float(mem_lib.reproducibility_score(model_feats, optimal_feats, threshold)),
      'nn_index': mem_model['nn_index'],
  }


def _memorization_cell(config, workdir, num_train, feature_net, threshold, device):
  """Train (or resume) the n-image run, sample model and optimal denoiser from the same seeds, score them."""
  a = config.analysis
  cfg = _sub_config(config, num_train)
  subdir = os.path.join(workdir, 'memorization', f'n{num_train}')
  start = time.time()
  run_lib.train(cfg, subdir)
  train_seconds = time.time() - start
  schedule = sde_lib.DDPMSchedule.from_config(cfg)
  train_imgs, _ = datasets.load_arrays(cfg, 'train')
  eps_fn, _ = run_lib.load_ema_model(cfg, subdir, device)
  optimal = denoiser_lib.OptimalDenoiser(datasets.get_data_scaler(cfg)(train_imgs), schedule, device=device)
  model_imgs = _ddim_samples(eps_fn, cfg, schedule, device, a.mem_num_samples, a.mem_num_steps)
  optimal_imgs = _ddim_samples(optimal, cfg, schedule, device, a.mem_num_samples, a.mem_num_steps)
  scores = _scores(torch.from_numpy(model_imgs), torch.from_numpy(optimal_imgs), train_imgs, feature_net,
                   threshold)
  nn_imgs = train_imgs[torch.as_tensor(scores.pop('nn_index'))[:16]].numpy()
  run_lib.save_grid(np.concatenate([model_imgs[:16], optimal_imgs[:16], nn_imgs]),
                    os.path.join(workdir, 'analysis', f'memorization_n{num_train}.png'), nrow=16)
  return dict(num_train=int(num_train), seconds=round(time.time() - start, 1),
              train_seconds=round(train_seconds, 1), **scores)


def memorization(config, workdir):
  """Memorization -> generalization against training-set size n; writes memorization.{md,csv,png,json}."""
  device = run_lib.get_device(config)
  a = config.analysis
  feature_net = mem_lib.load_feature_net(a.feature_net, device=device)
  threshold = a.threshold if a.threshold >= 0 else mem_lib.default_threshold(a.feature_net)
  outdir = os.path.join(workdir, 'analysis')
  os.makedirs(outdir, exist_ok=True)
  rows = []
  for n in a.mem_sizes:
    logging.info('memorization: n = %d', n)
    rows.append(_memorization_cell(config, workdir, n, feature_net, threshold, device))
    logging.info('n=%d: %s', n, rows[-1])
  header = ['num_train', 'gen_score', 'mem_score', 'knn_mem', 'rp_model_vs_optimal', 'optimal_mem_score',
            'train_seconds', 'seconds']
  eval_lib._write_csv(os.path.join(outdir, 'memorization.csv'), header, [[r[h] for h in header] for r in rows])
  with open(os.path.join(outdir, 'memorization.md'), 'w') as f:
    f.write(f'Feature net: {a.feature_net}, cosine threshold {threshold:.3f}; {a.mem_num_samples} DDIM samples '
            f'({a.mem_num_steps} steps) per n from fixed seeds; {a.mem_n_iters} training steps per n.\n\n')
    f.write('| ' + ' | '.join(header) + ' |\n|' + '---|' * len(header) + '\n')
    for r in rows:
      f.write('| ' + ' | '.join(f'{r[h]:.3f}' if isinstance(r[h], float) else str(r[h]) for h in header) + ' |\n')
  with open(os.path.join(outdir, 'memorization.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  _plot_memorization(rows, os.path.join(outdir, 'memorization.png'))
  print(open(os.path.join(outdir, 'memorization.md')).read())
  return rows


def _plot_memorization(rows, path):
  plt = _plt()
  n = [r['num_train'] for r in rows]
  fig, ax = plt.subplots(figsize=(5, 3.4))
  ax.plot(n, [r['gen_score'] for r in rows], 'o-', label='generalization score (1 - mem)')
  ax.plot(n, [r['knn_mem'] for r in rows], 's--', label='kNN memorization (d1/d2 < 1/3)')
  ax.plot(n, [r['rp_model_vs_optimal'] for r in rows], '^-', label='RP: model vs optimal denoiser')
  ax.set(xscale='log', xlabel='training set size n', ylabel='score', ylim=(-0.02, 1.02))
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def mem_score(config, workdir):
  """--mode=mem_score: memorization / generalization / kNN-ratio scores of any samples file
  (config.analysis.samples_file: npz with key 'samples', (N, C, H, W) in [0, 1]) against the config's training
  split. Writes analysis/mem_score_{file name}.json and prints it."""
  a = config.analysis
  if not a.samples_file or not os.path.isfile(a.samples_file):
    raise FileNotFoundError(f'config.analysis.samples_file={a.samples_file!r} is not a file: pass an npz written by '
                            '--mode=sample or --mode=eval, e.g. --config.analysis.samples_file=DIR/samples/x.npz')
  with np.load(a.samples_file) as f:
    if 'samples' not in f.files:
      raise ValueError(f'{a.samples_file} has no "samples" array (keys: {f.files})')
    samples = torch.from_numpy(np.asarray(f['samples'], np.float32))
  train_imgs, _ = datasets.load_arrays(config, 'train')
  if tuple(samples.shape[1:]) != tuple(train_imgs.shape[1:]):
    raise ValueError(f'samples {tuple(samples.shape)} do not match the {config.data.dataset} training images '
                     f'{tuple(train_imgs.shape)}: use the config the samples were drawn with')
  device = run_lib.get_device(config)
  feature_net = mem_lib.load_feature_net(a.feature_net, device=device)
  threshold = a.threshold if a.threshold >= 0 else mem_lib.default_threshold(a.feature_net)
  mem = mem_lib.memorization_score(feature_net(samples), feature_net(train_imgs), threshold)
  out = dict(samples_file=a.samples_file, num_samples=len(samples), num_train=len(train_imgs),
             feature_net=a.feature_net, threshold=float(threshold), mem_score=mem['mem'], gen_score=mem['gen'],
             knn_mem=mem_lib.knn_ratio_memorization(samples, train_imgs)['mem'])
  os.makedirs(os.path.join(workdir, 'analysis'), exist_ok=True)
  name = os.path.splitext(os.path.basename(a.samples_file))[0]
  eval_lib._save_json(out, os.path.join(workdir, 'analysis', f'mem_score_{name}.json'))
  print(json.dumps(out, indent=1))
  return out


# ---------------------------------------------------------------------------------------- Jacobian rank
def _x0_fn(eps_fn, schedule):
  """x0-prediction (B, ...) -> (B, ...) of an eps function; differentiable (no inference_mode)."""
  def x0_fn(x, t):
    return schedule.x0_from_eps(x, t, eps_fn(x, t))
  return x0_fn


def _exact_denoiser(config, schedule, device):
  """The exact denoiser: MoLRG's closed form, or the optimal empirical denoiser of the training set."""
  if config.data.dataset.upper() == 'MOLRG':
    from analysis import molrg
    d = config.data
    bases = molrg.molrg_bases(d.num_channels * d.image_size ** 2, d.get('molrg_classes', 2),
                              d.get('molrg_rank', 7), d.get('molrg_seed', 0))
    return 'exact MoLRG denoiser', molrg.MoLRGDenoiser(bases, schedule)
  train_imgs, _ = datasets.load_arrays(config, 'train')
  data = datasets.get_data_scaler(config)(train_imgs)
  return 'optimal empirical denoiser', denoiser_lib.OptimalDenoiser(data, schedule, device=device)


def jacobian_rank(config, workdir):
  """Rank at 99% Frobenius energy of d x0_pred / d x_t along DDIM trajectories: jacobian_rank.{csv,png}."""
  from samplers import get_sampler
  from samplers.initialisers import StandardNormal
  device = run_lib.get_device(config)
  a, schedule = config.analysis, sde_lib.DDPMSchedule.from_config(config)
  model, _ = run_lib.load_ema_module(config, workdir, device)
  for p in model.parameters():
    p.requires_grad_(False)
  model_eps = lambda x, t: model(x, torch.full((x.shape[0],), float(t), device=x.device))
  label, exact = _exact_denoiser(config, schedule, device)
  shape = (config.data.num_channels, config.data.image_size, config.data.image_size)
  T = schedule.T
  gens = [torch.Generator().manual_seed(run_lib.rng.sample_seed(config.seed, i))
          for i in range(a.jacobian_num_samples)]
  timesteps = run_lib.sample_timesteps(config, 'ddim', a.jacobian_num_steps, T - 1, grid='uniform')
  x_init = StandardNormal(shape, T - 1).sample(len(gens), gens).to(device)
  with torch.no_grad():
    _, traj = get_sampler('ddim')(model_eps, schedule, x_init, timesteps, return_trajectory=True)
  curves = {}
  for name, eps_fn in (('trained U-Net', model_eps), (label, exact)):
    curves[name] = jacobian_lib.rank_curve(_x0_fn(eps_fn, schedule), [x.to(device) for x in traj['x']],
                                           traj['t'], schedule=schedule)
  outdir = os.path.join(workdir, 'analysis')
  os.makedirs(outdir, exist_ok=True)
  rows = [dict(model=name, **r) for name, curve in curves.items() for r in curve]
  header = ['model', 't', 'alpha_bar', 'noise_level', 'rank', 'rank_over_D']
  eval_lib._write_csv(os.path.join(outdir, 'jacobian_rank.csv'), header, [[r[h] for h in header] for r in rows])
  jacobian_lib.plot_rank_curves(curves, os.path.join(outdir, 'jacobian_rank.png'))
  logging.info('wrote %s', os.path.join(outdir, 'jacobian_rank.png'))
  return curves
