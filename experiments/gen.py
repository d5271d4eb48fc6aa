"""The GEN-paper experiments on trained models (docs/gen.md): --mode=memorization, --mode=rp_table,
--mode=mem_score and --mode=jacobian_rank.

Outputs go to <workdir>/analysis/.
* memorization: for n in ``analysis.mem_sizes`` trains two models on the first n training images, A (model.nf,
  config.seed) under <workdir>/memorization/n{n} and B (analysis.rp_model_b_nf, analysis.rp_model_b_seed) under
  memorization/n{n}_b, each resumable; samples both and the exact optimal denoiser of the n images with DDIM
  from the SAME per-sample seeds; reports RP(A, B), RP(each, optimal), the generalization score and the kNN-ratio
  memorization of each (Zhang et al., ICML 2024, Figure 2). A finished n is cached (analysis/memorization_n{n}.json).
* rp_table: RP between full-data models of different width, seed and U-Net variant, and between DDIM and F-PNDM
  (the paper's Figure 6); experiments/reproducibility.py.
* jacobian_rank: the effective rank of the x0-prediction's Jacobian along DDIM trajectories, for the trained
  model and for the exact denoiser (the MoLRG closed form, or the optimal empirical denoiser otherwise).
"""
import json
import logging
import os

import numpy as np
import torch

import datasets
import dist_util
import io_util
import late_start
import sampling
from models import checkpoints
import sde_lib
import workdir as wd
from analysis import denoiser as denoiser_lib
from analysis import jacobian as jacobian_lib
from analysis import memorization as mem_lib
from errors import InputError
from experiments import plots
from experiments import reproducibility as rp_lib
from samplers.trajectory import Trajectory


