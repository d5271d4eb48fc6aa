"""Where F-PNDM goes wrong with more steps: per-step ODE error of F-PNDM, DDIM and DPM-Solver++ against a fine solve.

  python benchmarks/bench_pndm_steps.py --config configs/ddpm/mnist5k.py --workdir workdirs/mnist5k
  python benchmarks/bench_pndm_steps.py --config configs/ddpm/digits.py --pretrained assets/models/digits
  python benchmarks/bench_pndm_steps.py --smoke

Issue 35 item 7: on the MNIST model vanilla F-PNDM scores a worse FID at n = 10 (19 NFE) than at n = 5 (14 NFE) on
the late_start grid (linspace(0, 999, n) as ints), which no other sampler does. This script measures where.

From the same start noise (sample i drawn from rng.per_sample_generators(config.seed, [i]) through the plan's
initialiser, as sampling.generate draws it) it runs
  * the reference: the probability-flow ODE solved finely, DDIM (eta = 0) on the full 1000-point grid (every integer
    t), whose state is recorded at every t (samplers.trajectory.Trajectory);
  * DDIM (eta = 0), F-PNDM (pndm variant 'f-pndm') and DPM-Solver++(2M) on the late_start grid for each n in --ns,
    with the state recorded at each grid time,
and prints per n one table, one row per grid time t:
  * global: the RMS (over samples and pixels, model space [-1, 1]) of x_t - x_t(reference) for each sampler;
  * local: the RMS error at t of ONE step that arrives at t from the reference state at the previous grid time, with
    every eps the step uses evaluated on the reference path (F-PNDM: its history e_k is eps at the reference grid
    states, its pseudo Runge-Kutta stages are re-run from the reference state). The local F-PNDM steps reuse
    samplers.pndm's own transfer / _runge_kutta / _combine; the same code run from x_init (not from the reference)
    must reproduce samplers.pndm's output, which the script checks before it prints;
  * the step kind of F-PNDM (RK = pseudo Runge-Kutta warm-up, 4 calls; AB4 = the 4-step pseudo linear multistep).
The last rows are the final x0 (the step t = 0 -> -1), "x0_pred(0)": the network's x0-prediction at each sampler's
own t = 0 state, i.e. what a DDIM last step from there would return, and the final x0 error on the background pixels
only (reference x0 < -0.9), where leftover noise shows as grey speckle, and the roughness of each sampler's own x0
(RMS of its 5-point Laplacian; the reference's in the label), which speckle raises whatever digit is drawn.
Then the F-PNDM warm-up stages: the RMS error of the state each Runge-Kutta call sees (e2, e3 at the fractional
midpoint, e4 at t') against the reference (linearly interpolated between integer times at a midpoint).
--precisions fp32,bf16: the samplers' U-Net also under bf16 autocast (as eval.precision = 'auto' runs it on a CPU
with avx512_bf16, the setting of the published MNIST table), against the same fp32 reference.
--ref_check: also DDIM on the 500-point late_start grid; its distance from the reference bounds the reference's own
error (DDIM is first order, so the 1000-point error is about that distance).
Last, a closed-form control: Gaussian data with exact eps and the exact flow (analysis.gaussian), same grids,
final-x0 error of each sampler, for a well-conditioned covariance and one with image-like eigenvalues (1e-4 .. 1);
and the noise gain: d x0 / d eps_k for every network call k of each sampler on one pixel of Gaussian data with
variance lam (exact eps), i.e. how much of an error in one call (bf16 rounding, the network's call-to-call error)
reaches the sample, on the vanilla grid and on the late-start grid from t_c = 600.
--smoke: a randomly initialised digits U-Net, 2 samples (a run check, a few seconds).
"""
import argparse
import importlib
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import late_start  # noqa: E402
import rng  # noqa: E402
import sampling  # noqa: E402
import sde_lib  # noqa: E402
from analysis import gaussian  # noqa: E402
from configs.validation import load_config_file  # noqa: E402
from models import checkpoints  # noqa: E402
from models import utils as mutils  # noqa: E402
from samplers.ddim import step_pairs  # noqa: E402
from samplers.trajectory import Trajectory  # noqa: E402

pndm_mod = importlib.import_module('samplers.pndm')  # the module (samplers.pndm as an attribute is the function)

