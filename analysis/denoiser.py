"""The optimal (empirical) denoiser of a finite training set (Zhang et al. 2024; docs/gen.md).

For training points {y_j} and x_t = sqrt(a) x0 + sqrt(1-a) eps with a = alpha_bar_t,

  E[x0 | x_t] = sum_j softmax_j( -||x_t - sqrt(a) y_j||^2 / (2 (1 - a)) ) y_j,

the exact posterior mean when the data distribution is the empirical one. It needs no training and
plugs into every sampler as an eps function; the full chain returns training images (it memorises).

Memory rule (documented budget, ``max_elements``):
  * the whole training set is held on the device: N * D <= max_elements;
  * one streaming step holds a (chunk, D) data slice and a (B, chunk) logit block, with
    chunk = min(chunk_size, N): chunk * (D + B) <= max_elements.
  Anything else raises ``DenoiserBudgetError`` (a ValueError) naming the sizes and what to change.
"""
import numpy as np
import torch


class DenoiserBudgetError(ValueError):
  """The training set or one streaming chunk does not fit in the ``max_elements`` budget."""


def _as_tensor(data):
  if isinstance(data, np.ndarray):
    data = torch.from_numpy(data)
  if not torch.is_tensor(data):
    raise ValueError(f'data must be a torch tensor or numpy array, got {type(data).__name__}')
  return data


