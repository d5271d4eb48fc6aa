"""The GEN-paper experiments on trained models (docs/gen.md): --mode=memorization, --mode=mem_score and
--mode=jacobian_rank.

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
import dist_util
import io_util
import run_lib
import sampling
import sde_lib
import workdir as wd
from analysis import denoiser as denoiser_lib
from analysis import jacobian as jacobian_lib
from analysis import memorization as mem_lib
from errors import InputError


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
  plan = sampling.sampling_plan(config, schedule, 'ddim', num_steps, 'normal', schedule.T - 1, 'uniform')
  plan = plan._replace(options={'eta': 0.0})  # deterministic DDIM whatever sampling.eta says
  return sampling.generate(eps_fn, schedule, plan, num_samples, config.sampling.batch_size, config.seed, device,
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
  subdir = wd.memorization_dir(workdir, num_train)
  start = time.time()
  run_lib.train(cfg, subdir)
  train_seconds = time.time() - start
  schedule = sde_lib.DDPMSchedule.from_config(cfg)
  train_imgs, _ = datasets.load_arrays(cfg, 'train')
  eps_fn, _ = sampling.load_eps_fn(cfg, subdir, device)
  optimal = denoiser_lib.OptimalDenoiser(datasets.get_data_scaler(cfg)(train_imgs), schedule, device=device)
  model_imgs = _ddim_samples(eps_fn, cfg, schedule, device, a.mem_num_samples, a.mem_num_steps)
  optimal_imgs = _ddim_samples(optimal, cfg, schedule, device, a.mem_num_samples, a.mem_num_steps)
  scores = _scores(torch.from_numpy(model_imgs), torch.from_numpy(optimal_imgs), train_imgs, feature_net,
                   threshold)
  nn_imgs = train_imgs[torch.as_tensor(scores.pop('nn_index'))[:16]].numpy()
  sampling.save_grid(np.concatenate([model_imgs[:16], optimal_imgs[:16], nn_imgs]),
                    os.path.join(workdir, 'analysis', f'memorization_n{num_train}.png'), nrow=16)
  return dict(num_train=int(num_train), seconds=round(time.time() - start, 1),
              train_seconds=round(train_seconds, 1), **scores)


def memorization(config, workdir):
  """Memorization -> generalization against training-set size n; writes memorization.{md,csv,png,json}."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  device = dist_util.get_device(config)
  a = config.analysis
  feature_net = mem_lib.load_feature_net(a.feature_net, device=device, sscd_normalize=a.sscd_normalize)
  threshold = a.threshold if a.threshold >= 0 else mem_lib.default_threshold(a.feature_net)
  rows = []
  for n in a.mem_sizes:
    logging.info('memorization: n = %d', n)
    rows.append(_memorization_cell(config, workdir, n, feature_net, threshold, device))
    logging.info('n=%d: %s', n, rows[-1])
  header = ['num_train', 'gen_score', 'mem_score', 'knn_mem', 'rp_model_vs_optimal', 'optimal_mem_score',
            'train_seconds', 'seconds']
  io_util.write_csv(os.path.join(outdir, 'memorization.csv'), header, [[r[h] for h in header] for r in rows])
  table = (f'Feature net: {a.feature_net}, cosine threshold {threshold:.3f}; {a.mem_num_samples} DDIM samples '
           f'({a.mem_num_steps} steps) per n from fixed seeds; {a.mem_n_iters} training steps per n.\n\n'
           + io_util.markdown_table(header, [[r[h] for h in header] for r in rows]))
  io_util.write_text(os.path.join(outdir, 'memorization.md'), table)
  io_util.save_json(rows, os.path.join(outdir, 'memorization.json'))
  _plot_memorization(rows, os.path.join(outdir, 'memorization.png'))
  print(table)
  return rows