SAMPLERS = [('ddim', {'eta': 0.0}, 'DDIM'), ('pndm', {'variant': 'f-pndm'}, 'F-PNDM'), ('dpmpp_2m', {}, 'DPM-Solver++')]


def roughness(x):
  """RMS of the 5-point Laplacian of images (B, C, H, W): grows with pixel-level speckle."""
  x = x.double()
  lap = (4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])
  return float(lap.pow(2).mean().sqrt())


def rms(a, b=None):
  d = a if b is None else a - b
  return float(d.double().pow(2).mean().sqrt())


class Recorder:
  """Wraps eps_fn and records (t, x) of every call (t as the network sees it: max(t, 0))."""

  def __init__(self, fn):
    self.fn, self.calls = fn, []

  def __call__(self, x, t):
    self.calls.append((float(t), x.detach().clone()))
    return self.fn(x, t)


def plan(config, schedule, method, n, options):
  T = config.model.num_scales
  spec = sampling.RunSpec(method, n, T - 1, 'normal', 'late_start', options)
  return sampling.sampling_plan(spec, schedule, late_start.initialiser_factory(config, schedule))


def fpndm_steps(eps_fn, schedule, grid, x_init=None, ref=None):
  """F-PNDM step by step with samplers.pndm's own pieces. x_init given: the global run (must equal samplers.pndm).
  ref given ({t: reference state}): each step starts from the reference state at t with the history of eps at the
  reference grid states (local errors). Returns ({t_next: state after the step}, [step kinds])."""
  out, kinds, history, x = {}, [], [], x_init
  for t, t_next, a, a_next in step_pairs(schedule, grid):
    if ref is not None:
      x = ref[t]
    e1 = pndm_mod._call(eps_fn, x, t)
    history.append(e1)
    if len(history) > 4:
      history.pop(0)
    if len(history) < 4:
      eps, kind = pndm_mod._runge_kutta(eps_fn, schedule, x, t, t_next, a, a_next, e1), 'RK'
    else:
      eps, kind = pndm_mod._combine(history, 4), 'AB4'
    x = pndm_mod.transfer(x, a, a_next, eps)
    out[t_next], kinds = x, kinds + [kind]
  return out, kinds


def ddim_local(eps_fn, schedule, grid, ref):
  """One DDIM (eta = 0) step from the reference state at each grid time: {t_next: state}."""
  out = {}
  for t, t_next, a, a_next in step_pairs(schedule, grid):
    out[t_next] = pndm_mod.transfer(ref[t], a, a_next, eps_fn(ref[t], float(t)))
  return out


def ref_at(ref, t):
  """Reference state at a (possibly fractional) time, linear between the integer neighbours."""
  lo = math.floor(t)
  if lo == t or lo + 1 not in ref:
    return ref[lo]
  w = t - lo
  return (1 - w) * ref[lo] + w * ref[lo + 1]


