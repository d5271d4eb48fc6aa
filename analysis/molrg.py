"""Mixture of low-rank Gaussians (MoLRG, SPEC section 10; Wang et al. 2024).

K classes, each a d-dimensional subspace of R^D; the bases U_k (D, d) are disjoint column
blocks of one Haar-random orthogonal matrix, so they are mutually orthogonal.
A sample is x = U_k a with a ~ N(0, I_d) and k uniform.
"""
import numpy as np
from scipy.stats import ortho_group


def molrg_bases(dim: int, num_classes: int, rank: int, seed: int = 0) -> np.ndarray:
  """Orthonormal bases, shape (K, D, d), float64. Needs K * d <= D."""
  if num_classes * rank > dim:
    raise ValueError(f'MoLRG needs K*d <= D, got K={num_classes}, d={rank}, D={dim}')
  q = ortho_group.rvs(dim, random_state=np.random.default_rng(seed))
  return np.stack([q[:, k * rank:(k + 1) * rank] for k in range(num_classes)])


def molrg_sample(bases: np.ndarray, n_per_class: int, seed: int = 0):
  """Draw n_per_class points of each class: x (K*n, D) float64, labels (K*n,) int64."""
  rng = np.random.default_rng(seed)
  num_classes, _, rank = bases.shape
  xs, labels = [], []
  for k in range(num_classes):
    coef = rng.standard_normal((n_per_class, rank))
    xs.append(coef @ bases[k].T)
    labels.append(np.full(n_per_class, k))
  return np.concatenate(xs), np.concatenate(labels).astype(np.int64)