class OptimalDenoiser:
  """Holds the training set; ``.x0(x_t, t)``, ``.eps(x_t, t)`` and ``__call__ = eps`` (sampler eps_fn).

  Args:
    data: (N, C, H, W) or (N, D) training set in model space (the space the sampler works in).
    schedule: sde_lib.DDPMSchedule.
    chunk_size: training points per streaming step (>= 1); memory is bounded by chunk x batch.
    device: where the data lives and the maths runs ('cpu' or 'cuda').
    dtype: accumulation dtype. float64 (default) keeps the logits exact enough at small t, where
      ||x_t - sqrt(a) y||^2 / (2(1-a)) is large and its differences matter; float32 is faster on GPU.
    max_elements: element budget, see the module docstring (default 2**28, ~2 GiB in float64).
  """

  def __init__(self, data, schedule, chunk_size=4096, device='cpu', dtype=torch.float64,
               max_elements=2 ** 28):
    data = _as_tensor(data)
    if data.dim() < 2 or data.shape[0] < 1:
      raise ValueError(f'data must be (N, C, H, W) or (N, D) with N >= 1, got shape {tuple(data.shape)}')
    if int(chunk_size) < 1:
      raise DenoiserBudgetError(f'chunk_size must be >= 1, got {chunk_size}')
    self.schedule, self.device, self.dtype = schedule, torch.device(device), dtype
    self.sample_shape = tuple(data.shape[1:])
    self.num_points, self.dim = data.shape[0], int(np.prod(self.sample_shape))
    self.chunk_size, self.max_elements = int(chunk_size), int(max_elements)
    if self.num_points * self.dim > self.max_elements:
      raise DenoiserBudgetError(
          f'training set too large for the budget: N x D = {self.num_points} x {self.dim} = '
          f'{self.num_points * self.dim} elements > max_elements={self.max_elements}; subsample the data '
          f'or pass a larger max_elements')
    chunk = min(self.chunk_size, self.num_points)
    if chunk * (self.dim + 1) > self.max_elements:
      raise DenoiserBudgetError(
          f'one data chunk does not fit: chunk_size x (D + 1) = {chunk} x {self.dim + 1} > '
          f'max_elements={self.max_elements}; lower chunk_size')
    self.data = data.reshape(self.num_points, self.dim).to(device=self.device, dtype=dtype)
    self.sq_norms = (self.data ** 2).sum(1)  # (N,) ||y_j||^2, reused for every query

  # ----------------------------------------------------------------------------- helpers
  def _flatten(self, x):
    """(B, *sample_shape) -> (B, D) in the working dtype/device; ValueError on a shape mismatch."""
    if tuple(x.shape[1:]) != self.sample_shape:
      raise ValueError(f'x has shape {tuple(x.shape)} but the training data has per-sample shape '
                       f'{self.sample_shape} (data shape {(self.num_points,) + self.sample_shape})')
    batch, chunk = x.shape[0], min(self.chunk_size, self.num_points)
    if chunk * (self.dim + batch) > self.max_elements:
      raise DenoiserBudgetError(
          f'batch {batch} x chunk {chunk} (+ chunk x D = {chunk} x {self.dim}) exceeds '
          f'max_elements={self.max_elements}; use a smaller batch or chunk_size')
    return x.reshape(batch, self.dim).to(device=self.device, dtype=self.dtype)

  def _alpha_bar(self, t, batch):
    """alpha_bar per row, (B,) in the working dtype."""
    a = self.schedule.alpha_bar(t).to(device=self.device, dtype=self.dtype)
    if a.dim() == 0:
      a = a.expand(batch)
    if a.shape != (batch,):
      raise ValueError(f't must be a scalar or shape ({batch},), got shape {tuple(a.shape)}')
    return a

  def _sq_dist(self, x, scale, lo, hi):
    """||x_b - scale_b y_j||^2 for j in [lo, hi): (B, hi-lo), clamped at 0 against round-off."""
    y = self.data[lo:hi]
    cross = x @ y.T  # (B, c)
    d2 = (x ** 2).sum(1, keepdim=True) - 2 * scale[:, None] * cross + (scale ** 2)[:, None] * self.sq_norms[lo:hi]
    return d2.clamp_min(0.0)

  def _softmax_mean(self, x, a):
    """Streaming posterior mean (docs/gen.md) with a running log-sum-exp: (B, D). Rows need a < 1."""
    s, var = a.sqrt(), 1.0 - a
    m = torch.full((x.shape[0],), -float('inf'), device=x.device, dtype=x.dtype)
    z = torch.zeros_like(m)
    acc = torch.zeros_like(x)
    for lo in range(0, self.num_points, self.chunk_size):
      hi = min(lo + self.chunk_size, self.num_points)
      logits = -self._sq_dist(x, s, lo, hi) / (2 * var[:, None])  # softmax argument (docs/gen.md)
      m_new = torch.maximum(m, logits.max(1).values)
      rescale = torch.exp(m - m_new)  # exp(-inf) = 0 on the first chunk
      w = torch.exp(logits - m_new[:, None])
      z = z * rescale + w.sum(1)
      acc = acc * rescale[:, None] + w @ self.data[lo:hi]
      m = m_new
    return acc / z[:, None]

  def _nearest(self, x):
    """alpha_bar = 1 limit of the softmax: the nearest training point, streamed; (B, D)."""
    best = torch.full((x.shape[0],), float('inf'), device=x.device, dtype=x.dtype)
    idx = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    one = torch.ones_like(best)
    for lo in range(0, self.num_points, self.chunk_size):
      hi = min(lo + self.chunk_size, self.num_points)
      d2min, arg = self._sq_dist(x, one, lo, hi).min(1)
      better = d2min < best
      best, idx = torch.where(better, d2min, best), torch.where(better, arg + lo, idx)
    return self.data[idx]

  # ----------------------------------------------------------------------------- public
  def x0(self, x_t, t):
    """E[x0 | x_t]: x_t (B, *sample_shape), t scalar or (B,) in [-1, T-1]; same shape/dtype/device as x_t.

    At t = -1 (alpha_bar = 1) it returns the nearest training point exactly.
    """
    x = self._flatten(x_t)
    a = self._alpha_bar(t, x.shape[0])
    clean = a >= 1.0
    if bool(clean.all()):
      out = self._nearest(x)
    elif not bool(clean.any()):
      out = self._softmax_mean(x, a)
    else:  # mixed t in one batch: fill each row from its own branch
      out = torch.where(clean[:, None], self._nearest(x), self._softmax_mean(x, torch.where(clean, 0.5, a)))
    return out.reshape(x_t.shape).to(device=x_t.device, dtype=x_t.dtype)

  def eps(self, x_t, t):
    """eps = (x_t - sqrt(a) x0) / sqrt(1 - a) (docs/gen.md); t must be >= 0 (eps is undefined at a = 1)."""
    if bool((torch.as_tensor(t) < 0).any()):
      raise ValueError(f'eps is undefined at t = -1 (alpha_bar = 1); got t = {t}. Use .x0 there.')
    x0 = self.x0(x_t, t)
    return self.schedule.eps_from_x0(x_t, t, x0)

  def __call__(self, x, t):
    return self.eps(x, t)

  def __repr__(self):
    return (f'OptimalDenoiser(N={self.num_points}, sample_shape={self.sample_shape}, '
            f'chunk_size={self.chunk_size}, device={self.device}, dtype={self.dtype})')
