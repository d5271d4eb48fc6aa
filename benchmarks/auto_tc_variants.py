"""Variants of the auto t_c rule against a finished sweep: which t_c each would pick, and how that t_c scored.

  python benchmarks/auto_tc_variants.py --config configs/ddpm/digits.py --workdir workdirs/digits_auto \\
      [--num_steps 3,5,10] [--phis 0.001,0.003,0.01,0.03,0.1] [--samples 32] [--smoke]

The shipped rule (samplers/auto_tc.py) is the sum of two KL estimates: the late start's, from E||eps_theta -
eps_G||^2 on noised training images, and the sampler's, exact on the fitted Gaussian. KL is scale-free per
eigendirection; FID is not. The variants printed here change one thing each (choices only, nothing is sampled):
  * kl: the shipped rule (auto_tc.late_start_kl + auto_tc.solver_kl; the late start's KL summed per direction);
  * mse: the late start's rate from denoising errors, max(0, E||eps - eps_G||^2 - E||eps - eps_theta||^2), i.e.
    only where the network denoises better than the Gaussian (a network worse than the Gaussian at high noise then
    costs the late start nothing);
  * smooth(phi): both distributions compared after adding N(0, phi I) in data space (model units), which removes
    what a direction of variance << phi contributes: the sampler's KL exactly on the Gaussian, the late start's per
    eigendirection scaled by lam / (lam + phi) (the small-difference limit of a mean shift).
For every (sampler, n) of config.eval it prints the sweep's best t_c (by KID) from WORKDIR/eval/results.json and,
for each variant, the chosen t_c with its FID and KID gap to the best in standard errors ("?" where the sweep has no
cell at that t_c). --smoke: a 2-step tiny digits model in a temporary folder, choices only (a run check).
"""
import argparse
import json
import math
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import datasets  # noqa: E402
import rng  # noqa: E402
import run_lib  # noqa: E402
import sampling  # noqa: E402
from models import checkpoints  # noqa: E402
import late_start  # noqa: E402
import sde_lib  # noqa: E402
from configs.validation import load_config_file  # noqa: E402
import samplers  # noqa: E402
from samplers import auto_tc, get_sampler  # noqa: E402


def per_direction_gaps(config, schedule, eps_fn, fit, num_images):
  """{t: (gap (D,), mse_diff (D,))}: per eigendirection v, E (v.(eps_theta - eps_G))^2 and E (v.(eps - eps_G))^2 -
  E (v.(eps - eps_theta))^2 on num_images noised training images (auto_tc.eps_gap's images and noise, per
  direction; its gap is the sum of the first)."""
  _, _, vecs = auto_tc._fit(fit)
  x0 = next(iter(datasets.model_batches(config, batch_size=num_images, progress=False)))
  z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(rng.sample_seed(config.seed, 0)),
                  dtype=torch.float64)
  out = {}
  for t in auto_tc.candidates(config.model.num_scales, 1, config.sampling.auto_tc_stride):
    a = float(schedule.alpha_bar(t))
    x_t = (math.sqrt(a) * x0.double() + math.sqrt(1 - a) * z).float()
    e = eps_fn(x_t, float(t)).reshape(len(x0), -1).double() @ vecs
    g, zz = auto_tc.gaussian_eps(fit, schedule, x_t, t) @ vecs, z.reshape(len(x0), -1) @ vecs
    out[t] = (((e - g) ** 2).mean(0), ((zz - g) ** 2).mean(0) - ((zz - e) ** 2).mean(0))
  return out


def choices(config, schedule, eps_fn, method, n, fit, late, phis):
  """{variant: t_c} for one (sampler, n); late: {'gap': {t: (D,)}, 'mse': {t: (D,)}} cumulative per direction."""
  T, s = config.model.num_scales, config.sampling
  proxy = samplers.proxy(method)
  options = {} if proxy != method else samplers.options(method, s)
  sampler, lam = get_sampler(proxy), auto_tc._fit(fit)[1].clamp(min=auto_tc.noise_floor(schedule))
  totals = {'kl': {}, 'mse': {}, **{f'smooth({phi:g})': {} for phi in phis}}
  for t in auto_tc.candidates(T, n, s.auto_tc_stride):
    spec = sampling.RunSpec.from_config(s, method=proxy, num_steps=n, init='normal' if t == T - 1 else 'gls',
                                        t_start=t, options=options)
    grid = sampling.check_plan(spec, schedule).timesteps
    kl = auto_tc.solver_kl(sampler, options, schedule, fit, grid, t == T - 1)
    totals['kl'][t] = float(late['gap'][t].sum()) + kl
    totals['mse'][t] = float(late['mse'][t].sum()) + kl
    for phi in phis:
      totals[f'smooth({phi:g})'][t] = (float((late['gap'][t] * lam / (lam + phi)).sum())
                                       + auto_tc.solver_kl(sampler, options, schedule, fit, grid, t == T - 1, phi))
  return {k: auto_tc.choose(v) for k, v in totals.items()}


