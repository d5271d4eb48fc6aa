"""Spontaneous symmetry breaking in generative diffusion (SSB Section 3; equations in docs/ssb.md).

Three parts, all plain numpy/scipy in float64:
  * the 1-D two-point model p(y) = 1/2 delta(y-1) + 1/2 delta(y+1): score, potential, curvature at 0
    (Eq. 8), theta_c (Eq. 9), fixed points (Eq. 10), reverse SDE / probability-flow ODE simulation;
  * any finite data set {y_j} (N, D): the exact empirical score and the Jacobian of the generative drift
    at the noised data mean x = theta * mean(y). The time at which its top eigenvalue turns positive (the
    flow at the mean stops contracting) is a critical timestep t_c predicted from the data alone. For data
    symmetric about the origin that point is the central fixed point and t_c is where it loses stability;
    for other data it is not a fixed point (docs/ssb.md, "Beyond 1-D");
  * the potential of any drift along a circular path between two states (used on trained models).

Conventions: theta = sqrt(alpha_bar) in (0, 1).  Continuous forward time s in [0, 1] uses the VP schedule
of docs/schedule.md, beta(s) = 0.1 + s (20 - 0.1), theta(s) = exp(-s^2 (19.9)/4 - s 0.05).  Generative
time runs from noise to data, t_gen = 1 - s.  The generative drift is beta (x/2 + score(x)) and the
potential u is defined by drift = -du/dx.
"""
import numpy as np
from scipy import integrate, optimize
from scipy.special import logsumexp, softmax

import sde_lib

_VP = sde_lib.DDPMSchedule()  # continuous VP view (beta_min=0.1, beta_max=20): docs/schedule.md


def beta_continuous(s):
  """beta(s) = 0.1 + s (20 - 0.1) for forward time s in [0, 1] (docs/schedule.md)."""
  return _VP.beta_continuous(s)


def theta_continuous(s):
  """theta(s) = sqrt(alpha_bar)(s) = exp(-s^2 19.9/4 - 0.05 s), s in [0, 1]; values in (0, 1]."""
  return _VP.theta_continuous(s)


def _check_theta(theta):
  theta = np.asarray(theta, dtype=np.float64)
  if np.any(theta <= 0) or np.any(theta >= 1):
    raise ValueError(f'theta = sqrt(alpha_bar) must lie strictly in (0, 1), got {theta}')
  return theta


# ----------------------------------------------------------------------------- 1-D two-point model
def score_two_point(x, theta):
  """Score d/dx log p_theta(x) of the noised two-point data (docs/ssb.md).

  x: array of any shape; theta in (0, 1) (scalar or broadcastable).  Returns an array like x.
  """
  theta, x = _check_theta(theta), np.asarray(x, dtype=np.float64)
  v = 1.0 - theta ** 2  # noise variance of the VP marginal
  return (theta * np.tanh(theta * x / v) - x) / v  # score of the noised data (docs/ssb.md)


def potential_two_point(x, theta, beta):
  """Generative potential u(x) with drift beta (x/2 + score) = -du/dx, up to a constant (SSB Eq. 7).

  x: array; theta in (0, 1); beta > 0.  Returns an array like x.
  """
  theta, x = _check_theta(theta), np.asarray(x, dtype=np.float64)
  v = 1.0 - theta ** 2
  log_p = np.logaddexp(-(x - theta) ** 2 / (2 * v), -(x + theta) ** 2 / (2 * v))
  return beta * (-x ** 2 / 4 - log_p)  # SSB Eq. 7


def curvature_at_zero(theta, beta):
  """d^2u/dx^2 at x = 0: -beta [1/2 + (2 theta^2 - 1)/(theta^2 - 1)^2] (SSB Eq. 8).

  Positive (x = 0 stable) for theta < theta_c, negative past it.  Vectorised over theta and beta.
  """
  theta = _check_theta(theta)
  return -beta * (0.5 + (2 * theta ** 2 - 1) / (theta ** 2 - 1) ** 2)  # SSB Eq. 8


def theta_critical():
  """theta_c = sqrt(sqrt(2) - 1) ~ 0.6436, where the curvature at 0 changes sign (SSB Eq. 9)."""
  return float(np.sqrt(np.sqrt(2.0) - 1.0))  # root of theta^4 + 2 theta^2 - 1 = 0, Eq. 9


