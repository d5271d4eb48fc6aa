"""Reproducibility between independently trained diffusion models (Zhang et al., "The Emergence of
Reproducibility and Consistency in Diffusion Models", ICML 2024: Figure 2, RP against n; Figure 6, RP between
model settings). Formulas in docs/gen.md.

Two models (or two samplers) are compared by sampling both with a deterministic sampler (DDIM eta 0, or PNDM)
from the SAME per-sample seeds (sampling.generate seeds sample i with rng.sample_seed(config.seed, i), whatever
seed the model was trained with), then RP = fraction of index-matched pairs whose feature similarity exceeds
the threshold (analysis.memorization.reproducibility_score).

* memorization_cell: one n of --mode=memorization: model A (model.nf, config.seed) and model B
  (analysis.rp_model_b_nf, analysis.rp_model_b_seed) trained on the first n images, plus the optimal denoiser
  of those n images; per-n results cached in analysis/memorization_n{n}.json under a signature.
* rp_table: --mode=rp_table, RP between full-data models that differ in width, seed or U-Net variant, and
  between DDIM and F-PNDM on one model; writes analysis/rp_table.{md,csv,json}.
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
import late_start
import sampling
from models import checkpoints
import sde_lib
import workdir as wd
from analysis import denoiser as denoiser_lib
from analysis import diversity as diversity_lib
from analysis import memorization as mem_lib

CALIBRATE_COMMAND = 'python benchmarks/calibrate_threshold.py'
RP_LEVEL = 0.95  # confidence level of the Wilson intervals reported beside each RP


# ---------------------------------------------------------------------------------------- shared pieces
def model_b_seed(config):
  """Training seed of model B: analysis.rp_model_b_seed, or config.seed + 1 when it is negative."""
  seed = int(config.analysis.rp_model_b_seed)
  return config.seed + 1 if seed < 0 else seed


def mem_n_iters(config, num_train):
  """Training steps of the two models at training-set size num_train: its entry of
  analysis.mem_n_iters_per_size (aligned with analysis.mem_sizes), else analysis.mem_n_iters."""
  a = config.analysis
  per_size = tuple(a.get('mem_n_iters_per_size', ()))
  if per_size and num_train in tuple(a.mem_sizes):
    return int(per_size[tuple(a.mem_sizes).index(num_train)])
  return int(a.mem_n_iters)


def rp_table_n_iters(config):
  """Training steps of each --mode=rp_table full-data model: analysis.rp_table_n_iters, or mem_n_iters when 0."""
  a = config.analysis
  return int(a.rp_table_n_iters) if a.rp_table_n_iters > 0 else int(a.mem_n_iters)


def rp_interval(rp, num_pairs):
  """Wilson interval (RP_LEVEL) of an RP score, a fraction of num_pairs independent sample pairs. Returns
  (low, high) floats in [0, 1]."""
  low, high = diversity_lib.wilson_interval(round(rp * num_pairs), num_pairs, level=RP_LEVEL)
  return float(low), float(high)


def sub_config(config, num_train, n_iters, nf=None, seed=None, variant=None):
  """The config of one sub-run: the same model (optionally another nf / seed / U-Net variant) trained for
  n_iters steps on the first num_train images (None = the config's training split as it is)."""
  cfg = copy.deepcopy(config)
  if num_train is not None:
    cfg.data.num_train = int(num_train)
    cfg.training.batch_size = min(config.training.batch_size, int(num_train))
  cfg.model.nf = int(config.model.nf if nf is None else nf)
  cfg.seed = int(config.seed if seed is None else seed)
  cfg.model.variant = config.model.variant if variant is None else variant
  cfg.training.n_iters = int(n_iters)
  cfg.training.snapshot_freq = int(n_iters)
  cfg.training.snapshot_freq_for_preemption = max(1, int(n_iters) // 4)
  cfg.training.eval_freq = max(1, int(n_iters) // 4)
  return cfg


def threshold_of(config):
  a = config.analysis
  return float(a.threshold if a.threshold >= 0 else mem_lib.default_threshold(a.feature_net))


def feature_note(config, threshold):
  """One sentence naming the feature net and where its similarity threshold comes from (for the md tables)."""
  a, name = config.analysis, config.analysis.feature_net
  if name == 'pixels':
    net = ("'pixels': flattened pixels minus each image's own mean, L2-normalised (similarity = pixel Pearson "
           "correlation), a weight-free stand-in for the papers' SSCD")
  elif name == 'inception':
    net = "'inception': FID Inception pool3 features, L2-normalised (cosine)"
  else:
    net = (f'SSCD ({name}; Pizzi et al., CVPR 2022), '
           + ('L2-normalised outputs (cosine)' if a.sscd_normalize else 'raw dot product of its outputs'))
  if a.threshold >= 0:
    src = 'set by analysis.threshold'
  elif name == 'pixels':
    src = (f"the 'pixels' default, calibrated on digits: noisy training copies against held-out digits; "
           f'reproduce with `{CALIBRATE_COMMAND}`')
  else:
    src = "the papers' SSCD value"
  return f'Feature net {net}; similarity threshold {threshold:.3f} ({src}).'


def deterministic_samples(eps_fn, config, schedule, device, num_samples, num_steps, method='ddim'):
  """DDIM (eta 0) or F-PNDM samples (N, C, H, W) in [0, 1] on DDIM's uniform grid below T-1, from the per-sample
  seeds 0..N-1 of config.seed: two calls with the same config.seed start from the same noise."""
  options = {'eta': 0.0} if method == 'ddim' else {'variant': 'f-pndm'}
  spec = sampling.RunSpec(method, num_steps, schedule.T - 1, 'normal', 'uniform', options)
  plan = sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))
  return sampling.generate(eps_fn, schedule, plan, num_samples, config.sampling.batch_size, config.seed, device,
                           datasets.get_data_inverse_scaler(config), progress=False)


def _jsonable(obj):
  return json.loads(json.dumps(obj))


def cached_samples(path, signature, make):
  """Samples saved at ``path`` (npz) under ``signature`` (a JSON-able dict); made with make() and saved when the
  file is missing or was written under another signature."""
  signature = json.dumps(_jsonable(signature), sort_keys=True)
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        if 'signature' in f.files and str(f['signature']) == signature:
          return f['samples']
    except io_util.NPZ_ERRORS as err:  # a torn write: sample again
      logging.warning('resampling: %s does not load (%s)', path, err)
  images = make()
  io_util.save_npz(path, samples=images, signature=np.asarray(signature))
  return images


def _sample_scores(imgs, train_imgs, train_feats, feature_net, threshold):
  """(feats, scores) of samples (N, C, H, W) in [0, 1]: generalization / memorization against the training
  features, and the kNN-ratio memorization on pixels; all scores in [0, 1]."""
  feats = feature_net(torch.from_numpy(imgs))
  mem = mem_lib.memorization_score(feats, train_feats, threshold)
  knn = mem_lib.knn_ratio_memorization(torch.from_numpy(imgs), train_imgs)
  return feats, dict(gen_score=float(mem['gen']), mem_score=float(mem['mem']), knn_mem=float(knn['mem']),
                     nn_index=mem['nn_index'])


# ---------------------------------------------------------------------------------------- memorization, one n
def _train_pair(config, workdir, num_train):
  """Trains (or resumes) models A and B on the first n images: {'a'|'b': (config, run folder, seconds)}."""
  a, n_iters = config.analysis, mem_n_iters(config, num_train)
  runs = {'a': (sub_config(config, num_train, n_iters), wd.memorization_dir(workdir, num_train)),
          'b': (sub_config(config, num_train, n_iters, nf=a.rp_model_b_nf, seed=model_b_seed(config)),
                wd.memorization_dir(workdir, num_train, tag='_b'))}
  out = {}
  for key, (cfg, folder) in runs.items():
    start = time.time()
    run_lib.train(cfg, folder)
    out[key] = (cfg, folder, time.time() - start)
  return out


def memorization_cell(config, workdir, num_train, feature_net, threshold, device):
  """One n of --mode=memorization: train A and B, sample A, B and the optimal denoiser from the same seeds,
  score them. Returns the row (scores in [0, 1]); reuses analysis/memorization_n{n}.json when its signature
  (checkpoint steps, models, samples, seed, feature net, threshold) is unchanged."""
  a, start = config.analysis, time.time()
  runs = _train_pair(config, workdir, num_train)
  eps = {k: checkpoints.load_eps_fn(cfg, folder, device) for k, (cfg, folder, _) in runs.items()}
  signature = _jsonable(dict(
      steps={k: step for k, (_, step) in eps.items()}, nf={k: r[0].model.nf for k, r in runs.items()},
      train_seed={k: r[0].seed for k, r in runs.items()}, num_samples=a.mem_num_samples,
      num_steps=a.mem_num_steps, seed=config.seed, feature_net=a.feature_net, sscd_normalize=a.sscd_normalize,
      threshold=threshold))
  result_path = os.path.join(wd.analysis_dir(workdir), f'memorization_n{num_train}.json')
  cached = io_util.load_json(result_path, {})  # a damaged cache is set aside and recomputed
  if isinstance(cached, dict) and cached.get('signature') == signature:
    logging.info('n=%d: unchanged since %s, reusing its scores', num_train, result_path)
    return cached['row']
  cfg = runs['a'][0]
  schedule = sde_lib.DDPMSchedule.from_config(cfg)
  train_imgs, _ = datasets.load_arrays(cfg, 'train')
  optimal = denoiser_lib.OptimalDenoiser(datasets.get_data_scaler(cfg)(train_imgs), schedule, device=device)
  samples = {k: deterministic_samples(fn, config, schedule, device, a.mem_num_samples, a.mem_num_steps)
             for k, fn in (('a', eps['a'][0]), ('b', eps['b'][0]), ('optimal', optimal))}
  train_feats = feature_net(train_imgs)
  feats, scores = {}, {}
  for key, imgs in samples.items():
    feats[key], scores[key] = _sample_scores(imgs, train_imgs, train_feats, feature_net, threshold)
  rp = lambda x, y: float(mem_lib.reproducibility_score(feats[x], feats[y], threshold))
  nn_imgs = train_imgs[torch.as_tensor(scores['a']['nn_index'])[:16]].numpy()
  sampling.save_grid(np.concatenate([samples['a'][:16], samples['b'][:16], samples['optimal'][:16], nn_imgs]),
                     os.path.join(wd.analysis_dir(workdir), f'memorization_n{num_train}.png'), nrow=16)
  sa, sb = scores['a'], scores['b']
  row = dict(num_train=int(num_train), n_iters=runs['a'][0].training.n_iters, gen_score=sa['gen_score'],
             mem_score=sa['mem_score'], knn_mem=sa['knn_mem'],
             rp_model_vs_optimal=rp('a', 'optimal'), optimal_mem_score=scores['optimal']['mem_score'],
             rp_a_vs_b=rp('a', 'b'), gen_score_b=sb['gen_score'], mem_score_b=sb['mem_score'],
             knn_mem_b=sb['knn_mem'], rp_model_b_vs_optimal=rp('b', 'optimal'),
             train_seconds=round(runs['a'][2], 1), train_seconds_b=round(runs['b'][2], 1),
             seconds=round(time.time() - start, 1))
  io_util.save_json(dict(signature=signature, row=row), result_path)
  return row


# ---------------------------------------------------------------------------------------- rp_table
def _settings(config):
  """The compared settings: {comparison: ((model key, method), (model key, method))} and {model key: dict}."""
  a, m = config.analysis, config.model
  base = dict(nf=int(m.nf), seed=int(config.seed), variant=m.variant)
  other_variant = 'score_sde' if m.variant == 'ssb' else 'ssb'
  models = {'base': base, 'width': dict(base, nf=int(a.rp_model_b_nf)),
            'seed': dict(base, seed=model_b_seed(config)), 'variant': dict(base, variant=other_variant)}
  pairs = {'width': (('base', 'ddim'), ('width', 'ddim')), 'seed': (('base', 'ddim'), ('seed', 'ddim')),
           'variant': (('base', 'ddim'), ('variant', 'ddim')), 'sampler': (('base', 'ddim'), ('base', 'pndm'))}
  unknown = sorted(set(a.rp_table_pairs) - set(pairs))
  if unknown:
    from errors import InputError
    raise InputError(f'analysis.rp_table_pairs has unknown entries {unknown}; choose from {sorted(pairs)}')
  return {k: pairs[k] for k in a.rp_table_pairs}, models


def _model_name(spec):
  return f"{spec['variant']}_nf{spec['nf']}_seed{spec['seed']}"


def _rp_table_samples(config, workdir, pairs, models, device):
  """Trains the needed full-data models under workdir/rp_table/{name}/ and samples each (model, method) once,
  cached by signature. Returns {(model key, method): images (N, C, H, W) in [0, 1]}, {model key: name}."""
  a = config.analysis
  n_iters = rp_table_n_iters(config)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  needed = sorted({side for pair in pairs.values() for side in pair})
  names, eps, samples = {}, {}, {}
  for key, method in needed:
    spec = models[key]
    names[key] = _model_name(spec)
    folder = os.path.join(workdir, 'rp_table', names[key])
    if key not in eps:
      cfg = sub_config(config, None, n_iters, nf=spec['nf'], seed=spec['seed'], variant=spec['variant'])
      run_lib.train(cfg, folder)
      eps[key] = checkpoints.load_eps_fn(cfg, folder, device)
    eps_fn, step = eps[key]
    signature = dict(step=step, method=method, num_samples=a.mem_num_samples, num_steps=a.mem_num_steps,
                     seed=config.seed)
    samples[key, method] = cached_samples(
        os.path.join(folder, f'rp_samples_{method}{a.mem_num_steps}.npz'), signature,
        lambda: deterministic_samples(eps_fn, config, schedule, device, a.mem_num_samples, a.mem_num_steps,
                                      method))
  return samples, names


def rp_table(config, workdir):
  """--mode=rp_table: RP between full-data models of different width, seed and U-Net variant, and between DDIM
  and F-PNDM on one model, all from the same noise (the paper's Figure 6). Writes analysis/rp_table.{md,csv,json}
  and returns the rows (rp, gen scores in [0, 1])."""
  outdir = wd.ensure_writable(wd.analysis_dir(workdir), 'the analysis output folder')
  device, a = dist_util.get_device(config), config.analysis
  pairs, models = _settings(config)
  threshold = threshold_of(config)
  feature_net = mem_lib.load_feature_net(a.feature_net, device=device, sscd_normalize=a.sscd_normalize)
  samples, names = _rp_table_samples(config, workdir, pairs, models, device)
  train_imgs, _ = datasets.load_arrays(config, 'train')
  train_feats = feature_net(train_imgs)
  feats = {k: feature_net(torch.from_numpy(v)) for k, v in samples.items()}
  gen = {k: 1.0 - mem_lib.memorization_score(f, train_feats, threshold)['mem'] for k, f in feats.items()}
  label = lambda method: f"{'ddim' if method == 'ddim' else 'f-pndm'} {a.mem_num_steps}"
  rows = [dict(comparison=comp, model_a=names[ka], sampler_a=label(ma), model_b=names[kb], sampler_b=label(mb),
               rp=float(mem_lib.reproducibility_score(feats[ka, ma], feats[kb, mb], threshold)),
               gen_score_a=float(gen[ka, ma]), gen_score_b=float(gen[kb, mb]))
          for comp, ((ka, ma), (kb, mb)) in pairs.items()]
  for r in rows:
    r['rp_low'], r['rp_high'] = rp_interval(r['rp'], a.mem_num_samples)
  header = ['comparison', 'model_a', 'sampler_a', 'model_b', 'sampler_b', 'rp', 'rp_low', 'rp_high', 'gen_score_a',
            'gen_score_b']
  table_rows = [[r[h] for h in header] for r in rows]
  io_util.write_csv(os.path.join(outdir, 'rp_table.csv'), header, table_rows)
  n_iters = rp_table_n_iters(config)
  note = (f'RP between full-data {config.data.dataset} models ({len(train_imgs)} training images, {n_iters} '
          f'training steps each; models named variant_nf{{width}}_seed{{training seed}}), '
          f'{a.mem_num_samples} samples per side from the same per-sample seeds (seed {config.seed}), '
          f'on the DDIM uniform grid below t = T-1, DDIM eta 0; rp_low, rp_high: {RP_LEVEL:.0%} Wilson interval. '
          f'{feature_note(config, threshold)}\n\n')
  io_util.write_text(os.path.join(outdir, 'rp_table.md'), note + io_util.markdown_table(header, table_rows))
  io_util.save_json(dict(feature_net=a.feature_net, threshold=threshold, num_samples=a.mem_num_samples,
                         n_iters=n_iters, seed=config.seed, rows=rows), os.path.join(outdir, 'rp_table.json'))
  print(note + io_util.markdown_table(header, table_rows))
  return rows
