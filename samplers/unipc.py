"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"): the UniP-2 predictor with the UniC corrector, B(h) = expm1(-h) ("bh2"), in data prediction;
docs/samplers.md.

Notation of samplers.dpm_solver: lambda = log(alpha / sigma), x0_pred the network's data prediction, h the
lambda step. At grid point i the network is called once, on the predictor's state x_i; its x0-prediction m_i
then serves twice:
  * UniC (Algorithm 2 of the paper, Eq. 8 / "UniC-p"): the state x_i is corrected from the previous state
    x_{i-1} with m_i and the earlier predictions,
      x_i^c = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i expm1(-h) m_{i-1}
              - alpha_i B(h) (sum_k rho_k D_k + rho_p (m_i - m_{i-1})),
    D_k = (m_{i-1-k} - m_{i-1}) / r_k, r_k = (lambda_{i-1-k} - lambda_{i-1}) / h, and rho solving R rho = b with
    R_jk = r_k^(j-1) (r_p = 1) and b_j = h phi_{j+1}(h) j! / B(h) (Eq. 10; rho = 1/2 for p = 1);
  * UniP-p (Eq. 7) moves the corrected state to the next time. With bh2 and p = 2 it is exactly the
    DPM-Solver++(2M) step (rho = 1/2), so it is samplers.dpm_solver's.
The correction needs no extra network call: m_i is not recomputed at the corrected state. NFE = n.

Orders as diffusers' ``UniPCMultistepScheduler(solver_type='bh2')`` defaults (solver_order=2,
lower_order_final=True, final_sigmas_type='zero'): the predictor's order p is min(2, points used so far,
points left), so the first and the last step are first order; the corrector at point i uses the order of the
predictor step that reached it. The last step goes to alpha_bar(-1) = 1 and returns m of the last grid point.
"""
import math

from samplers.ddim import step_pairs
from samplers.dpm_solver import exponential_step, half_log_snr, second_order_data


def corrector_weights(order, h, r=None):
  """rho of UniC-``order`` (order 1 or 2) with B(h) = expm1(-h): (rho_p,) or (rho_1, rho_p); r = r_1 (order 2).

  b_1 = (phi - 1) / B, b_2 = 2 ((phi - 1) / hh - 1/2) / B with hh = -h, phi = expm1(hh) / hh; R rho = b,
  R = [[1, 1], [r, 1]] (module doc)."""
  if order == 1:
    return (0.5,)
  hh = -h
  b_h = math.expm1(hh)
  phi_k = math.expm1(hh) / hh - 1
  b1 = phi_k / b_h
  b2 = (phi_k / hh - 0.5) * 2 / b_h
  rho1 = (b1 - b2) / (1 - r)
  return rho1, b1 - rho1


def _correct(x_prev, a_prev, a, m, history, order):
  """UniC: the corrected state at alpha_bar a from the state x_prev at a_prev (module doc).

  history: [(m, lambda)] of the grid points before this one, newest last (m_{i-1} is history[-1])."""
  m_prev, lam_prev = history[-1]
  h = half_log_snr(a) - lam_prev
  base = exponential_step(x_prev, a_prev, a, m_prev)  # (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i expm1(-h) m_{i-1}
  scale = math.sqrt(a) * math.expm1(-h)  # alpha_i B(h)
  if order == 1:
    return base - scale * 0.5 * (m - m_prev)
  m_old, lam_old = history[-2]
  r = (lam_old - lam_prev) / h
  rho1, rho_p = corrector_weights(2, h, r)
  return base - scale * (rho1 * (m_old - m_prev) / r + rho_p * (m - m_prev))


def unipc(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None):
  """UniPC sampler, UniP-2 + UniC, bh2 (deterministic; ``generator`` is accepted and unused).

  Args: as samplers.ddim.ddim.
  Returns: x0 (same shape as x_init). The callback gets the corrected state at each grid point and the network's
    x0-prediction there (made at the state before the correction).
  """
  del generator
  steps = step_pairs(schedule, timesteps)
  x, history, last = x_init, [], None  # last = (x, alpha_bar, predictor order) of the previous point
  for i, (t, t_next, a, a_next) in enumerate(steps):
    m = schedule.x0_from_eps(x, t, eps_fn(x, float(t)))
    if last is not None and a_next < 1.0:  # at the last point the correction cannot change the output
      x = _correct(last[0], last[1], a, m, history, last[2])
    if callback is not None:
      callback(t, x, m)
    history = (history + [(m, half_log_snr(a))])[-2:]
    order = min(2, len(history), len(steps) - i)
    last = (x, a, order)
    d = m if order == 1 else second_order_data(m, history[-2][0], history[-1][1], history[-2][1],
                                               half_log_snr(a_next))
    x = exponential_step(x, a, a_next, d)
  return x