def critical_index(thetas):
  """Index i on a generative-time theta grid (increasing, noise -> data) with theta_c in (thetas[i], thetas[i+1]].

  On the notebook grid ts = linspace(0, 1 - 1e-3, 1000) with theta(1 - ts) this is 707 (docs/ssb.md):
  the last grid point where the curvature at 0 is still positive.  Raises ValueError if never crossed.
  """
  thetas = np.asarray(thetas, dtype=np.float64)
  if thetas.ndim != 1 or np.any(np.diff(thetas) <= 0):
    raise ValueError('thetas must be a 1-D, strictly increasing grid (generative time, noise -> data)')
  above = np.nonzero(thetas >= theta_critical())[0]
  if len(above) == 0 or above[0] == 0:
    raise ValueError(f'theta grid [{thetas[0]:.4f}, {thetas[-1]:.4f}] does not cross theta_c = '
                     f'{theta_critical():.4f}; extend the grid on both sides')
  return int(above[0] - 1)


def critical_time(ts, theta_fn=None):
  """(index, ts[index]) of the symmetry-breaking point on a generative-time grid ts.

  ts: increasing generative times; theta_fn maps ts -> theta (default: the VP theta(1 - t), docs/schedule.md).
  """
  ts = np.asarray(ts, dtype=np.float64)
  theta_fn = theta_fn or (lambda t: theta_continuous(1.0 - t))
  i = critical_index(theta_fn(ts))
  return i, float(ts[i])


def _drift_slope_two_point(x, theta):
  """d/dx (x/2 + score) for the two-point data; the sign decides stability (negative = stable)."""
  v = 1.0 - theta ** 2
  sech2 = 1.0 - np.tanh(theta * x / v) ** 2  # no overflow for large |x|
  return 0.5 + (theta ** 2 / v * sech2 - 1) / v


def fixed_points(theta):
  """Zeros of the generative drift: (theta^2 + 1) x* = -2 theta tanh(theta x* / (theta^2 - 1)) (SSB Eq. 10).

  theta: scalar in (0, 1).  Returns (points (K,), stable (K,) bool), sorted; K = 1 ([0], stable) for
  theta <= theta_c, else K = 3 ([-x*, 0, x*], 0 unstable).  At theta = 0.8, x* = 0.947.
  """
  theta = float(_check_theta(theta))
  g = lambda x: 2 * theta * np.tanh(theta * x / (1 - theta ** 2)) - (1 + theta ** 2) * x  # Eq. 10
  if theta <= theta_critical():
    return np.zeros(1), np.array([_drift_slope_two_point(0.0, theta) < 0])
  # g'(0) > 0 past theta_c and g(2) < 0, so one positive root lies in (0, 2].
  x_star = optimize.brentq(g, 1e-9, 2.0, xtol=1e-14)
  points = np.array([-x_star, 0.0, x_star])
  return points, _drift_slope_two_point(points, theta) < 0


# ----------------------------------------------------------------------------- reverse dynamics
def two_point_score_fn(x, s):
  """score_fn(x, s) of the two-point data at continuous forward time s in (0, 1]."""
  return score_two_point(x, theta_continuous(s))


def reverse_sde_drift(x, s, score_fn=two_point_score_fn, beta_fn=beta_continuous):
  """Reverse-SDE drift in generative time: beta(s) (x/2 + score(x, s)) (docs/ssb.md).

  NB: the original SSB notebook used -beta (x/2 - score), a sign error (docs/ssb.md); this is the
  correct drift of dx = beta (x/2 + score) dt_gen + sqrt(beta) dW.
  """
  return beta_fn(s) * (x / 2 + score_fn(x, s))


def probability_flow_drift(x, s, score_fn=two_point_score_fn, beta_fn=beta_continuous):
  """Probability-flow ODE drift in generative time: beta(s) (x/2 + score(x, s)/2) (docs/ssb.md)."""
  return beta_fn(s) * (x / 2 + score_fn(x, s) / 2)