def sweep_cells(workdir, method, n):
  """{t_c: record} of the sweep's fixed-t_c gls cells for (method, n) in WORKDIR/eval/results.json ({} if none)."""
  path = os.path.join(workdir, 'eval', 'results.json')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    results = json.load(f)
  return {r['t_start']: r for r in results.values() if r['method'] == method and r['num_steps'] == n
          and r['init'] == 'gls' and r.get('tc_rule') != 'auto'}


@torch.no_grad()
def run(config, workdir, num_steps, phis, num_images):
  schedule = sde_lib.DDPMSchedule.from_config(config)
  eps_fn, step = checkpoints.load_eps_fn(config, workdir, 'cpu')
  fit = late_start.build_initialiser(config, schedule, config.model.num_scales - 1, 'gls', None, {})
  gaps = per_direction_gaps(config, schedule, eps_fn, fit, num_images)
  late = {'gap': auto_tc.late_start_kl(schedule, {t: g for t, (g, _) in gaps.items()}),
          'mse': auto_tc.late_start_kl(schedule, {t: d.sum().clamp(min=0) for t, (_, d) in gaps.items()})}
  print(f'{config.data.dataset}, checkpoint step {step}, {num_images} images; KID gap to the sweep\'s best in SE\n')
  names = None
  hits = {}
  for method in config.eval.methods:
    for n in num_steps:
      picked = choices(config, schedule, eps_fn, method, n, fit, late, phis)
      cells = sweep_cells(workdir, method, n)
      best = min(cells.values(), key=lambda r: r['kid']) if cells else None
      if names is None:
        names = list(picked)
        print('| sampler | n | sweep best | ' + ' | '.join(names) + ' |\n|' + '---|' * (3 + len(names)))
      row = []
      for name, t in picked.items():
        r = cells.get(t)
        gap = None if r is None else (r['kid'] - best['kid']) / math.hypot(r['kid_std'], best['kid_std'])
        hits.setdefault(name, []).append(gap)
        row.append(f'{t}: ?' if r is None else f"{t}: {r['fid']:.2f} ({gap:+.1f})")
      best_txt = f"{best['t_start']}: {best['fid']:.2f}" if best else '-'
      print(f'| {method} | {n} | {best_txt} | ' + ' | '.join(row) + ' |', flush=True)
  print('\nwithin 2 SE / scored / cells: ' + ', '.join(
      f'{k} {sum(g is not None and g <= 2 for g in v)}/{sum(g is not None for g in v)}/{len(v)}'
      for k, v in hits.items()))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/ddpm/digits.py', help='the config file of the sweep')
  parser.add_argument('--workdir', default=os.path.join('workdirs', 'digits'), help='its workdir (model + eval/)')
  parser.add_argument('--num_steps', default='', help='comma-separated n (default: config.eval.num_steps)')
  parser.add_argument('--phis', default='0.001,0.003,0.01,0.03,0.1', help='smoothing variances, model units')
  parser.add_argument('--samples', type=int, default=0,
                      help="noised training images for the late start (default: the config's auto_tc_samples)")
  parser.add_argument('--smoke', action='store_true', help='a 2-step tiny digits model, choices only (a run check)')
  args = parser.parse_args()
  phis = [float(p) for p in args.phis.split(',') if p]
  if args.smoke:
    from configs.ddpm import digits
    config = digits.get_config()
    with tempfile.TemporaryDirectory() as tmp:
      config.data.num_train = 32
      config.training.n_iters, config.training.snapshot_freq, config.training.batch_size = 2, 2, 16
      config.training.snapshot_sampling, config.sampling.stats_dir = False, os.path.join(tmp, 'stats')
      config.sampling.auto_tc_stride, config.eval.methods = 250, ('ddim',)
      run_lib.train(config, os.path.join(tmp, 'run'))
      run(config, os.path.join(tmp, 'run'), (3,), phis[:1], 8)
    return
  config = load_config_file(args.config)
  num_steps = [int(n) for n in args.num_steps.split(',') if n] or list(config.eval.num_steps)
  run(config, args.workdir, num_steps, phis, args.samples or int(config.sampling.auto_tc_samples))


if __name__ == '__main__':
  main()
