"""FID reference statistics and the Table-1 sweep of the SSB paper (--mode=fid_stats, --mode=eval, --mode=all).

The sweep's cells are (method, n, start) with start = vanilla (N(0, I) at T-1) or gls at each t_c of
config.eval.t_starts (only where n <= t_c + 1). Every cell uses the same per-sample seeds, so vanilla and
gls start from the same standard-normal draw z (gls maps z through its covariance factor).
A finished cell is reused only when everything that changes its result is the same (its ``signature``: the
checkpoint step, sample count, seed, sampler options, late-start fit and reference statistics); otherwise it
is recomputed. Outputs in <workdir>/eval/: results.json (every cell; the resume record), floor.json (real held-out
images scored as a cell: the table's floor), results.md /
results.csv (Table-1 shape, best t_c per cell), results_gain.md (vanilla against the best gls, with the KID gap),
results_auto.{md,csv} (the auto t_c against the sweep, when eval.t_starts holds 'auto'), results_all.csv,
fid_vs_tc_{method}.png, grid_{method}_n{n}.png, samples/{cell}.npz.
"""
import dataclasses
import logging
import os
import time
from typing import Callable, Optional

import numpy as np
import torch

import datasets
import dist_util
import evaluation
import io_util
import run_lib
import sampling
from models import checkpoints
from samplers import grids
import late_start
import sample_lib
import sde_lib
import workdir as wd
from experiments import tables
from models import diffusers_io
from models import utils as mutils
from moments import RunningMoments



KID_ROWS = 5000  # feature rows a statistics file keeps for KID: the first ones of the split (as feature_moments)


def fid_stats(config, workdir=None):
  """--mode=fid_stats: Inception statistics of the whole training split (one pass, no flips), plus the
  late-start moments when they are not there yet.

  Under torchrun every rank runs it: rank r takes every W-th batch, the moment sums are reduced and the kept
  feature rows gathered in data order, so the file equals the one-process file to float64 rounding.
  """
  dist_util.init()
  device, d, bs = dist_util.get_device(config), config.data, config.eval.batch_size
  path = wd.fid_stats_path(config)
  wd.ensure_stats_dir_writable(config)
  inception = evaluation.load_inception(config.eval.inception_path, device,
                                         backend=config.eval.fid_backend)
  inverse = datasets.get_data_inverse_scaler(config)
  starts = dist_util.shard(range(0, len(datasets.get_dataset(config, 'train')), bs))  # as model_batches shards
  batches = datasets.model_batches(config, batch_size=bs, desc='fid_stats', progress=dist_util.is_main(), shard=True)
  acc, kept, rows = RunningMoments(evaluation.FEATURE_DIM), [np.zeros((0, evaluation.FEATURE_DIM))], []
  for start, x in zip(starts, batches):
    feats = evaluation.inception_features(inverse(x), inception, device=device)
    acc.update(feats)
    keep = max(0, min(len(feats), KID_ROWS - start))
    kept.append(feats[:keep])
    rows.extend(range(start, start + keep))
  acc.reduce()
  feats = dist_util.gather_ordered(np.concatenate(kept), rows, min(KID_ROWS, acc.n))
  if dist_util.is_main():
    evaluation.save_stats(path, acc.mean(), acc.cov(), acc.n, d.dataset, d.image_size, evaluation.NETWORK,
                          feats=feats, weights_hash=evaluation.inception_weights_hash(config.eval.inception_path),
                          fingerprint=datasets.data_fingerprint(config, 'train'))
    logging.info('wrote FID statistics of %d training images to %s', acc.n, path)
  if not os.path.exists(wd.moments_path(config)):  # every rank decides alike: rank 0 writes after the reduce
    sample_lib.gauss_stats(config)
  dist_util.barrier()
  return path