def simulate_reverse(x0, ts, score_fn=two_point_score_fn, beta_fn=beta_continuous, generator=None, seed=0,
                     ode=False, drift_fn=None):
  """Euler(-Maruyama) trajectories of the generative dynamics.

  x0: (N,) or (N, D) start states at ts[0]; ts: increasing generative times in [0, 1) (forward s = 1 - t).
  generator: a numpy Generator (else default_rng(seed)); ode: probability-flow ODE, no noise.
  drift_fn(x, s) overrides the drift (e.g. to show the original notebook's wrong sign).
  Returns (len(ts), *x0.shape) float64, the state at each grid time.
  """
  ts, x = np.asarray(ts, dtype=np.float64), np.array(x0, dtype=np.float64)
  if ts.ndim != 1 or len(ts) < 2 or np.any(np.diff(ts) <= 0) or ts[0] < 0 or ts[-1] >= 1:
    raise ValueError('ts must be an increasing 1-D grid of generative times in [0, 1) with >= 2 points')
  if drift_fn is None:
    drift_fn = probability_flow_drift if ode else reverse_sde_drift
    drift = lambda x, s: drift_fn(x, s, score_fn, beta_fn)
  else:
    drift = drift_fn
  rng = generator if generator is not None else np.random.default_rng(seed)
  out = np.empty((len(ts),) + x.shape)
  out[0] = x
  for k in range(len(ts) - 1):
    s, dt = 1.0 - ts[k], ts[k + 1] - ts[k]
    x = x + drift(x, s) * dt
    if not ode:
      x = x + np.sqrt(beta_fn(s) * dt) * rng.standard_normal(x.shape)  # sqrt(beta) dW
    out[k + 1] = x
  return out


# ----------------------------------------------------------------------------- finite data sets
def _as_data(data):
  data = np.asarray(data, dtype=np.float64)
  if data.ndim == 1:
    data = data[:, None]
  if data.ndim != 2 or len(data) < 1 or not np.all(np.isfinite(data)):
    raise ValueError(f'data must be finite with shape (N,) or (N, D), got shape {data.shape}')
  return data