@torch.no_grad()
def measure(config, eps_fn, num_samples, ns, ref_check=False, device='cpu', sampler_eps_fns=None):
  """sampler_eps_fns: {label: eps_fn} the samplers run with (default {'fp32': eps_fn}); the reference always uses
  eps_fn. Returns dict(ref_rms, ref_check, runs={(label, n): run})."""
  schedule = sde_lib.DDPMSchedule.from_config(config)
  T = config.model.num_scales
  ref_plan = plan(config, schedule, 'ddim', T, {'eta': 0.0})
  assert ref_plan.timesteps == tuple(range(T - 1, -1, -1)), ref_plan.timesteps[:5]
  gens = rng.per_sample_generators(config.seed, range(num_samples))
  x_init = ref_plan.initialiser.sample(len(gens), gens).to(device, torch.float32)
  traj = Trajectory()
  ref_x0 = ref_plan.sampler(eps_fn, schedule, x_init, ref_plan.timesteps, callback=traj, **ref_plan.options).cpu()
  ref = dict(zip(traj['t'], traj['x']))
  ref[-1] = ref_x0
  background = ref_x0 < -0.9  # black background of the reference sample (model space [-1, 1])
  result = {'ref_rms': {t: rms(x) for t, x in ref.items()}, 'runs': {}, 'ref_check': None,
            'background': float(background.double().mean()), 'ref_rough': roughness(ref_x0)}
  if ref_check:
    p = plan(config, schedule, 'ddim', T // 2, {'eta': 0.0})
    tr = Trajectory()
    x0 = p.sampler(eps_fn, schedule, x_init, p.timesteps, callback=tr, **p.options).cpu()
    result['ref_check'] = {'n': len(p.timesteps), 'x0': rms(x0, ref_x0),
                           'max_state': max(rms(x, ref[t]) for t, x in zip(tr['t'], tr['x']))}
  for (label, fn_s), n in [(item, n) for item in (sampler_eps_fns or {'fp32': eps_fn}).items() for n in ns]:
    run = {'grid': None, 'global': {}, 'x0pred0': {}, 'nfe': {}, 'background': {}, 'rough': {}}
    for method, options, name in SAMPLERS:
      p = plan(config, schedule, method, n, options)
      run['grid'] = p.timesteps
      tr = Trajectory()
      fn = Recorder(fn_s) if name == 'F-PNDM' else fn_s
      x0 = p.sampler(fn, schedule, x_init, p.timesteps, callback=tr, **p.options).cpu()
      states = dict(zip(tr['t'], tr['x']))
      states[-1] = x0
      run['global'][name] = {t: rms(x, ref[t]) for t, x in states.items()}
      run['background'][name] = rms((x0 - ref_x0)[background])
      run['rough'][name] = roughness(x0)
      run['x0pred0'][name] = rms(dict(zip(tr['t'], tr['x0_pred']))[p.timesteps[-1]], ref_x0)
      run['nfe'][name] = p.nfe
      if name == 'F-PNDM':
        calls, fpndm_x0 = fn.calls, x0
    grid = run['grid']
    # the replay must be samplers.pndm itself, else the local errors below would describe another method
    replay, kinds = fpndm_steps(fn_s, schedule, grid, x_init=x_init)
    run['replay_diff'] = float((replay[-1].cpu() - fpndm_x0).abs().max())
    assert run['replay_diff'] < 1e-4, f'the step-by-step F-PNDM differs from samplers.pndm by {run["replay_diff"]}'
    run['kinds'] = dict(zip(list(grid[1:]) + [-1], kinds))
    local, _ = fpndm_steps(fn_s, schedule, grid, ref={t: ref[t].to(device) for t in grid})
    run['local'] = {'F-PNDM': {t: rms(x.cpu(), ref[t]) for t, x in local.items()},
                    'DDIM': {t: rms(x.cpu(), ref[t]) for t, x in
                             ddim_local(fn_s, schedule, grid, {t: ref[t].to(device) for t in grid}).items()}}
    # warm-up stages: calls 4i .. 4i+3 of step i (e1 at t, e2 and e3 at the midpoint, e4 at t')
    stages = []
    pairs = list(zip(grid, list(grid[1:]) + [-1]))
    for i, (t, t_next) in enumerate(pairs[:3]):
      if t_next < 0:
        break  # the network sees max(t, 0) there: the recorded time is not the state's time
      (_, x1), (tm, x2), (_, x3), (tn, x4) = calls[4 * i:4 * i + 4]
      stages.append((t, t_next, tm, rms(x2.cpu(), ref_at(ref, tm)), rms(x3.cpu(), ref_at(ref, tm)),
                     rms(x4.cpu(), ref[int(tn)]), run['global']['F-PNDM'][t_next]))
    run['stages'] = stages
    result['runs'][(label, n)] = run
  return result


def gaussian_control(ns, T=1000):
  """Final-x0 RMS error on Gaussian data (exact eps, exact flow from t = 999), same late_start grids; float64."""
  from samplers import get_sampler, grids
  schedule = sde_lib.DDPMSchedule()
  dim = 16
  mu, cov = gaussian.random_gaussian(dim, seed=0)
  g = torch.Generator().manual_seed(7)
  q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
  image_like = q @ torch.diag(torch.logspace(-4, 0, dim, dtype=torch.float64)) @ q.T
  rows = []
  x = torch.randn(256, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
  for label, c in (('well-conditioned (eigenvalues >= 0.01)', cov), ('image-like (eigenvalues 1e-4 .. 1)', image_like)):
    exact = gaussian.flow(mu, c, schedule)(x, T - 1, -1)
    for n in ns:
      grid = grids.late_start_grid(T - 1, n, T)
      errs = [rms(get_sampler(m)(gaussian.eps_fn(mu, c, schedule), schedule, x, grid, **o), exact)
              for m, o, _ in SAMPLERS]
      rows.append((label, n, errs))
  return rows


def noise_gain(method, options, grid, lam, schedule):
  """d x0 / d eps_k for every network call k of a sampler on 1-D Gaussian data N(-1, lam) with its exact eps (a
  pixel whose data variance is lam; lam -> 0 is the black background). Batch row k gets the perturbation at call k
  only, so one run gives all. Returns (gains (NFE,), network times of the calls)."""
  from samplers import get_sampler, nfe
  calls, times, delta = nfe(method, len(grid), **options), [], 1e-6

  def eps_fn(x, t):
    a = float(schedule.alpha_bar(t))
    eps = math.sqrt(1 - a) * (x + math.sqrt(a)) / (a * lam + 1 - a)
    k = len(times)
    times.append(float(t))
    if k < calls:
      eps = eps.clone()
      eps[k] += delta
    return eps
  x = torch.full((calls + 1, 1), 0.7, dtype=torch.float64)  # the last row is unperturbed
  x0 = get_sampler(method)(eps_fn, schedule, x, grid, **options)
  assert len(times) == calls, (method, len(times), calls)
  return ((x0[:-1] - x0[-1]) / delta).flatten(), times


def gain_table(ns, lams=(1e-4, 1e-2), T=1000):
  """Rows (grid label, n, sampler, [sqrt(sum_k gain_k^2) per lam], largest |gain| at lam[-1] with its call time)."""
  from samplers import grids
  schedule = sde_lib.DDPMSchedule()
  rows = []
  for label, top in (('vanilla (from 999)', T - 1), ('late start t_c = 600', 600)):
    for n in ns:
      grid = grids.late_start_grid(top, n, T)
      for method, options, name in SAMPLERS:
        out = [noise_gain(method, options, grid, lam, schedule) for lam in lams]
        gains, times = out[-1]
        k = int(gains.abs().argmax())
        rows.append((label, n, name, [float(g.pow(2).sum().sqrt()) for g, _ in out],
                     f'{float(gains[k]):+.2f} (call {k + 1}, t = {times[k]:g})'))
  return rows


def print_tables(result, title):
  print(f'\n## {title}\n')
  if result['ref_check']:
    rc = result['ref_check']
    print(f"reference check: DDIM on the {rc['n']}-point grid is {rc['x0']:.2e} (x0) / at most {rc['max_state']:.2e} "
          f'(states) RMS from the 1000-point reference\n')
  names = [name for _, _, name in SAMPLERS]
  for (label, n), run in result['runs'].items():
    grid = run['grid']
    print(f"### n = {n}, samplers' U-Net in {label} (grid {', '.join(map(str, grid))}; NFE " +
          ', '.join(f'{k} {v}' for k, v in run['nfe'].items()) + ')\n')
    print('| t | ref RMS | ' + ' | '.join(f'{k} global' for k in names) +
          ' | F-PNDM step into t | DDIM local | F-PNDM local |')
    print('|' + '---|' * (5 + len(names)))
    for t in list(grid) + [-1]:
      row = 'x0 (t = -1)' if t == -1 else str(t)
      cells = [f"{run['global'][k][t]:.4f}" for k in names]
      kind = run['kinds'].get(t, '-')
      loc = [f"{run['local'][k][t]:.4f}" if t in run['local'][k] else '-' for k in ('DDIM', 'F-PNDM')]
      print(f"| {row} | {result['ref_rms'][t]:.3f} | " + ' | '.join(cells) + f' | {kind} | ' + ' | '.join(loc) + ' |')
    print('| x0_pred(0) | - | ' + ' | '.join(f"{run['x0pred0'][k]:.4f}" for k in names) + ' | - | - | - |')
    print(f"| x0 on background ({result['background']:.0%} of pixels) | - | " +
          ' | '.join(f"{run['background'][k]:.4f}" for k in names) + ' | - | - | - |')
    print(f"| x0 roughness (reference {result['ref_rough']:.4f}) | - | " +
          ' | '.join(f"{run['rough'][k]:.4f}" for k in names) + ' | - | - | - |')
    print(f"\nF-PNDM warm-up stages, n = {n}, {label} (RMS error of the state each Runge-Kutta call sees; replay vs "
          f"samplers.pndm max |diff| {run['replay_diff']:.1e}):\n")
    print("| step | midpoint | e2 input (mid) | e3 input (mid) | e4 input (t') | x(t') |")
    print('|---|---|---|---|---|---|')
    for t, tn, tm, e2, e3, e4, xn in run['stages']:
      print(f'| {t} -> {tn} | {tm:g} | {e2:.4f} | {e3:.4f} | {e4:.4f} | {xn:.4f} |')
    print()


def load(args):
  config = load_config_file(args.config)
  config.eval.precision = 'fp32'
  if args.pretrained:
    config.model.pretrained = args.pretrained
  for attempt in range(5):  # a checkpoint being written while we read it: retry
    try:
      eps_fn, step = checkpoints.load_eps_fn(config, args.workdir, 'cpu')
      break
    except Exception as err:  # noqa: BLE001
      if attempt == 4:
        raise
      print(f'[load] retrying after {type(err).__name__}: {err}', file=sys.stderr)
      time.sleep(5)
  return config, eps_fn, step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/ddpm/mnist5k.py', help='config file')
  parser.add_argument('--workdir', default=os.path.join('workdirs', 'mnist5k'), help='workdir with checkpoints')
  parser.add_argument('--pretrained', default='', help='a diffusers folder instead of --workdir')
  parser.add_argument('--num_samples', type=int, default=16)
  parser.add_argument('--ns', default='5,10', help='comma-separated n')
  parser.add_argument('--ref_check', action='store_true', help='also DDIM on a 500-point grid (reference error)')
  parser.add_argument('--precisions', default='fp32',
                      help="comma-separated U-Net precisions for the samplers (fp32, bf16); the reference is fp32")
  parser.add_argument('--smoke', action='store_true', help='random tiny digits U-Net, 2 samples (a run check)')
  args = parser.parse_args()
  ns = [int(n) for n in args.ns.split(',') if n]
  torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
  if args.smoke:
    from configs.ddpm import digits
    config = digits.get_config()
    config.model.nf, config.model.num_groups, config.model.attn_resolutions = 8, 4, ()
    torch.manual_seed(0)
    eps_fn = mutils.ema_eps_fn(mutils.create_model(config))
    result = measure(config, eps_fn, 2, ns)
    print_tables(result, 'smoke: random tiny digits U-Net, 2 samples')
  else:
    config, eps_fn, step = load(args)
    fns = {p: eps_fn if p == 'fp32' else mutils.ema_eps_fn(eps_fn.model, precision=p)
           for p in args.precisions.split(',') if p}
    result = measure(config, eps_fn, args.num_samples, ns, ref_check=args.ref_check, sampler_eps_fns=fns)
    where = args.pretrained or f'{args.workdir} checkpoint step {step}'
    print_tables(result, f'{config.data.dataset}: {where}, {args.num_samples} samples, reference fp32, seed {config.seed}')
  print('\n## Gaussian data, exact eps and flow (D = 16, 256 starts, float64): final x0 RMS error\n')
  print('| data | n | ' + ' | '.join(name for _, _, name in SAMPLERS) + ' |')
  print('|---|---|' + '---|' * len(SAMPLERS))
  for label, n, errs in gaussian_control(ns):
    print(f'| {label} | {n} | ' + ' | '.join(f'{e:.2e}' for e in errs) + ' |')
  lams = (1e-4, 1e-2)
  print('\n## Noise gain: how much of an error in one network call reaches x0 (1-D Gaussian data N(-1, lam), exact '
        'eps)\n\nsqrt(sum over calls of (d x0 / d eps_call)^2): the RMS error in x0 left by independent per-call eps '
        'errors of RMS 1 (bf16 rounding, call-to-call network error); the exact flow and DDIM damp them in '
        'low-variance (background) pixels.\n')
  print('| grid | n | sampler | ' + ' | '.join(f'gain, lam = {lam:g}' for lam in lams) +
        f' | largest d x0 / d eps_call, lam = {lams[-1]:g} |')
  print('|---|---|---|' + '---|' * (len(lams) + 1))
  for label, n, name, gains, worst in gain_table(ns, lams):
    print(f'| {label} | {n} | {name} | ' + ' | '.join(f'{g:.2f}' for g in gains) + f' | {worst} |')

if __name__ == '__main__':
  main()