def sweep_cells(config):
  """The cells of the sweep, as sampling.RunSpecs (``spec.key`` names each): every grid x method x n (restricted to
  the 'method:n' pairs of eval.cells when it is not empty) x {vanilla, gls at each t_c}. The edge of the sweep: the
  only place its runs are read from the config."""
  T, e = config.model.num_scales, config.eval
  cells = []
  only = {tuple(c.split(':')) for c in e.cells}  # eval.cells restricts the methods x num_steps product
  for grid in e.grids:
    for method in e.methods:
      for n in e.num_steps:
        if only and (method, str(n)) not in only:
          continue
        starts = [('normal', T - 1)] + [('gls', t) for t in e.t_starts if t == 'auto' or n <= t + 1]
        cells += [sampling.RunSpec.from_config(config.sampling, method=method, num_steps=n, init=init,
                                               t_start=t_start, grid=grid) for init, t_start in starts]
  return cells


def cell_signature(config, cell, ctx):
  """Everything besides the cell key (``cell``: a RunSpec) that changes a cell's numbers; a stored cell with another
  one is stale."""
  s = config.sampling
  sig = dict(checkpoint_step=int(ctx.step), num_samples=int(config.eval.num_samples), seed=int(config.seed),
             stats_sha256=ctx.stats_sha256, options=cell.kwargs, kid_subset_size=int(config.eval.kid_subset_size))
  if ctx.weights_sha256:
    sig.update(weights_sha256=ctx.weights_sha256)
  if ctx.precision != 'fp32':  # fp32 cells written before the precision was recorded stay valid
    sig.update(precision=ctx.precision)
  if cell.init == 'gls':
    sig.update(gls_fit=s.gls_fit, gls_rank=int(s.gls_rank), gls_dtype=s.gls_dtype,
               moments_sha256=ctx.moments_sha256)
  if cell.grid in grids.DATA_GRIDS:  # its timesteps come from the data moments
    sig.update(moments_sha256=ctx.moments_sha256)
  if cell.t_start == 'auto':
    sig.update(auto_tc_samples=int(s.auto_tc_samples), auto_tc_stride=int(s.auto_tc_stride))
  return sig


def run_cell(config, cell, ctx):
  """Samples one cell (a RunSpec), saves its samples and returns its FID/KID record against the reference stats."""
  t0 = time.time()
  schedule, e = ctx.schedule, config.eval
  spec, auto = cell, {}
  if cell.t_start == 'auto':  # the rule's choice for this (sampler, n); its cost is part of the cell's seconds
    auto = late_start.choose_t_start(config, schedule, ctx.eps_fn, cell, moments=ctx.moments, cache=ctx.initialisers,
                                     device=ctx.device)
    spec = cell.replace(t_start=auto['t_start'])
  spec = late_start.resolve_grid(config, schedule, spec, ctx.moments, ctx.initialisers)  # gaussian_opt: from the data
  plan = sampling.sampling_plan(spec, schedule, ctx.make_initialiser)
  images = sampling.generate(ctx.eps_fn, schedule, plan, e.num_samples, e.batch_size, config.seed, ctx.device,
                             ctx.inverse, desc=cell.key)
  if not dist_util.is_main():  # under torchrun the ranks share the sampling; rank 0 scores and writes
    return None
  path = os.path.join(ctx.outdir, 'samples', cell.key + '.npz')
  io_util.save_npz(path, samples=images, timesteps=np.asarray(plan.timesteps))
  scores = evaluation.score_images(images, ctx.inception, ctx.ref, config, ctx.device)
  extra = dict(t_start=spec.t_start, tc_rule='auto', auto_tc=auto) if auto else {}
  return dict(cell.record(), key=cell.key, nfe=plan.nfe, timesteps=list(plan.timesteps),
              signature=cell_signature(config, cell, ctx), **extra, checkpoint_step=int(ctx.step),
              precision=ctx.precision, samples=os.path.relpath(path, ctx.outdir), seconds=round(time.time() - t0, 1),
              **scores)


def floor_record(config, ctx):
  """floor_scores with the signature that says when they must be recomputed (eval/floor.json)."""
  return dict(evaluation.floor_scores(config, ctx.inception, ctx.ref, ctx.device), signature=floor_signature(config, ctx))