def empirical_score(x, data, theta, chunk=1024):
  """Exact score of the noised empirical distribution (1/N) sum_j N(theta y_j, (1 - theta^2) I).

  x: (B, D) (or (B,) for 1-D data); data: (N, D) or (N,); theta in (0, 1).
  score = (sum_j w_j theta y_j - x) / (1 - theta^2), w = softmax_j(-|x - theta y_j|^2 / (2 (1 - theta^2))).
  Streams over data in chunks with a running log-sum-exp.  Returns an array shaped like x.
  """
  theta, data = float(_check_theta(theta)), _as_data(data)
  x_in = np.asarray(x, dtype=np.float64)
  x = x_in.reshape(len(x_in), -1)
  if x.shape[1] != data.shape[1]:
    raise ValueError(f'x has dimension {x.shape[1]} but data has dimension {data.shape[1]}')
  v = 1.0 - theta ** 2
  log_z = np.full(len(x), -np.inf)
  acc = np.zeros_like(x)  # running sum_j exp(logit_j - log_z) theta y_j
  for start in range(0, len(data), chunk):
    mu = theta * data[start:start + chunk]
    logits = -((x[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * v)  # (B, n)
    new_z = np.logaddexp(log_z, logsumexp(logits, axis=1))
    acc = acc * np.exp(log_z - new_z)[:, None] + np.exp(logits - new_z[:, None]) @ mu
    log_z = new_z
  return ((acc - x) / v).reshape(x_in.shape)  # score of a Gaussian mixture (docs/ssb.md)


def _central_weights(data, theta):
  """Softmax weights (N,) of the data at x = theta * mean: logits -theta^2 |y_j - m|^2 / (2 (1 - theta^2))."""
  d2 = ((data - data.mean(0)) ** 2).sum(1)
  return softmax(-theta ** 2 * d2 / (2 * (1 - theta ** 2)))


def _weighted_cov(data, w, chunk=4096):
  """Cov_w[y] = sum_j w_j (y_j - m_w)(y_j - m_w)^T, (D, D), accumulated in chunks over N."""
  m = w @ data
  cov = np.zeros((data.shape[1],) * 2)
  for start in range(0, len(data), chunk):
    yc = data[start:start + chunk] - m
    cov += (yc * w[start:start + chunk, None]).T @ yc
  return cov


def top_cov_eigenvalue(data, w, max_dense=512):
  """Largest eigenvalue of Cov_w[y]; dense for D <= max_dense, else Lanczos on the implicit operator."""
  n, dim = data.shape
  if dim <= max_dense:
    return float(np.linalg.eigvalsh(_weighted_cov(data, w))[-1])
  from scipy.sparse.linalg import LinearOperator, eigsh
  yc = data - w @ data
  op = LinearOperator((dim, dim), matvec=lambda v: yc.T @ (w * (yc @ np.ravel(v))), dtype=np.float64)
  return float(eigsh(op, k=1, which='LA', return_eigenvectors=False)[0])


def drift_jacobian_at_mean(data, theta, beta=1.0):
  """Jacobian (D, D) of the generative drift beta (x/2 + score(x)) at x = theta * mean(data).

  Analytic (docs/ssb.md): d score/dx = Cov_w[theta y] / (1 - theta^2)^2 - I / (1 - theta^2), with Cov_w the
  posterior covariance of theta y under the softmax weights at x.  x = theta * mean is a fixed point of
  the drift only for data symmetric about the origin (mean 0); in general the drift there is
  beta theta (mean/2 + (mean_w - mean)/(1 - theta^2)), nonzero, and J is the linearisation of the flow
  at the noised data mean.
  """
  theta, data = float(_check_theta(theta)), _as_data(data)
  v, eye = 1.0 - theta ** 2, np.eye(data.shape[1])
  cov = theta ** 2 * _weighted_cov(data, _central_weights(data, theta))  # Cov_w[theta y]
  return beta * (eye / 2 + cov / v ** 2 - eye / v)


def _stability(data, theta):
  """Largest eigenvalue of (drift Jacobian at theta * mean) / beta for one theta."""
  v = 1.0 - theta ** 2
  lam = top_cov_eigenvalue(data, _central_weights(data, theta))
  return 0.5 - 1.0 / v + theta ** 2 * lam / v ** 2


def stability_curve(data, thetas):
  """Largest eigenvalue of the drift Jacobian at the mean, divided by beta, for each theta in thetas.

  data: (N, D) or (N,); thetas: (K,) in (0, 1).  Returns (K,) float64; > 0 means the flow at the noised
  data mean expands along some direction (for data symmetric about 0: the central fixed point is
  unstable, the symmetry broken).  For the two-point data this is -curvature_at_zero / beta.
  """
  data, thetas = _as_data(data), np.atleast_1d(_check_theta(thetas))
  return np.array([_stability(data, float(th)) for th in thetas])


def gaussian_critical_theta(lambda_max):
  """theta_c for Gaussian data whose covariance has top eigenvalue lambda_max (mean arbitrary).

  The score is linear, so the drift Jacobian is the same everywhere; its top eigenvalue
  1/2 - 1/(1 - theta^2 + theta^2 lambda) turns positive when the marginal variance theta^2 lambda + 1 - theta^2
  exceeds 2: theta_c^2 = 1/(lambda - 1).  Returns nan when lambda_max <= 2 (contracting all the way to the data).
  """
  lam = float(lambda_max)
  return float(np.sqrt(1.0 / (lam - 1.0))) if lam > 2 else float('nan')


def predicted_critical_theta(data, thetas):
  """First theta, going from noise toward data (increasing theta), where stability_curve crosses 0.

  thetas: strictly increasing grid (K,) in (0, 1) used to bracket the crossing, then refined with brentq.
  Returns a float, or nan if the top eigenvalue stays <= 0 (the flow at the mean keeps contracting) over the grid.
  """
  data, thetas = _as_data(data), np.asarray(thetas, dtype=np.float64)
  if thetas.ndim != 1 or np.any(np.diff(thetas) <= 0):
    raise ValueError('thetas must be a strictly increasing 1-D grid (noise -> data)')
  curve = stability_curve(data, thetas)
  pos = np.nonzero(curve > 0)[0]
  if len(pos) == 0:
    return float('nan')
  i = pos[0]
  if i == 0:
    raise ValueError(f'the drift Jacobian at the mean already has a positive eigenvalue at theta = {thetas[0]}; '
                     'start the grid nearer 0')
  return float(optimize.brentq(lambda th: _stability(data, th), thetas[i - 1], thetas[i], xtol=1e-12))


def predicted_tc(data, schedule=None, coarse=10):
  """Data-only critical timestep t_c in 0..T-1 on the discrete DDPM schedule (docs/ssb.md, 'Beyond 1-D').

  The largest t (first in generative order, T-1 -> 0) where the Jacobian of the generative drift
  beta (x/2 + score) at the noised data mean theta_t * mean has a positive eigenvalue, theta_t =
  sqrt(alpha_bar(t)): the flow there stops contracting.  For data symmetric about the origin this is where
  the central fixed point loses stability; otherwise theta_t * mean is not a fixed point, and t_c marks the
  onset of local expansion only.  Scans every `coarse`-th step, then bisects the bracketing interval
  (assumes one crossing within it).  Returns -1 if the eigenvalue stays <= 0 down to t = 0.
  """
  data, schedule = _as_data(data), schedule or sde_lib.DDPMSchedule()
  T = schedule.T
  theta_of = lambda t: float(np.sqrt(schedule.alpha_bar(int(t)).item()))
  expanding = lambda t: _stability(data, theta_of(t)) > 0
  grid = list(range(T - 1, -1, -coarse)) + ([0] if (T - 1) % coarse else [])
  prev = None
  for t in grid:
    if expanding(t):
      if prev is None:
        return T - 1  # already expanding at the noisiest step
      lo, hi = t, prev  # expanding at lo, contracting at hi
      while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if expanding(mid) else (lo, mid)
      return int(lo)
    prev = t
  return -1


# ----------------------------------------------------------------------------- potentials of trained models
def path_potential(drift_fn, x1, x2, angles, batch_size=64):
  """Potential u(a) = -int_0^a drift(x(a')) . dx/da' da' along x(a) = cos(a) x1 + sin(a) x2, u(0) = 0.

  drift_fn: (B, ...) -> (B, ...) (numpy or torch, matching x1); x1, x2: one state (...) or (1, ...);
  angles: (A,) increasing.  Trapezoid rule over the angle grid.  Returns (A,) float64 numpy.
  """
  angles = np.asarray(angles, dtype=np.float64)
  if angles.ndim != 1 or len(angles) < 2:
    raise ValueError('angles must be a 1-D grid with at least 2 points')
  if tuple(x1.shape) != tuple(x2.shape):
    raise ValueError(f'x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}')
  is_torch = not isinstance(x1, np.ndarray)
  if len(x1.shape) > 1 and x1.shape[0] == 1:
    x1, x2 = x1[0], x2[0]
  power = []  # drift . dx/da at each angle
  for start in range(0, len(angles), batch_size):
    a = angles[start:start + batch_size]
    c, s = _col(np.cos(a), x1, is_torch), _col(np.sin(a), x1, is_torch)
    x = c * x1[None] + s * x2[None]
    dx = -s * x1[None] + c * x2[None]  # dx/da
    prod = (drift_fn(x) * dx).reshape(len(a), -1).sum(1)
    power.append(prod.detach().cpu().double().numpy() if is_torch else np.asarray(prod, dtype=np.float64))
  return -integrate.cumulative_trapezoid(np.concatenate(power), angles, initial=0.0)  # drift = -du/dx


def _torch():
  import torch
  return torch


def _col(v, like, is_torch):
  """(A,) angle factors shaped (A, 1, ..., 1) to broadcast against a batch of states shaped like `like`."""
  v = v.reshape((-1,) + (1,) * len(like.shape))
  if is_torch:
    return _torch().as_tensor(v, dtype=like.dtype, device=like.device)
  return v


def model_drift(eps_fn, schedule, t):
  """drift_fn(x) = beta_cont (x/2 + score) of a trained eps model at discrete timestep t (torch).

  eps_fn(x (B, ...), t (B,) float) -> eps (B, ...); score = -eps / sqrt(1 - alpha_bar(t)); beta_cont =
  T * schedule.beta_at(t) (the continuous beta is the discrete beta times T, docs/schedule.md).
  """
  torch = _torch()
  t = int(t)
  if not 0 <= t < schedule.T:
    raise ValueError(f'timestep t must be in [0, {schedule.T - 1}], got {t}')
  sigma = float(torch.sqrt(1 - schedule.alpha_bar(t)))
  beta = schedule.T * float(schedule.beta_at(t))

  def drift_fn(x):
    with torch.no_grad():
      eps = eps_fn(x, torch.full((x.shape[0],), float(t), device=x.device))
      return beta * (x / 2 - eps.to(x.dtype) / sigma)  # beta (x/2 + score), score = -eps / sigma

  return drift_fn
