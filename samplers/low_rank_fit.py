"""The rank-r plus diagonal late-start fit straight from the data, never forming the (D x D) covariance.

At 256x256 (D = 3 x 256 x 256 = 196,608) the covariance alone would take 155 GB in float32. The Gaussian late
start needs only the top-r eigenpairs of the data covariance and its diagonal (docs/late_start.md, "Rank r plus
diagonal"), so they are computed from the centred data matrix X_c (N x D) by a randomized range finder with power
iterations (Halko, Martinsson and Tropp, *Finding Structure with Randomness*, SIAM Review 2011, Alg. 4.4 and 5.1):

  Y = X_c Omega (Omega: D x k Gaussian, k = r + oversample); q times: Y = X_c (X_c^T orth(Y));
  Q = orth(Y) (N x k); B = Q^T X_c (k x D) = U S V^T;  eigvecs = V[:, :r], eigvals = S[:r]^2 / (N - 1).

Memory O(D k + N k); every product with X_c is one streaming pass over the data, and the centring is applied to
the products (X_c A = X A - 1 (mu^T A)), so the first pass also gives the mean and the per-pixel variance:
2 + 2 q passes in all (q = 3 by default: 8). Where the full fit also runs (64x64), both give the same rank-r Gaussian (tested).
"""
import torch

# Above this many bytes for a float64 (D x D) covariance the late start is fitted here (late_start.late_start_moments).
FULL_COVARIANCE_MAX_BYTES = 2 * 1024 ** 3  # D = 16,384; 64x64x3 = 12,288 still takes the full fit


def full_covariance_bytes(dim):
  """Bytes of a float64 (D x D) covariance."""
  return 8 * int(dim) ** 2


def _orth(y):
  return torch.linalg.qr(y, mode='reduced')[0]


def streaming_low_rank(batches, dim, rank, oversample=None, power_iters=3, seed=0):
  """Top-``rank`` eigenpairs and the diagonal of the covariance of rows streamed by ``batches``.

  Args:
    batches: a callable that returns a fresh iterator over (B, ...) tensors whose rows flatten to D (one call per
      pass; 2 + 2 * power_iters passes, always the rows in the same order).
    dim: D. rank: r >= 1. oversample, power_iters: the range finder's k - r (default r + 16, the block of
      initialisers.top_eigenpairs) and q.
    seed: seed of Omega.
  Returns:
    dict(mean (D,), var (D,) unbiased, eigvals (r,) descending, eigvecs (D, r), count): float64 numpy.
  """
  k = min(int(rank) + (int(rank) + 16 if oversample is None else int(oversample)), int(dim))
  omega = torch.randn(dim, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
  n, total, squares, ys = 0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), []
  for x in batches():  # pass 1: mean, variance and the raw X Omega
    x = torch.as_tensor(x).reshape(len(x), -1).to(torch.float64)
    n, total, squares = n + len(x), total + x.sum(0), squares + (x * x).sum(0)
    ys.append(x @ omega)
  if n < 2:
    raise ValueError(f'the low-rank late-start fit needs at least 2 images, got {n}')
  mean = total / n
  var = (squares - n * mean * mean) / (n - 1)
  y = torch.cat(ys) - (mean @ omega)[None]  # X_c Omega

  def times_xc(a):  # X_c A (N x k), one pass
    return torch.cat([torch.as_tensor(x).reshape(len(x), -1).to(torch.float64) @ a for x in batches()]) - \
        (mean @ a)[None]

  def xc_t_times(q):  # X_c^T Q (D x k), one pass
    out, start = torch.zeros(dim, q.shape[1], dtype=torch.float64), 0
    for x in batches():
      x = torch.as_tensor(x).reshape(len(x), -1).to(torch.float64)
      out.addmm_(x.T, q[start:start + len(x)])
      start += len(x)
    return out - torch.outer(mean, q.sum(0))

  for _ in range(int(power_iters)):
    y = times_xc(_orth(xc_t_times(_orth(y))))
  q = _orth(y)
  b = xc_t_times(q).T  # Q^T X_c, (k x D)
  _, s, vh = torch.linalg.svd(b, full_matrices=False)
  idx = vh[:rank].abs().argmax(dim=1)  # the sign convention of the full fit: each vector's largest entry positive
  signs = torch.sign(vh[torch.arange(rank), idx])
  eigvecs = (vh[:rank] * torch.where(signs == 0, torch.ones_like(signs), signs)[:, None]).T.contiguous()
  return {'mean': mean.numpy(), 'var': var.clamp(min=0).numpy(), 'eigvals': (s[:rank] ** 2 / (n - 1)).numpy(),
          'eigvecs': eigvecs.numpy(), 'count': n}