def floor_signature(config, ctx):
  return dict(stats_sha256=ctx.stats_sha256, num_samples=int(config.eval.num_samples),
              kid_subset_size=int(config.eval.kid_subset_size),
              eval_fingerprint=datasets.data_fingerprint(config, 'eval'))


@dataclasses.dataclass(frozen=True)
class SweepContext:
  """Everything the cells of one sweep share (built once by sweep_context)."""
  device: torch.device
  eps_fn: Callable       # the EMA model as eps(x, t)
  step: int              # its checkpoint's training step
  schedule: sde_lib.DDPMSchedule
  inverse: Callable      # model space -> [0, 1]
  inception: object      # the FID network (None on ranks other than 0, which do not score)
  ref: dict              # the training statistics (evaluation.load_stats)
  moments: Optional[dict]  # the late-start data moments (exact gls fit), or None
  initialisers: dict     # cache: one eigendecomposition serves every t_c
  make_initialiser: Callable  # (t_start, init) -> initialiser (late_start.initialiser_factory over the two above)
  outdir: str            # WORKDIR/eval
  stats_sha256: str      # of the statistics file, part of every cell's signature
  moments_sha256: str    # of the moments file ('' when there is none)
  weights_sha256: str    # of a diffusers folder's weights file (model.pretrained), '' for the workdir's checkpoints
  precision: str         # the U-Net's precision in sampling, resolved on this device: 'fp32' or 'bf16'


def sweep_context(config, workdir, needs_gls=True, needs_data_grid=False):
  """The SweepContext of ``workdir``: model, reference stats, Inception, late-start moments (for the exact gls fit
  or a grid computed from the data), the output folder."""
  device = dist_util.get_device(config)
  ref = evaluation.load_reference(config)  # missing / mismatched statistics: a clear error before any sampling
  moments = (late_start.late_start_moments(config)
             if needs_gls and config.sampling.gls_fit == 'exact' or needs_data_grid else None)
  eps_fn, step = checkpoints.load_eps_fn(config, workdir, device)
  moments_file = wd.moments_path(config)
  inception = (evaluation.load_inception(config.eval.inception_path, device, backend=config.eval.fid_backend)
               if dist_util.is_main() else None)
  schedule, cache = sde_lib.DDPMSchedule.from_config(config), {}
  return SweepContext(device=device, eps_fn=eps_fn, step=step, schedule=schedule,
                      inverse=datasets.get_data_inverse_scaler(config), inception=inception, ref=ref, moments=moments,
                      initialisers=cache, make_initialiser=late_start.initialiser_factory(config, schedule, moments, cache),
                      outdir=wd.eval_dir(workdir), stats_sha256=io_util.file_sha256(wd.fid_stats_path(config)),
                      moments_sha256=io_util.file_sha256(moments_file) if os.path.exists(moments_file) else '',
                      weights_sha256=_pretrained_sha256(config),
                      precision=mutils.resolve_precision(device, config.eval.precision))


def _pretrained_sha256(config):
  """sha256 of model.pretrained's weights file: cells sampled from another folder's weights are stale."""
  if not config.model.get('pretrained'):
    return ''
  return io_util.file_sha256(diffusers_io.weights_file(config.model.pretrained))


