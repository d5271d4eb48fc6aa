"""Choosing the late-start time t_c for one (sampler, n) without sampling and scoring a sweep
(``sampling.t_start='auto'``, ``eval.t_starts=('auto', ...)``; docs/late_start.md, "Choosing t_c without a sweep").

A late start at t_c trades two errors, and the rule estimates both in the same unit (nats of KL divergence) and
takes the candidate t_c with the smallest sum:

* **What the late start loses**, KL(p_tc || G_tc) between the noised data and the Gaussian fitted to the data, both
  at t_c. The probability-flow ODE maps both through the same bijection, so this is also the KL between what the
  exact sampler makes from p_tc and from G_tc. Both densities evolve under the same forward diffusion, whose
  Fokker-Planck equation gives d/dt KL(p_t || q_t) = -1/2 beta(t) E_p ||grad log p_t - grad log q_t||^2, and
  grad log p_t = -eps / sqrt(1 - alpha_bar_t). So

      KL(p_tc || G_tc) = sum_{t >= t_c} beta_t / (2 (1 - alpha_bar_t)) E_{x_t ~ p_t} ||eps_theta(x_t) - eps_G(x_t)||^2

  (KL at T-1 ~ 0), with the trained network standing in for the true eps: a few hundred network calls on noised
  training images (``eps_gap``, ``late_start_kl``). It is ~0 while the data look Gaussian at that noise level and
  grows below the symmetry-breaking time of "Spontaneous Symmetry Breaking in Generative Diffusion Models".
* **What the sampler loses** in n steps over [0, t_c], measured where it can be computed exactly: on the fitted
  Gaussian itself. There eps is linear, every deterministic sampler here is an affine map of its start, and each
  eigendirection of the covariance runs on its own, so the output is an exact Gaussian and its KL to the exact
  solution's output is closed form (``solver_kl``; no network calls). Steps too long for the high-noise part of
  the path (vanilla DDIM at n = 3 starts with one step from T-1 to 500) show up here; a late start shortens them.

The rule has no free constant. What it cannot see: a network whose high-noise eps is worse than the Gaussian's
(the late start then gains more than the rule credits), and the solver's extra error on the non-Gaussian part of
the path below t_c. Stochastic samplers are judged by the ODE sampler of the same grid (their record's ``proxy``,
samplers.SAMPLERS).
"""
import math

import numpy as np
import torch

def candidates(T, num_steps, stride):
  """The candidate t_c: multiples of ``stride`` in [stride, T-1) that leave room for n distinct steps, and T-1
  (the vanilla start's time). Ascending ints."""
  if int(stride) < 1:
    raise ValueError(f'sampling.auto_tc_stride must be >= 1, got {stride}')
  return [t for t in range(int(stride), int(T) - 1, int(stride)) if num_steps <= t + 1] + [int(T) - 1]


def _fit(late_start):
  """(mean (D,), eigvals (D,), eigvecs (D, D)) float64 of a full-covariance GaussianLateStart."""
  if late_start.resid_var is not None or late_start.noised:
    raise ValueError("t_start='auto' needs the full-covariance late start (sampling.gls_fit=exact, "
                     'sampling.gls_rank=0): its eps and its samplers are computed in the eigenbasis')
  return late_start.mean.double(), late_start.eigvals.double().clamp(min=0), late_start.eigvecs.double()


def gaussian_eps(late_start, schedule, x, t):
  """eps of the fitted Gaussian at x_t: sqrt(1 - a) C_t^{-1} (x - sqrt(a) mean), C_t = a Sigma + (1 - a) I.
  x (B, *shape) -> float64 (B, D)."""
  mean, lam, vecs = _fit(late_start)
  a = float(schedule.alpha_bar(int(t)))
  r = x.reshape(len(x), -1).double() - math.sqrt(a) * mean
  return math.sqrt(1 - a) * ((r @ vecs) / (a * lam + 1 - a)) @ vecs.T


def eps_gap(eps_fn, late_start, schedule, x0, times, generator):
  """{t: E ||eps_theta(x_t, t) - eps_G(x_t, t)||^2} (sum over pixels, mean over images) on x_t = sqrt(a) x0 +
  sqrt(1 - a) z, one noise draw z per image shared by every t. x0: (B, *shape) training images in model space;
  len(times) * B network calls."""
  z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
  gaps = {}
  for t in times:
    a = float(schedule.alpha_bar(int(t)))
    x_t = (math.sqrt(a) * x0.double() + math.sqrt(1 - a) * z).float()
    with torch.no_grad():
      eps = eps_fn(x_t, float(t)).reshape(len(x0), -1).double()
    gaps[int(t)] = float(((eps - gaussian_eps(late_start, schedule, x_t, t)) ** 2).sum(1).mean())
  return gaps


