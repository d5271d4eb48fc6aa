"""Pseudo numerical methods for diffusion models (Liu et al. 2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds", PNDM); docs/samplers.md has the derivations and grids.

All variants move x with the transfer step phi (the deterministic DDIM step; PNDM Eq. 9):
  phi(x, t -> t', eps) = sqrt(a'/a) x + (sqrt(1-a') - sqrt(a' (1-a) / a)) eps,
with a = alpha_bar(t), a' = alpha_bar(t'), and differ only in the eps' fed to it. e_k below is
eps at the k-th grid state (one call per step, the "history"); n = len(timesteps).

* ``'f-pndm'`` (the paper's choice, "F-PNDM", pseudo 4th order): the first 3 steps are pseudo
  Runge-Kutta (PNDM Eq. 13; 4 calls each: e1 at t, e2 and e3 at the midpoint, e4 at t'; only e1
  enters the history), then the 4th-order linear multistep (PNDM Eq. 12)
  eps' = (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24 (1 call). NFE = n + 9 for n >= 3,
  4 n for n <= 3 (RK for min(n, 3) steps, as the reference code): 1 -> 4, 2 -> 8, 3 -> 12.
* ``'s-pndm'`` ("S-PNDM", as the paper's code's ``gen_order_2``): pseudo 2nd-order linear
  multistep eps' = (3 e_k - e_{k-1}) / 2, with a first step of pseudo improved Euler
  (e1 at t, e2 at t' after phi with e1, eps' = (e1 + e2)/2; 2 calls). NFE = n + 1.
* ``'plms'`` (equals diffusers' ``PNDMScheduler(skip_prk_steps=True)``, the PLMS of
  crowsonkb / latent-diffusion, to float64 round-off; tests/test_samplers.py checks it against
  tests/fixtures/plms_diffusers.npz): the first step is S-PNDM's pseudo improved Euler (e1 at t,
  e2 at t' on phi(x, t -> t', e1), then phi(x, t -> t', (e1 + e2)/2) from the *old* x; only e1
  enters the history), then Adams-Bashforth of order min(k+1, 4) on the history (PNDM Eq. 12 and
  its lower-order forms): (3 e_k - e_{k-1})/2, then (23, -16, 5)/12, then the 4th-order formula.
  NFE = n + 1 for n >= 2. With n = 1 diffusers makes a single Euler step (its timestep list is
  just [t]), so NFE = 1 there, and we do the same.
* ``'plms-euler'`` (this repo's earlier ``'plms'``; no reference implementation): as ``'plms'``
  but the first step is a plain Euler step eps' = e_1 (= one DDIM eta = 0 step), so every step
  costs one call. NFE = n.

Fractional and negative times. The RK midpoint t_mid = (t + t')/2 is fractional. Rule (one for
both uses): eps_fn receives the float t_mid, and alpha_bar(t_mid) is the schedule's
log-linear interpolation of alpha_bar between the integer neighbours (sde_lib). At the last
step t' = -1 (alpha_bar = 1, clean data) so t_mid = (t - 1)/2, e.g. -0.5 for t = 0, and the RK
e4 / improved-Euler e2 is evaluated at t' = -1. The network was trained on t >= 0 only, so
eps_fn gets max(time, 0.0) while alpha_bar uses the true (negative) time.
"""

from samplers.ddim import ddim_coefficients, step_pairs

VARIANTS = ('f-pndm', 's-pndm', 'plms', 'plms-euler')
_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12),
       4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}  # Adams-Bashforth weights, newest first


def nfe(num_steps, variant='f-pndm'):
  """Network calls of ``variant`` for ``num_steps`` steps (see module doc)."""
  n = int(num_steps)
  if variant == 'f-pndm':
    return 4 * min(n, 3) + max(n - 3, 0)
  if variant == 's-pndm':
    return n + 1
  if variant == 'plms':
    return n + 1 if n >= 2 else 1
  if variant == 'plms-euler':
    return n
  raise ValueError(f'unknown sampling.pndm_variant {variant!r}; choose one of {VARIANTS}')


def transfer_coefficients(a, a_next):
  """(c_x, c_eps) of phi(x, t -> t', eps) = c_x x + c_eps eps: PNDM Eq. 9 is the DDIM step with eta = 0."""
  return ddim_coefficients(a, a_next, 0.0)[:2]


def transfer(x, a, a_next, eps):
  c_x, c_eps = transfer_coefficients(a, a_next)
  return c_x * x + c_eps * eps


def _call(eps_fn, x, t):
  """eps at (possibly fractional or negative) time t; the network sees max(t, 0) (module doc)."""
  return eps_fn(x, max(float(t), 0.0))


def _runge_kutta(eps_fn, schedule, x, t, t_next, a, a_next, e1):
  """Pseudo RK4 eps' (PNDM Eq. 13), given e1 = eps(x, t): 3 further calls."""
  t_mid = 0.5 * (t + t_next)
  a_mid = float(schedule.alpha_bar(t_mid))  # log-linear interpolation (module doc)
  e2 = _call(eps_fn, transfer(x, a, a_mid, e1), t_mid)
  e3 = _call(eps_fn, transfer(x, a, a_mid, e2), t_mid)
  e4 = _call(eps_fn, transfer(x, a, a_next, e3), t_next)
  return (e1 + 2 * e2 + 2 * e3 + e4) / 6


def _combine(history, order):
  """Adams-Bashforth combination of the newest ``order`` entries (history newest last)."""
  w = _AB[order]
  out = w[0] * history[-1]
  for k in range(1, order):
    out = out + w[k] * history[-1 - k]
  return out


def pndm(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None,
         variant='f-pndm'):
  """PNDM sampler (deterministic; ``generator`` is accepted for the common signature and unused).

  Args: as samplers.ddim.ddim; variant in VARIANTS (module doc gives each and its NFE).
  Returns: the final x (same shape as x_init). The callback's x0_pred at t uses e1 = eps(x, t), the plain network
    prediction at that state.
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown sampling.pndm_variant {variant!r}; choose one of {VARIANTS}')
  del generator
  history = []  # e1 of every step, newest last; at most 4 are used
  x = x_init
  for t, t_next, a, a_next in step_pairs(schedule, timesteps):
    e1 = _call(eps_fn, x, t)
    if callback is not None:
      callback(t, x, schedule.x0_from_eps_given_alpha_bar(x, a, e1))
    history.append(e1)
    if len(history) > 4:
      history.pop(0)
    if variant == 'f-pndm' and len(history) < 4:
      eps = _runge_kutta(eps_fn, schedule, x, t, t_next, a, a_next, e1)
    elif (variant == 's-pndm' or (variant == 'plms' and t_next >= 0)) and len(history) < 2:
      # Pseudo improved Euler. PLMS (diffusers) skips it when the first step is also the last
      # one (n = 1): its timestep list then holds no second entry to evaluate e2 at.
      e2 = _call(eps_fn, transfer(x, a, a_next, e1), t_next)
      eps = 0.5 * (e1 + e2)
    elif variant == 's-pndm':
      eps = _combine(history, 2)
    else:
      eps = _combine(history, min(len(history), 4))
    x = transfer(x, a, a_next, eps)
  return x