def evaluate(config, workdir):
  """--mode=eval: runs every cell not yet in eval/results.json with the same signature, then writes the tables,
  plots and grids. Returns {key: record}."""
  dist_util.init()
  cells = sweep_cells(config)
  schedule = sde_lib.DDPMSchedule.from_config(config)
  for cell in cells:  # bad grids and starts fail before any sampling (gls is checked without fitting it)
    sampling.check_early(cell, schedule)
  needs_gls = any(c.init == 'gls' for c in cells)
  if needs_gls:
    late_start.check_moments_file(config, 'gls')
  outdir = wd.eval_dir(workdir)
  if dist_util.is_main():
    wd.ensure_writable(outdir, 'the eval output folder')
  ctx = sweep_context(config, workdir, needs_gls=needs_gls,
                      needs_data_grid=any(c.grid in grids.DATA_GRIDS for c in cells))
  results_path = os.path.join(outdir, 'results.json')
  results = io_util.load_json(results_path, {})  # damaged: set aside with a warning, every cell recomputed
  todo = [c for c in cells if results.get(c.key, {}).get('signature') != cell_signature(config, c, ctx)
          or not samples_intact(results[c.key], ctx.outdir)]
  stale = [c.key for c in todo if c.key in results]
  for c in cells:  # a reused cell of an older version: its signature matched, so it was sampled in ctx.precision
    results.get(c.key, {}).setdefault('precision', ctx.precision)
  logging.info('eval: %d cells, %d done, %d to run (%d stale: %s), %d samples each, checkpoint step %d', len(cells),
               len(cells) - len(todo), len(todo), len(stale), stale[:4], config.eval.num_samples, ctx.step)
  for i, cell in enumerate(todo):
    record = run_cell(config, cell, ctx)
    if not dist_util.is_main():
      continue
    results[cell.key] = record
    io_util.save_json(results, results_path)  # after every cell, so a killed sweep resumes here
    logging.info('[%d/%d] %s: FID %.2f KID %.4f +- %.4f (%.0fs)', i + 1, len(todo), cell.key, record['fid'],
                 record['kid'], record['kid_std'], record['seconds'])
  if not dist_util.is_main():
    return None
  floor_path = os.path.join(outdir, 'floor.json')  # beside results.json, whose values are all cells
  floor = io_util.load_json(floor_path, {})
  if floor.get('signature') != floor_signature(config, ctx):
    floor = floor_record(config, ctx)
    io_util.save_json(floor, floor_path)
    logging.info('floor (real held-out images): FID %.2f KID %.4f +- %.4f over %d images', floor['fid'], floor['kid'],
                 floor['kid_std'], floor['num_samples'])
  done = [results[c.key] for c in cells]
  table = (tables.write_tables(config, done, outdir, floor=floor) + tables.write_gain_table(config, done, outdir)
           + tables.write_auto_table(config, done, outdir))
  tables.write_all_cells(checkpoint_cells(results, ctx), [c.key for c in cells], outdir)
  tables.plot_fid_vs_tc(config, done, outdir)
  tables.save_comparison_grids(done, outdir)
  print(table)
  return results


def samples_intact(record, outdir):
  """True when a finished cell's samples file loads and holds its num_samples images; a damaged file is set aside
  (io_util.set_aside) so that the cell is recomputed instead of trusted."""
  path = os.path.join(outdir, record.get('samples', ''))
  if not os.path.isfile(path):
    return False
  try:
    with np.load(path) as f:
      count = len(f['samples'])
  except io_util.NPZ_ERRORS as err:
    return io_util.set_aside(path, f'{type(err).__name__}: {err}', False)
  if count != record.get('num_samples'):
    return io_util.set_aside(path, f'{count} samples, the cell has {record.get("num_samples")}', False)
  return True


def checkpoint_cells(results, ctx):
  """Every finished cell of results.json sampled from the model this sweep loaded (same checkpoint step, same
  diffusers weights), whether or not it is in the current plan: results_all.csv keeps them all."""
  return [r for r in results.values() if r.get('checkpoint_step') == ctx.step
          and r.get('signature', {}).get('weights_sha256', '') == ctx.weights_sha256]


def main_job(config, workdir):
  """--mode=all, the main job: train (not with model.pretrained), then fid_stats (if missing), then the eval sweep;
  prints the table.
  The folders the later stages write in are checked before training."""
  if dist_util.is_main():
    wd.ensure_writable(wd.eval_dir(workdir), 'the eval output folder')
    if not os.path.exists(wd.fid_stats_path(config)):
      wd.ensure_stats_dir_writable(config)
  if config.model.get('pretrained'):
    logging.info('model.pretrained=%s: no training, the diffusers weights are sampled', config.model.pretrained)
  else:
    run_lib.train(config, workdir)
  if not os.path.exists(wd.fid_stats_path(config)):  # under torchrun every rank: the feature pass is sharded
    fid_stats(config, workdir)
  return evaluate(config, workdir)