def _plot_memorization(rows, path):
  plt = io_util.pyplot()
  n = [r['num_train'] for r in rows]
  fig, ax = plt.subplots(figsize=(5, 3.4))
  ax.plot(n, [r['gen_score'] for r in rows], 'o-', label='generalization score (1 - mem)')
  ax.plot(n, [r['knn_mem'] for r in rows], 's--', label='kNN memorization (d1/d2 < 1/3)')
  ax.plot(n, [r['rp_model_vs_optimal'] for r in rows], '^-', label='RP: model vs optimal denoiser')
  ax.set(xscale='log', xlabel='training set size n', ylabel='score', ylim=(-0.02, 1.02))
  ax.legend(fontsize=7)
  io_util.save_figure(fig, path)


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
      raise InputError(f'{a.samples_file} has no "samples" array (keys: {f.files})')
    samples = torch.from_numpy(np.asarray(f['samples'], np.float32))
  train_imgs, _ = datasets.load_arrays(config, 'train')
  if tuple(samples.shape[1:]) != tuple(train_imgs.shape[1:]):
    raise InputError(f'samples {tuple(samples.shape)} do not match the {config.data.dataset} training images '
                     f'{tuple(train_imgs.shape)}: use the config the samples were drawn with')
  device = dist_util.get_device(config)
  feature_net = mem_lib.load_feature_net(a.feature_net, device=device, sscd_normalize=a.sscd_normalize)
  threshold = a.threshold if a.threshold >= 0 else mem_lib.default_threshold(a.feature_net)
  mem = mem_lib.memorization_score(feature_net(samples), feature_net(train_imgs), threshold)
  out = dict(samples_file=a.samples_file, num_samples=len(samples), num_train=len(train_imgs),
             feature_net=a.feature_net, threshold=float(threshold), mem_score=mem['mem'], gen_score=mem['gen'],
             knn_mem=mem_lib.knn_ratio_memorization(samples, train_imgs)['mem'])
  name = os.path.splitext(os.path.basename(a.samples_file))[0]
  io_util.save_json(out, os.path.join(wd.analysis_dir(workdir), f'mem_score_{name}.json'))
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
    bases = datasets.molrg_bases(d.num_channels * d.image_size ** 2, d.get('molrg_classes', 2),
                              d.get('molrg_rank', 7), d.get('molrg_seed', 0))
    return 'exact MoLRG denoiser', molrg.MoLRGDenoiser(bases, schedule)
  train_imgs, _ = datasets.load_arrays(config, 'train')
  data = datasets.get_data_scaler(config)(train_imgs)
  return 'optimal empirical denoiser', denoiser_lib.OptimalDenoiser(data, schedule, device=device)


def jacobian_rank(config, workdir):
  """Rank at 99% Frobenius energy of d x0_pred / d x_t along DDIM trajectories: jacobian_rank.{csv,png}."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  device = dist_util.get_device(config)
  a, schedule = config.analysis, sde_lib.DDPMSchedule.from_config(config)
  model, _ = sampling.load_ema_module(config, workdir, device)
  for p in model.parameters():
    p.requires_grad_(False)
  model_eps = lambda x, t: model(x, torch.full((x.shape[0],), float(t), device=x.device))
  label, exact = _exact_denoiser(config, schedule, device)
  plan = sampling.sampling_plan(config, schedule, 'ddim', a.jacobian_num_steps, 'normal', schedule.T - 1, 'uniform')
  plan = plan._replace(options={'eta': 0.0})
  with torch.no_grad():  # one batch holds every trajectory (model-space states at each grid time)
    _, traj = sampling.generate(model_eps, schedule, plan, a.jacobian_num_samples, a.jacobian_num_samples,
                                config.seed, device, datasets.get_data_inverse_scaler(config), progress=False,
                                return_trajectory=True)
  curves = {}
  for name, eps_fn in (('trained U-Net', model_eps), (label, exact)):
    curves[name] = jacobian_lib.rank_curve(_x0_fn(eps_fn, schedule), [x.to(device) for x in traj['x']],
                                           traj['t'], schedule=schedule)
  rows = [dict(model=name, **r) for name, curve in curves.items() for r in curve]
  header = ['model', 't', 'alpha_bar', 'noise_level', 'rank', 'rank_over_D']
  io_util.write_csv(os.path.join(outdir, 'jacobian_rank.csv'), header, [[r[h] for h in header] for r in rows])
  jacobian_lib.plot_rank_curves(curves, os.path.join(outdir, 'jacobian_rank.png'))
  logging.info('wrote %s', os.path.join(outdir, 'jacobian_rank.png'))
  return curves
