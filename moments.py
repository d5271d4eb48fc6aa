"""Streaming first and second moments (mean and full covariance) in float64.

Shared by the FID statistics (2048-d Inception features) and the Gaussian late start
(D = C*H*W pixels): one pass over the data, never holding all rows at once (under torchrun each rank passes
over its share of the rows, then ``reduce()`` adds up the sums).
"""
import numpy as np
import torch
import torch.distributed as dist


class RunningMoments:
  """Accumulates n, sum x and sum x x^T of rows of shape (N, D) in float64.

  ``cov()`` is the unbiased sample covariance (ddof=1, as ``np.cov``); it needs n >= 2.
  """

  def __init__(self, dim: int, device='cpu'):
    self.dim, self.n = int(dim), 0
    self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
    self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

  def update(self, rows):
    """rows: (N, D) tensor or array (any float dtype); flattened to (N, D) if more dims."""
    rows = torch.as_tensor(rows).reshape(len(rows), -1).to(self.sum.device, torch.float64)
    if rows.shape[1] != self.dim:
      raise ValueError(f'expected rows of dimension {self.dim}, got {rows.shape[1]}')
    self.n += rows.shape[0]
    self.sum += rows.sum(0)
    self.outer.addmm_(rows.T, rows)

  def reduce(self):
    """Sums n, sum x and sum x x^T over the torchrun ranks in place, each rank having accumulated its own rows;
    every rank then holds the moments of all rows (no-op in one process). Returns self."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
      n = torch.tensor([float(self.n)], dtype=torch.float64, device=self.sum.device)  # exact below 2^53 rows
      for t in (n, self.sum, self.outer):
        dist.all_reduce(t)
      self.n = int(n.item())
    return self

  def mean(self) -> np.ndarray:
    if self.n < 1:
      raise ValueError('no rows were accumulated')
    return (self.sum / self.n).cpu().numpy()

  def cov(self) -> np.ndarray:
    if self.n < 2:
      raise ValueError(f'a covariance needs at least 2 samples, got {self.n}')
    mu = self.sum / self.n
    cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
    return cov.cpu().numpy()