def late_start_kl(schedule, gaps):
  """{t_c: KL(p_tc || G_tc)} from eps_gap's {t: gap}: the trapezoid sum of beta_t / (2 (1 - alpha_bar_t)) gap(t)
  over the steps from t_c to the largest t (module doc); 0 at the largest t. A gap may also be a tensor (e.g. one
  value per eigendirection, benchmarks/auto_tc_variants.py); the sums then have its shape."""
  ts = sorted(gaps)
  rate = [float(schedule.beta_at(t)) / (2 * (1 - float(schedule.alpha_bar(t)))) * gaps[t] for t in ts]
  out, total = {ts[-1]: 0.0 * rate[-1]}, 0.0 * rate[-1]
  for i in range(len(ts) - 2, -1, -1):
    total = total + 0.5 * (rate[i] + rate[i + 1]) * (ts[i + 1] - ts[i])  # a new object: out keeps each sum
    out[ts[i]] = total
  return out


def noise_floor(schedule):
  """(1 - alpha_bar_0) / alpha_bar_0: the smallest noise variance of the schedule, in data units."""
  a0 = float(schedule.alpha_bar(0))
  return (1 - a0) / a0


def solver_kl(sampler, options, schedule, late_start, timesteps, vanilla, phi=0.0):
  """KL(sampler output || exact output) on the fitted Gaussian, summed over its eigendirections (module doc).

  The sampler runs from N(0, I) (vanilla) or from the late start at timesteps[0], over ``timesteps``. Variances
  below ``noise_floor`` are lifted to it (no sampler resolves them, and their KL would diverge). The exact output is
  the last step's x0-prediction from the exact x_0 state: mean m, variance a0 lam^2 / (a0 lam + 1 - a0).
  phi > 0 compares both after adding N(0, phi I), which removes what directions of variance << phi contribute
  (benchmarks/auto_tc_variants.py; the rule uses 0).
  """
  mean, lam, vecs = _fit(late_start)
  lam, m = lam.clamp(min=noise_floor(schedule)), vecs.T @ mean  # in the eigenbasis
  out_mean, out_var, exact_var = output_moments(sampler, options, schedule, m, lam, timesteps, vanilla)
  out_var, exact_var = out_var + phi, exact_var + phi
  kl = 0.5 * (out_var / exact_var + (out_mean - m) ** 2 / exact_var - 1 + torch.log(exact_var / out_var))
  return float(kl.sum())


def output_moments(sampler, options, schedule, m, lam, timesteps, vanilla):
  """(out_mean, out_var, exact_var), each (D,) float64 in the eigenbasis, of a deterministic sampler run on Gaussian
  data N(m, diag(lam)) with its exact eps: the sampler is affine there, so two runs (from 0 and from 1) give its
  gain and offset per direction. The start is N(0, I) (vanilla) or the exact noised data at timesteps[0]; the exact
  output is the last step's x0-prediction from the exact x_0 state (variance a0 lam^2 / (a0 lam + 1 - a0))."""
  def eps_fn(x, t):
    a = float(schedule.alpha_bar(float(t)))  # PNDM evaluates between grid points
    return math.sqrt(1 - a) * (x - math.sqrt(a) * m) / (a * lam + 1 - a)

  ends = sampler(eps_fn, schedule, torch.stack([torch.zeros_like(m), torch.ones_like(m)]), timesteps, **options)
  gain, offset = ends[1] - ends[0], ends[0]
  a = float(schedule.alpha_bar(int(timesteps[0])))
  start_mean, start_var = (torch.zeros_like(m), torch.ones_like(m)) if vanilla else (math.sqrt(a) * m,
                                                                                      a * lam + 1 - a)
  a0 = float(schedule.alpha_bar(0))
  return gain * start_mean + offset, gain ** 2 * start_var, a0 * lam ** 2 / (a0 * lam + 1 - a0)


def choose(total):
  """The t_c with the smallest value in {t_c: value}; ties go to the larger t_c (the smaller change). A non-finite
  value never wins; all non-finite raises ValueError."""
  finite = {t: v for t, v in total.items() if np.isfinite(v)}
  if not finite:
    raise ValueError(f'every candidate t_c gave a non-finite estimate: {total}')
  return max(finite, key=lambda t: (-finite[t], t))