def memorization(config, workdir):
  """Memorization -> generalization against training-set size n, with RP between two independently trained
  models (Zhang et al., ICML 2024, Figure 2); writes memorization.{md,csv,png,json}. Returns the rows."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  device = dist_util.get_device(config)
  a = config.analysis
  feature_net = mem_lib.load_feature_net(a.feature_net, device=device, sscd_normalize=a.sscd_normalize)
  threshold = rp_lib.threshold_of(config)
  rows = []
  for n in a.mem_sizes:
    logging.info('memorization: n = %d', n)
    rows.append(rp_lib.memorization_cell(config, workdir, n, feature_net, threshold, device))
    logging.info('n=%d: %s', n, rows[-1])
  for r in rows:  # derived from the (cached) score, so older per-n caches stay valid
    r['rp_a_vs_b_low'], r['rp_a_vs_b_high'] = rp_lib.rp_interval(r['rp_a_vs_b'], a.mem_num_samples)
  header = ['num_train', 'n_iters', 'gen_score', 'mem_score', 'knn_mem', 'rp_model_vs_optimal', 'optimal_mem_score',
            'train_seconds', 'seconds', 'rp_a_vs_b', 'rp_a_vs_b_low', 'rp_a_vs_b_high', 'gen_score_b', 'mem_score_b',
            'knn_mem_b', 'rp_model_b_vs_optimal', 'train_seconds_b']
  io_util.write_csv(os.path.join(outdir, 'memorization.csv'), header, [[r[h] for h in header] for r in rows])
  table = (f'Model A: nf {config.model.nf}, training seed {config.seed}; model B: nf {a.rp_model_b_nf}, training '
           f'seed {rp_lib.model_b_seed(config)} ({config.model.variant} U-Net, n_iters training steps each '
           f'on the first n images). {a.mem_num_samples} DDIM samples (eta 0, {a.mem_num_steps} steps) per model '
           f'and per n from the same per-sample seeds (seed {config.seed}); columns without _b are model A; '
           f'rp_a_vs_b = RP(A, B), with its {rp_lib.RP_LEVEL:.0%} Wilson interval (_low, _high). '
           f'{rp_lib.feature_note(config, threshold)}\n\n'
           + io_util.markdown_table(header, [[r[h] for h in header] for r in rows]))
  io_util.write_text(os.path.join(outdir, 'memorization.md'), table)
  io_util.save_json(rows, os.path.join(outdir, 'memorization.json'))
  _plot_memorization(rows, os.path.join(outdir, 'memorization.png'))
  print(table)
  return rows


def _plot_memorization(rows, path):
  """RP(A, B) and the generalization score against n (the paper's Figure 2), plus RP of each model vs the
  optimal denoiser."""
  plt = io_util.pyplot()
  n = [r['num_train'] for r in rows]
  fig, ax = plt.subplots(figsize=(5.4, 3.6))
  rp = np.array([r['rp_a_vs_b'] for r in rows])
  err = [rp - [r['rp_a_vs_b_low'] for r in rows], [r['rp_a_vs_b_high'] for r in rows] - rp]
  ax.errorbar(n, rp, yerr=err, fmt='o-', color='C0', lw=2, capsize=3,
              label=f'RP: model A vs model B ({rp_lib.RP_LEVEL:.0%} CI)')
  ax.plot(n, [r['gen_score'] for r in rows], 's-', color='C1', label='generalization score, A')
  ax.plot(n, [r['gen_score_b'] for r in rows], 's--', color='C1', alpha=0.6, label='generalization score, B')
  ax.plot(n, [r['rp_model_vs_optimal'] for r in rows], '^:', color='C2', label='RP: A vs optimal denoiser')
  ax.plot(n, [r['rp_model_b_vs_optimal'] for r in rows], 'v:', color='C3', label='RP: B vs optimal denoiser')
  ax.set(xscale='log', xlabel='training set size n', ylabel='score', ylim=(-0.02, 1.02))
  handles, labels = ax.get_legend_handles_labels()  # matplotlib lists the error-bar curve last; RP(A, B) first
  ax.legend(handles[-1:] + handles[:-1], labels[-1:] + labels[:-1], fontsize=7)
  io_util.save_figure(fig, path)


def rp_table(config, workdir):
  """--mode=rp_table: RP between full-data models of different width, seed, U-Net variant, and between
  samplers (experiments/reproducibility.rp_table); writes analysis/rp_table.{md,csv,json}."""
  return rp_lib.rp_table(config, workdir)


def mem_score(config, workdir):
  """--mode=mem_score: memorization / generalization / kNN-ratio scores of any samples file
  (config.analysis.samples_file: npz with key 'samples', (N, C, H, W) in [0, 1]) against the config's training
  split. Writes analysis/mem_score_{file name}.json and prints it."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  a = config.analysis
  if not a.samples_file or not os.path.isfile(a.samples_file):
    raise FileNotFoundError(f'config.analysis.samples_file={a.samples_file!r} is not a file: pass an npz written by '
                            '--mode=sample or --mode=eval, e.g. --config.analysis.samples_file=DIR/samples/x.npz')
  samples = torch.from_numpy(np.asarray(_read_samples(a.samples_file), np.float32))
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
  io_util.save_json(out, os.path.join(outdir, f'mem_score_{name}.json'))
  print(json.dumps(out, indent=1))
  return out


_SAMPLES = ('"samples" must be a numeric array (N, C, H, W) in [0, 1], as --mode=sample and --mode=eval write: pass '
            'such an npz')


def _read_samples(path):
  """The "samples" array of an npz; InputError (one line naming the file) unless it is numeric (N, C, H, W) and
  finite in [0, 1] (a damaged file, or one from elsewhere, is never scored)."""
  samples = io_util.load_npz(path, ['samples'], _SAMPLES)['samples']
  if samples.dtype.kind not in 'uif' or samples.ndim != 4 or not len(samples):
    raise InputError(f'{path}: "samples" is {samples.dtype} of shape {samples.shape}; {_SAMPLES}')
  low, high = float(samples.min()), float(samples.max())
  if not (0.0 <= low and high <= 1.0):  # also NaN
    raise InputError(f'{path}: "samples" range from {low} to {high}; {_SAMPLES}')
  return samples


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
    return 'exact MoLRG denoiser', molrg.MoLRGDenoiser(datasets.molrg_config_bases(config), schedule)
  train_imgs, _ = datasets.load_arrays(config, 'train')
  data = datasets.get_data_scaler(config)(train_imgs)
  return 'optimal empirical denoiser', denoiser_lib.OptimalDenoiser(data, schedule, device=device)


def jacobian_rank(config, workdir):
  """Rank at 99% Frobenius energy of d x0_pred / d x_t along DDIM trajectories: jacobian_rank.{csv,png}."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  device = dist_util.get_device(config)
  a, schedule = config.analysis, sde_lib.DDPMSchedule.from_config(config)
  model, _ = checkpoints.load_ema_module(config, workdir, device)
  for p in model.parameters():
    p.requires_grad_(False)
  model_eps = lambda x, t: model(x, torch.full((x.shape[0],), float(t), device=x.device))
  label, exact = _exact_denoiser(config, schedule, device)
  spec = sampling.RunSpec('ddim', a.jacobian_num_steps, schedule.T - 1, 'normal', 'uniform', {'eta': 0.0})
  plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
  with torch.no_grad():  # one batch holds every trajectory (model-space states at each grid time)
    traj = Trajectory()
    sampling.generate(model_eps, schedule, plan, a.jacobian_num_samples, a.jacobian_num_samples, config.seed,
                      device, datasets.get_data_inverse_scaler(config), progress=False, callback=traj)
  curves = {}
  for name, eps_fn in (('trained U-Net', model_eps), (label, exact)):
    curves[name] = jacobian_lib.rank_curve(_x0_fn(eps_fn, schedule), [x.to(device) for x in traj['x']],
                                           traj['t'], schedule=schedule)
  rows = [dict(model=name, **r) for name, curve in curves.items() for r in curve]
  header = ['model', 't', 'alpha_bar', 'noise_level', 'rank', 'rank_over_D']
  io_util.write_csv(os.path.join(outdir, 'jacobian_rank.csv'), header, [[r[h] for h in header] for r in rows])
  plots.plot_rank_curves(curves, os.path.join(outdir, 'jacobian_rank.png'))
  logging.info('wrote %s', os.path.join(outdir, 'jacobian_rank.png'))
  return curves
