"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", Algorithm 2, multistep second order in data prediction); docs/samplers.md.

Both this solver and UniPC (samplers.unipc) integrate the probability-flow ODE in the half log-SNR
lambda = log(alpha / sigma), alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar), with the data prediction
x0_pred = (x - sigma eps) / alpha of the network. Over a step s -> t with h = lambda_t - lambda_s the exact
solution's linear part is integrated exactly (DPM-Solver++ Eq. 9):

  x_t = (sigma_t / sigma_s) x_s - alpha_t expm1(-h) D,

with D = x0_pred at s for the first-order step (which is exactly a DDIM eta = 0 step), and for the 2M step
(Algorithm 2, "midpoint" form of diffusers) D = x0_s + (x0_s - x0_prev) / (2 r), r = h_prev / h.

Conventions (diffusers' ``DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2)`` defaults,
``final_sigmas_type='zero'``): the first step is first order (no history yet); the last step goes from the grid's
last time to alpha_bar(-1) = 1 (sigma = 0) and is first order, so its output is the last x0-prediction. One
network call per grid point: NFE = n. The history (the previous x0-prediction and lambda) is local to a call.
"""
import math

from samplers.ddim import step_pairs


def half_log_snr(a):
  """lambda = log(alpha / sigma) = 0.5 log(a / (1 - a)) of alpha_bar a in (0, 1); +inf at a = 1."""
  return math.inf if a >= 1.0 else 0.5 * (math.log(a) - math.log1p(-a))


def exponential_step(x, a, a_next, d):
  """x at alpha_bar a_next from x at a with data prediction ``d`` held over the step (DPM-Solver++ Eq. 9):
  (sigma_next / sigma) x - alpha_next expm1(-h) d. At a_next = 1 (sigma_next = 0) this is ``d``."""
  if a_next >= 1.0:
    return d
  h = half_log_snr(a_next) - half_log_snr(a)
  return math.sqrt((1 - a_next) / (1 - a)) * x - math.sqrt(a_next) * math.expm1(-h) * d


def second_order_data(x0, x0_prev, lam, lam_prev, lam_next):
  """The 2M data term x0 + (x0 - x0_prev) / (2 r), r = (lam - lam_prev) / (lam_next - lam) (Algorithm 2).

  UniPC's UniP-2 predictor with B(h) = expm1(-h) (bh2) and rho = 1/2 is this same step (samplers.unipc)."""
  r = (lam - lam_prev) / (lam_next - lam)
  return x0 + (x0 - x0_prev) / (2.0 * r)


def dpmpp_2m(eps_fn, schedule, x_init, timesteps, *, generator=None, callback=None):
  """DPM-Solver++(2M) sampler (deterministic; ``generator`` is accepted for the common signature and unused).

  Args: as samplers.ddim.ddim (x_init (B, ...) at timesteps[0]; timesteps strictly descending ints in
    [0, T-1]; the last step goes to t = -1).
  Returns: x0 (same shape as x_init).
  """
  del generator
  x, prev = x_init, None  # prev = (x0_pred, lambda) at the previous grid point
  for t, t_next, a, a_next in step_pairs(schedule, timesteps):
    x0 = schedule.x0_from_eps(x, t, eps_fn(x, float(t)))
    if callback is not None:
      callback(t, x, x0)
    lam = half_log_snr(a)
    d = x0
    if prev is not None and a_next < 1.0:  # first and last steps stay first order (module doc)
      d = second_order_data(x0, prev[0], lam, prev[1], half_log_snr(a_next))
    x = exponential_step(x, a, a_next, d)
    prev = (x0, lam)
  return x
